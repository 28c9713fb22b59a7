"""Detection primitives under fixed values: each rule holding, and letting the right
thing through."""

from __future__ import annotations

from agents.monitor.detect import (
    Baseline,
    BaselinePolicy,
    GatePolicy,
    GateState,
    ThresholdPolicy,
    ThresholdState,
    Transition,
    gate,
    restart_loop,
    step_baseline,
    step_threshold,
)

POLICY = ThresholdPolicy(threshold=85, sustained=3, hysteresis=5, clear_samples=2)


def run_threshold(values, policy=POLICY):
    state = ThresholdState()
    out = []
    for v in values:
        state, transition = step_threshold(state, v, policy)
        out.append(transition)
    return state, out


def test_one_spike_does_not_alert():
    state, transitions = run_threshold([10, 99, 10, 99, 99, 10])
    assert transitions == [None] * 6
    assert not state.active


def test_sustained_breach_fires_once():
    state, transitions = run_threshold([90, 91, 92, 95, 99])
    assert transitions == [None, None, Transition.FIRED, None, None]
    assert state.active


def test_hysteresis_prevents_flapping_around_the_threshold():
    # Fires, then hovers just under the threshold (within the hysteresis band): stays active.
    state, transitions = run_threshold([90, 90, 90, 84, 86, 82, 84, 81])
    assert transitions.count(Transition.FIRED) == 1
    assert Transition.CLEARED not in transitions
    assert state.active


def test_clears_only_after_consecutive_samples_below_the_band():
    state, transitions = run_threshold([90, 90, 90, 70, 86, 70, 70])
    assert transitions[-1] is Transition.CLEARED
    assert transitions.count(Transition.CLEARED) == 1
    assert not state.active


def test_baseline_flags_unusual_values_under_the_fixed_threshold():
    policy = BaselinePolicy(min_samples=20, z=4, min_delta=10, sustained=2)
    b = Baseline()
    for i in range(30):
        b, transition, _ = step_baseline(b, 20 + (i % 3), policy)  # steady 20-22 %
        assert transition is None
    b, t1, z1 = step_baseline(b, 60, policy)  # far above its own normal, under 85 %
    b, t2, _ = step_baseline(b, 61, policy)
    assert t1 is None
    assert z1 > 4
    assert t2 is Transition.FIRED
    for _ in range(3):
        b, t3, _ = step_baseline(b, 21, policy)
    assert t3 is Transition.CLEARED


def test_baseline_stays_quiet_while_learning_and_for_small_wobbles():
    policy = BaselinePolicy(min_samples=20, z=4, min_delta=10, sustained=2)
    b = Baseline()
    for value in [5, 80, 5, 80]:  # wild but too early to judge
        b, transition, _ = step_baseline(b, value, policy)
        assert transition is None
    steady = Baseline()
    for _ in range(40):
        steady, _, _ = step_baseline(steady, 30, policy)
    for value in [36, 37, 38]:  # many sigmas on a flat line, but under min_delta
        steady, transition, _ = step_baseline(steady, value, policy)
        assert transition is None


def test_gate_alerts_on_change_then_once_per_realert_interval():
    policy = GatePolicy(min_gap_s=10, realert_s=100)
    s = GateState()
    s, send, _ = gate(s, 1000, policy, new_episode=True)
    assert send
    s, send, _ = gate(s, 1050, policy, new_episode=False)  # ongoing, too soon
    assert not send
    s, send, _ = gate(s, 1080, policy, new_episode=False)
    assert not send
    s, send, suppressed = gate(s, 1100, policy, new_episode=False)
    assert send
    assert suppressed == 2


def test_gate_limits_new_episodes_but_lets_them_through_after_the_gap():
    policy = GatePolicy(min_gap_s=10, realert_s=100)
    s, send, _ = gate(GateState(), 0, policy, new_episode=True)
    s, send, _ = gate(s, 5, policy, new_episode=True)
    assert not send
    s, send, suppressed = gate(s, 11, policy, new_episode=True)
    assert send
    assert suppressed == 1


def test_a_new_episode_held_back_by_the_gap_is_due_when_the_gap_is_over():
    policy = GatePolicy(min_gap_s=10, realert_s=100)
    s, _, _ = gate(GateState(), 0, policy, new_episode=True)
    s, send, _ = gate(s, 5, policy, new_episode=True)
    assert (send, s.held_at) == (False, 5)
    s, send, _ = gate(s, 8, policy, new_episode=False)  # a poll while it is still down
    assert not send
    s, send, _ = gate(s, 10, policy, new_episode=False)
    assert send, "due at the gap, not at the re-alert interval"
    assert s.held_at is None
    s, send, _ = gate(s, 25, policy, new_episode=False)
    assert not send, "then the re-alert interval again"


def test_restart_loop_needs_count_deaths_inside_the_window():
    deaths, looping = restart_loop((0.0, 100.0), 150.0, window_s=300, count=3)
    assert not looping
    deaths, looping = restart_loop((*deaths, 150.0), 150.0, window_s=300, count=3)
    assert looping
    old, looping = restart_loop((0.0, 10.0, 500.0), 500.0, window_s=300, count=3)
    assert old == (500.0,)
    assert not looping

"""The Monitor's rule set under a fixed clock: events, samples and inventory in, alerts out."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from agents.monitor.causes import Seen
from agents.monitor.detect import GatePolicy, ThresholdPolicy
from agents.monitor.stats import Sample
from agents.monitor.tracker import MonitorPolicy, Tracker, watched
from shared.containers import ContainerInfo
from shared.events import AlertKind, AlertStatus, Severity

T0 = 1_700_000_000.0
POLICY = MonitorPolicy(
    cpu=ThresholdPolicy(threshold=85, sustained=2, hysteresis=5, clear_samples=2),
    memory=ThresholdPolicy(threshold=80, sustained=2, hysteresis=5, clear_samples=2),
    baseline=None,
    gate=GatePolicy(min_gap_s=10, realert_s=600),
    restart_loop_count=3,
    restart_loop_window_s=300,
    recovery_window_s=60,
)


def info(**kw) -> ContainerInfo:
    base = {
        "id": "a" * 64,
        "name": "web",
        "image": "app:1",
        "state": "running",
        "labels": {"com.docker.compose.service": "web"},
        "started_at": datetime.fromtimestamp(T0 - 3600, UTC),
    }
    return ContainerInfo(**(base | kw))


def kinds(drafts):
    return [(d.kind, d.status) for d in drafts]


@pytest.fixture
def tracker():
    return Tracker(POLICY)


def test_die_with_non_zero_exit_is_a_crash(tracker):
    drafts = tracker.on_event("die", {"exitCode": "3"}, T0, info(state="exited"))
    assert kinds(drafts) == [(AlertKind.CRASH, AlertStatus.FIRING)]
    assert drafts[0].exit_code == 3
    assert drafts[0].severity is Severity.CRITICAL
    assert "exited with code 3" in drafts[0].summary


def test_clean_exit_is_not_a_crash(tracker):
    assert tracker.on_event("die", {"exitCode": "0"}, T0, info(state="exited")) == []


def test_stop_or_restart_on_purpose_is_not_a_crash_however_long_it_takes(tracker):
    c = info()
    tracker.on_event("kill", {"signal": "15"}, T0, c)
    # A database that needs 18 s (or 18 minutes) to shut down after SIGTERM: still a stop.
    assert tracker.on_event("die", {"exitCode": "1"}, T0 + 18, c) == []
    assert tracker.tracks[c.id].deaths == ()
    # That stop is over once it starts again: the next death is judged on its own.
    tracker.on_event("start", {}, T0 + 100, c)
    assert kinds(tracker.on_event("die", {"exitCode": "1"}, T0 + 200, c)) == [
        (AlertKind.CRASH, AlertStatus.FIRING)
    ]


def test_a_reload_signal_does_not_hide_the_crash_that_follows(tracker):
    c = info()
    tracker.on_event("kill", {"signal": "1"}, T0, c)  # docker kill -s HUP: a reload
    assert kinds(tracker.on_event("die", {"exitCode": "1"}, T0 + 1, c)) == [
        (AlertKind.CRASH, AlertStatus.FIRING)
    ]


def test_the_containers_own_stop_signal_is_a_stop(tracker):
    c = info(stop_signal="SIGWINCH")
    tracker.on_event("kill", {"signal": "28"}, T0, c)
    assert tracker.on_event("die", {"exitCode": "0"}, T0 + 5, c) == []


def test_a_removed_container_closes_what_was_open(tracker):
    c = info()
    tracker.on_event("die", {"exitCode": "1"}, T0, c)
    [removed] = tracker.on_event("destroy", {"_time_nano": "5"}, T0 + 1, c)
    assert (removed.kind, removed.status) == (AlertKind.REMOVED, AlertStatus.RESOLVED)
    assert "crash" in removed.summary
    assert c.id not in tracker.tracks
    quiet = info(id="q" * 64)
    tracker.track(quiet)
    assert tracker.on_event("destroy", {}, T0, quiet) == [], "nothing open: nothing to close"


def test_a_crash_soon_after_a_restart_is_not_mistaken_for_the_restart(tracker):
    c = info()
    tracker.on_event("kill", {"signal": "15"}, T0, c)
    assert tracker.on_event("die", {"exitCode": "143"}, T0 + 0.5, c) == []
    tracker.on_event("start", {}, T0 + 1, c)
    crash = tracker.on_event("die", {"exitCode": "1"}, T0 + 2, c)
    assert kinds(crash) == [(AlertKind.CRASH, AlertStatus.FIRING)]
    assert tracker.tracks[c.id].deaths == (T0 + 2,)


def test_oom_kill_is_reported_once_not_also_as_a_crash(tracker):
    c = info(memory_limit=16 * 2**20)
    oom = tracker.on_event("oom", {}, T0, c)
    die = tracker.on_event("die", {"exitCode": "137"}, T0 + 0.1, c)
    assert kinds(oom) == [(AlertKind.OOM_KILLED, AlertStatus.FIRING)]
    assert "16 MiB" in oom[0].summary
    assert die == []


def test_repeated_deaths_make_a_restart_loop(tracker):
    c = info()
    out = []
    for i in range(3):
        out += tracker.on_event("start", {}, T0 + i * 20, c)
        out += tracker.on_event("die", {"exitCode": "1"}, T0 + i * 20 + 10, c)
    assert kinds(out) == [
        (AlertKind.CRASH, AlertStatus.FIRING),
        (AlertKind.CRASH, AlertStatus.FIRING),
        (AlertKind.CRASH, AlertStatus.FIRING),
        (AlertKind.RESTART_LOOP, AlertStatus.FIRING),
    ]
    assert out[-1].metrics["deaths_in_window"] == 3


def test_clean_exits_in_a_loop_are_a_restart_loop_too(tracker):
    c = info(restart_policy="always")
    out = []
    for i in range(3):
        out += tracker.on_event("die", {"exitCode": "0"}, T0 + i * 30, c)
    assert kinds(out) == [(AlertKind.RESTART_LOOP, AlertStatus.FIRING)]


def test_crash_alerts_are_rate_limited_per_container(tracker):
    c = info()
    first = tracker.on_event("die", {"exitCode": "1"}, T0, c)
    second = tracker.on_event("die", {"exitCode": "1"}, T0 + 3, c)  # within min_gap
    third = tracker.on_event("die", {"exitCode": "1"}, T0 + 15, c)
    other = tracker.on_event("die", {"exitCode": "1"}, T0 + 3, info(id="b" * 64, name="db"))
    assert len(first) == 1
    assert second == [], "second crash inside the minimum gap is suppressed"
    assert any(d.kind is AlertKind.CRASH for d in third)
    assert [d.metrics.get("suppressed_repeats") for d in third if d.kind is AlertKind.CRASH] == [1]
    assert kinds(other) == [(AlertKind.CRASH, AlertStatus.FIRING)], "other containers unaffected"


def test_a_crash_held_back_by_the_gap_is_told_once_the_gap_is_over_if_still_down(tracker):
    """HemoStat restarts a crashed container; it dies again 5 s later, inside the minimum gap.
    Held back then, that death must not wait for the re-alert interval (30 min by default) while
    the container stays down with "succeeded" in the audit: the first poll after the gap tells it
    as a crash, so it is decided (and healed, or escalated by the guards) again."""
    c = info()
    assert kinds(tracker.on_event("die", {"exitCode": "3"}, T0, replace(c, state="exited"))) == [
        (AlertKind.CRASH, AlertStatus.FIRING)
    ]
    tracker.on_event("restart", {}, T0 + 1, c)
    tracker.on_event("start", {}, T0 + 1, c)
    down = replace(c, state="exited", exit_code=3)
    assert tracker.on_event("die", {"exitCode": "3"}, T0 + 6, down) == [], "inside the gap"
    assert tracker.on_inventory(down, T0 + 8) == [], "the gap is not over yet"
    [told] = tracker.on_inventory(down, T0 + 11)
    assert (told.kind, told.status, told.exit_code) == (AlertKind.CRASH, AlertStatus.FIRING, 3)
    assert "crash again" in told.summary
    assert told.idempotency_key == f"held:{c.id}:crash:{T0 + 6:.3f}", "Docker's time: every replica"
    assert tracker.on_inventory(down, T0 + 20) == [], "then once per re-alert interval again"


def test_a_crash_held_back_by_the_gap_is_not_told_once_running_again(tracker):
    c = info()
    tracker.on_event("die", {"exitCode": "3"}, T0, replace(c, state="exited"))
    tracker.on_event("start", {}, T0 + 1, c)
    tracker.on_event("die", {"exitCode": "3"}, T0 + 6, replace(c, state="exited"))
    tracker.on_event("start", {}, T0 + 7, c)  # restarted by its own policy meanwhile
    assert tracker.on_inventory(c, T0 + 11) == []


def test_unhealthy_then_healthy_resolves(tracker):
    c = info(health="unhealthy", health_output="GET /healthz: connection refused")
    fired = tracker.on_event("health_status: unhealthy", {}, T0, c)
    again = tracker.on_event("health_status: unhealthy", {}, T0 + 5, c)
    healed = tracker.on_event("health_status: healthy", {}, T0 + 30, replace(c, health="healthy"))
    assert kinds(fired) == [(AlertKind.UNHEALTHY, AlertStatus.FIRING)]
    assert "connection refused" in fired[0].summary
    assert again == [], "still the same episode"
    assert kinds(healed) == [(AlertKind.UNHEALTHY, AlertStatus.RESOLVED)]
    assert healed[0].severity is Severity.INFO


def test_healthy_without_prior_problem_is_silent(tracker):
    assert tracker.on_event("health_status: healthy", {}, T0, info(health="healthy")) == []


def sample(cpu=10.0, mem=10.0, host=False):
    return Sample(source="cgroup", cpu_percent=cpu, memory_percent=mem, memory_limit_is_host=host)


def test_sustained_cpu_alerts_and_recovers_with_hysteresis(tracker):
    c = info()
    out = []
    for i, cpu in enumerate([95, 95, 96, 84, 83, 70, 70]):
        out += tracker.on_sample(c, sample(cpu=cpu), T0 + i * 30)
    assert kinds(out) == [
        (AlertKind.HIGH_CPU, AlertStatus.FIRING),
        (AlertKind.HIGH_CPU, AlertStatus.RESOLVED),
    ]
    assert out[0].thresholds["cpu_percent"] == 85
    assert out[0].metrics["cpu_percent"] == 95


def test_lasting_problem_is_re_alerted_only_after_the_interval(tracker):
    c = info()
    out = []
    for i in range(30):  # 30 polls, 30 s apart, always over the threshold
        out += tracker.on_sample(c, sample(mem=90), T0 + i * 30)
    firing = [d for d in out if d.kind is AlertKind.HIGH_MEMORY]
    assert len(firing) == 2  # the first, then one reminder after 600 s
    assert firing[1].metrics["suppressed_repeats"] > 0


def test_label_overrides_thresholds(tracker):
    lenient = info(labels={"hemostat.cpu_threshold": "99"})
    strict = info(id="c" * 64, labels={"hemostat.cpu_threshold": "50"})
    out = []
    for i in range(3):
        out += tracker.on_sample(lenient, sample(cpu=95), T0 + i)
        out += tracker.on_sample(strict, sample(cpu=60), T0 + i)
    assert {d.container.id for d in out} == {"c" * 64}


def test_memory_without_a_limit_says_it_is_against_host_memory(tracker):
    c = info()
    out = []
    for i in range(2):
        out += tracker.on_sample(c, sample(mem=90, host=True), T0 + i)
    assert "host's memory" in out[0].summary
    assert out[0].metrics["memory_limit_is_host"] == 1.0


def test_crash_resolves_after_running_for_the_recovery_window(tracker):
    c = info()
    tracker.on_event("die", {"exitCode": "1"}, T0, replace(c, state="exited"))
    tracker.on_event("start", {}, T0 + 5, c)
    assert tracker.on_inventory(c, T0 + 30) == []
    resolved = tracker.on_inventory(c, T0 + 70)
    assert kinds(resolved) == [(AlertKind.CRASH, AlertStatus.RESOLVED)]
    assert tracker.on_inventory(c, T0 + 100) == []


def test_a_container_that_stays_down_is_reminded_not_re_alerted_every_poll(tracker):
    down = info(state="exited", exit_code=1)
    tracker.on_event("die", {"exitCode": "1"}, T0, down)
    polls = [tracker.on_inventory(down, T0 + i * 30) for i in range(1, 25)]
    reminders = [d for p in polls for d in p]
    assert len(reminders) == 1
    assert reminders[0].kind is AlertKind.CRASH
    assert "still crash" in reminders[0].summary


def test_catch_up_judges_each_death_by_its_own_events_or_says_it_cannot_tell(tracker):
    since = T0 - 300
    finished = datetime.fromtimestamp(T0 - 20, UTC)
    at = finished.timestamp()

    def dead(letter, code=2, **kw):
        return info(id=letter * 64, state="exited", exit_code=code, finished_at=finished, **kw)

    crashed, stopped, unseen, clean = dead("a"), dead("b", 143), dead("c"), dead("f", 0)
    oom_unseen = dead("g", 137, oom_killed=True)
    long_dead = info(
        id="d" * 64, state="exited", exit_code=2, finished_at=datetime.fromtimestamp(T0 - 9999, UTC)
    )
    sick = info(id="e" * 64, health="unhealthy")
    history = {
        crashed.id: [Seen("die", {"exitCode": "2"}, at)],
        stopped.id: [Seen("kill", {"signal": "15"}, at - 5), Seen("die", {"exitCode": "143"}, at)],
        clean.id: [Seen("die", {"exitCode": "0"}, at)],
    }
    out = []
    for c in (crashed, stopped, unseen, clean, oom_unseen, long_dead, sick):
        out += tracker.reconcile(c, T0, since, history.get(c.id, []))
    found = {d.container.id[0]: d for d in out}
    assert sorted(found) == ["a", "c", "e", "g"], "stopped, clean and long-dead say nothing"
    assert (found["a"].kind, found["a"].uncertain) == (AlertKind.CRASH, False)
    assert (found["c"].kind, found["c"].uncertain) == (AlertKind.CRASH, True)
    assert "cannot tell" in found["c"].summary
    assert (found["g"].kind, found["g"].uncertain) == (AlertKind.OOM_KILLED, False)
    assert found["e"].kind is AlertKind.UNHEALTHY
    assert tracker.reconcile(crashed, T0 + 1, since, history[crashed.id]) == [], "reported once"


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({}, True),
        ({"hemostat.monitor": "false"}, False),
        ({"hemostat.stack": "true"}, False),
        ({"hemostat.monitor": "true"}, True),
    ],
)
def test_watch_policy(labels, expected):
    assert watched(info(labels=labels), POLICY) is expected


def test_stack_containers_can_be_included_and_own_container_is_never_watched():
    stack = info(labels={"hemostat.stack": "true"})
    assert watched(stack, replace(POLICY, include_stack=True))
    assert not watched(info(), POLICY, own_id="aaaa")

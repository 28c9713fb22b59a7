"""The fleet's host watch as pure functions with a manual clock: which hosts are watched from
the edge agents' heartbeats, and when a change is told (after a grace period when worse, at once
when watched again, never twice)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.heartbeat import AgentStatus, Heartbeat
from shared.hosts import HostState, Observed, observe, transition

T = 1_700_000_000.0
GRACE = 60.0


def beat(agent: str, host: str, age_s: float = 0.0, ttl_s: float = 10.0) -> Heartbeat:
    now = datetime.fromtimestamp(T, UTC)
    return Heartbeat(
        agent=agent,
        instance=f"{host}-{agent}",
        host=host,
        pid=1,
        version="0",
        status=AgentStatus.OK,
        started_at=now - timedelta(seconds=100),
        beat_at=now - timedelta(seconds=age_s),
        ttl_s=ttl_s,
    )


def test_only_live_edge_agents_make_a_host():
    seen = observe(
        [
            beat("monitor", "a"),
            beat("responder", "a"),
            beat("responder", "a"),
            beat("monitor", "b", age_s=30),  # expired
            beat("responder", "b"),
            beat("analyzer", "central"),  # central agents do not make a host
        ],
        datetime.fromtimestamp(T, UTC),
    )
    assert seen == {
        "a": Observed(host="a", monitors=1, responders=2),
        "b": Observed(host="b", monitors=0, responders=1),
    }
    assert seen["a"].state is HostState.WATCHED
    assert seen["b"].state is HostState.UNWATCHED


def run(steps):
    """Feed (seconds, observed or None) in order; collect what would be told."""
    record, told = None, []
    for at, seen in steps:
        record, tell = transition(record, seen, "a", T + at, GRACE)
        told.append(tell)
    return record, told


UP = Observed(host="a", monitors=1, responders=1)
NO_RESPONDER = Observed(host="a", monitors=1, responders=0)


def test_a_host_whose_agents_stop_is_told_once_after_the_grace_then_once_when_back():
    record, told = run(
        [(0, UP), (5, None), (5 + GRACE - 1, None), (5 + GRACE, None), (200, None), (210, UP)]
    )
    assert told == [None, None, None, HostState.UNWATCHED, None, HostState.WATCHED]
    assert record.state is HostState.WATCHED and record.told is HostState.WATCHED
    assert record.last_seen == T + 210


def test_a_restart_within_the_grace_is_not_news():
    _, told = run([(0, UP), (5, None), (20, NO_RESPONDER), (30, UP), (100, UP)])
    assert told == [None] * 5


def test_a_host_watched_but_not_healed_is_told_after_the_grace():
    _, told = run([(0, UP), (1, NO_RESPONDER), (1 + GRACE, NO_RESPONDER), (80, None), (200, None)])
    # Worse again (no Monitor either): a new state, its own grace.
    assert told == [None, None, HostState.NOT_HEALED, None, HostState.UNWATCHED]


def test_a_new_host_first_seen_without_a_responder_is_told_after_the_grace_too():
    _, told = run([(0, NO_RESPONDER), (GRACE, NO_RESPONDER)])
    assert told == [None, HostState.NOT_HEALED]


def test_an_unknown_host_with_no_agents_is_not_a_host():
    assert transition(None, None, "ghost", T, GRACE) == (None, None)


def test_a_stopping_agent_no_longer_watches_its_host():
    """Seen failing before: a Monitor that takes its grace period to stop kept its host
    'watched' meanwhile, so stopping an edge was told twice (no Responder, then unwatched)."""
    stopping = beat("monitor", "a").model_copy(update={"status": AgentStatus.STOPPING})
    seen = observe([stopping, beat("responder", "a")], datetime.fromtimestamp(T, UTC))
    assert seen["a"].state is HostState.UNWATCHED

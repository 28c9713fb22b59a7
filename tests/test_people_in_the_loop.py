"""People in the loop, end to end: the five agents as OS processes, a real Redis, the real Docker
engine, local Slack and Discord receivers. 25 containers crashing at once are one storm message
and one all-clear per channel while each is healed; a proposal for a container that recovers by
itself is withdrawn and the channels say so; a container labelled only `autoheal=true` is healed.

This stack watches only containers with its own `people.test` label, so that nothing here
carries a HemoStat label it does not need."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis

from shared.approvals import ProposalState
from shared.events import Channel
from tests.support.docker_events import count_events, docker_events
from tests.support.stack import Stack, events, stack_on_clean_redis, wait

pytestmark = [pytest.mark.docker, pytest.mark.redis]
SCOPE = {"people.test": uuid.uuid4().hex[:12]}
OPT_IN = {"hemostat.remediate": "true"}
CHANNELS = ("/slack", "/discord")

RUNBOOKS = """
id: people-crash
version: 1
match: {kinds: [crash]}
actions:
  - {id: restart, type: restart, params: {stop_timeout_s: 1}, guards: {cooldown_s: 0},
     verify: {timeout_s: 60}}
default_action: restart
---
id: people-unhealthy-approval
version: 1
priority: 50
match: {kinds: [unhealthy], labels: {people.approval: "true"}}
actions:
  - {id: restart, type: restart, params: {stop_timeout_s: 1}, approval: {required: true,
     timeout_s: 600}, verify: {timeout_s: 30}}
default_action: restart
---
id: people-unhealthy
version: 1
match: {kinds: [unhealthy]}
actions:
  - {id: restart, type: restart, params: {stop_timeout_s: 10}, guards: {cooldown_s: 0},
     verify: {timeout_s: 30, require_healthy: true}}
default_action: restart
"""


@pytest.fixture(scope="module")
def stack(redis_service, tmp_path_factory, docker) -> Iterator[Stack]:
    try:
        with stack_on_clean_redis(
            redis_service.url,
            tmp_path_factory.mktemp("people"),
            RUNBOOKS,
            host_name="people-host",
            watch_label="people.test={}".format(SCOPE["people.test"]),
            env={
                "HEMOSTAT_RESPONDER_CIRCUIT_MAX_ACTIONS": "10",
                "HEMOSTAT_RESPONDER_ACTION_CONCURRENCY": "32",
                # Storm defaults but for two: no failure goes out alone before 5 have arrived
                # whatever this machine's speed, and the all-clear comes 15 s after the last one.
                "HEMOSTAT_ALERT_STORM_HOLD_S": "30",
                "HEMOSTAT_ALERT_STORM_QUIET_S": "15",
            },
        ) as s:
            yield s
    finally:
        label = "people.test={}".format(SCOPE["people.test"])
        for c in docker.containers.list(all=True, filters={"label": label}):
            c.remove(force=True, v=True)


@pytest.fixture
def r(stack: Stack) -> Iterator[sync_redis.Redis]:
    client = sync_redis.Redis.from_url(stack.redis_url, decode_responses=True)
    yield client
    client.close()


def outcomes(r: sync_redis.Redis, container_id: str) -> list[Any]:
    return [
        e for e in events(r, Channel.REMEDIATION_COMPLETE) if e.subject.container_id == container_id
    ]


def succeeded(r: sync_redis.Redis, container_id: str) -> bool:
    return any(o.payload.status == "succeeded" for o in outcomes(r, container_id))


def texts(stack: Stack, path: str) -> list[str]:
    return [h.raw for h in stack.receiver.at(path)]


def test_25_containers_crashing_at_once_are_one_storm_and_one_all_clear_per_channel(
    stack, r, docker, test_image, tmp_path: Path
):
    trigger = tmp_path / "go"
    tmp_path.chmod(0o777)
    # Each waits for the shared trigger file, then crashes once (after a restart, /tmp/ran
    # survives and it stays up): 25 crashes within a moment of each other.
    script = (
        "if [ -f /tmp/ran ]; then sleep 3600; fi; touch /tmp/ran; "
        "while [ ! -f /shared/go ]; do sleep 0.1; done; exit 3"
    )
    made = [
        docker.containers.run(
            test_image,
            ["sh", "-c", script],
            labels=SCOPE | OPT_IN,
            volumes={str(tmp_path): {"bind": "/shared", "mode": "ro"}},
            detach=True,
        )
        for _ in range(25)
    ]
    since = time.time() - 1
    trigger.write_text("go")
    wait(
        lambda: all(succeeded(r, c.id) for c in made),
        180,
        f"25 healed\n{stack.log('responder')}",
    )
    wait(
        lambda: all(any("storm over" in t for t in texts(stack, p)) for p in CHANNELS),
        120,
        f"the all-clear on every channel\n{stack.log('alert')}",
    )
    log = docker_events()
    assert {c.id: log.count(c.id, "restart", since) for c in made} == {c.id: 1 for c in made}
    for path in CHANNELS:
        said = texts(stack, path)
        assert len(said) == 2, said
        start, end = said
        assert "storm on host people-host" in start
        assert "storm over on host people-host: 25 failure(s)" in end
        assert "25 healed" in end
        for c in made:
            assert c.name in end, f"{c.name} missing from the all-clear on {path}"
    # Every failure is in the history the dashboard reads.
    history = [
        e
        for e in events(r, Channel.REMEDIATION_COMPLETE)
        if e.subject.container_id in {c.id for c in made}
    ]
    assert len(history) == 25


def test_a_proposal_for_a_container_that_recovers_by_itself_is_withdrawn_and_said_so(
    stack, r, docker, test_image
):
    before = {p: len(stack.receiver.at(p)) for p in CHANNELS}
    # Unhealthy until the test creates /tmp/ok; its runbook needs an approval to restart it.
    c = docker.containers.run(
        test_image,
        ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"],
        labels=SCOPE | OPT_IN | {"people.approval": "true"},
        healthcheck={
            "test": ["CMD", "test", "-f", "/tmp/ok"],
            "interval": 500_000_000,
            "retries": 1,
        },
        detach=True,
    )
    wait(
        lambda: any(o.payload.status == "pending_approval" for o in outcomes(r, c.id)),
        60,
        f"a proposal\n{stack.log('responder')}",
    )
    [pending] = [o for o in outcomes(r, c.id) if o.payload.status == "pending_approval"]
    proposal_id = pending.payload.proposal_id
    c.exec_run(["touch", "/tmp/ok"])  # it recovers on its own
    wait(
        lambda: any(o.payload.status == "cancelled" for o in outcomes(r, c.id)),
        60,
        f"the proposal withdrawn\n{stack.log('analyzer')}\n{stack.log('responder')}",
    )
    assert r.hget(f"hemostat:proposal:{proposal_id}", "state") == ProposalState.CANCELLED
    for path in CHANNELS:
        wait(
            lambda path=path: any(
                proposal_id in t and "withdrawn" in t for t in texts(stack, path)[before[path] :]
            ),
            30,
            f"{path} told the proposal was withdrawn",
        )
    assert count_events(docker, c.id, "restart", 0) == 0


def test_a_container_labelled_only_autoheal_true_is_healed(stack, r, docker, test_image):
    since = time.time() - 1
    # No hemostat.* label at all: what a compose file written for docker-autoheal carries.
    script = "if [ -f /tmp/ran ]; then touch /tmp/ok; fi; touch /tmp/ran; sleep 3600"
    c = docker.containers.run(
        test_image,
        ["sh", "-c", script],
        labels=SCOPE | {"autoheal": "true", "autoheal.stop.timeout": "2"},
        healthcheck={
            "test": ["CMD", "test", "-f", "/tmp/ok"],
            "interval": 500_000_000,
            "retries": 1,
        },
        detach=True,
    )
    assert not [k for k in c.labels if k.startswith("hemostat.")]
    wait(lambda: succeeded(r, c.id), 90, f"healed\n{stack.log('responder')}")
    assert count_events(docker, c.id, "restart", since) == 1
    [done] = [o for o in outcomes(r, c.id) if o.payload.status == "succeeded"]
    audit = [
        rec
        for _, rec in r.xrange("hemostat:audit")
        if c.id in rec.get("record", "") and '"executed"' in rec.get("record", "")
    ]
    assert audit, "the restart is audited"
    assert '"stop_timeout_s":2' in audit[-1]["record"].replace(" ", "")
    assert "autoheal" in audit[-1]["record"]  # the target policy says why it was allowed
    assert done.payload.action_type == "restart"

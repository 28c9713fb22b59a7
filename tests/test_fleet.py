"""Fleet mode on one machine: two Docker engines of their own (separate dockerd processes, each
with its own socket, data root and bridge), an edge (Monitor + Responder) per engine, one central
Analyzer and Alert agent, one Redis. A crash on one host is healed there and only there; a
container with the same name on the other host is never touched; every outcome names its host;
an edge that stops is escalated and cleared when it is back; a request for a host with no live
Responder ends failed with the reason instead of waiting forever."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis as sync_redis

from shared import audit
from shared.clock import to_datetime
from shared.events import (
    AlertKind,
    Analysis,
    AnalysisMethod,
    Channel,
    RemediationNeeded,
    RemediationNeededEvent,
    Severity,
    Source,
    Subject,
    make_event,
)
from shared.runbooks import load_runbooks
from tests.support.engines import PrivateEngine
from tests.support.stack import Stack, events, stack_on_clean_redis, wait

pytestmark = [pytest.mark.docker, pytest.mark.redis]
SCOPE = {"fleet.test": uuid.uuid4().hex[:12]}
OPT_IN = {"hemostat.remediate": "true"}
CRASH_ONCE = "if [ -f /tmp/ran ]; then sleep 3600; else touch /tmp/ran; sleep 1; exit 3; fi"
RUNBOOKS = """
id: fleet-crash
version: 1
match: {kinds: [crash]}
actions:
  - {id: restart, type: restart, params: {stop_timeout_s: 1}, guards: {cooldown_s: 0},
     verify: {timeout_s: 30}}
default_action: restart
"""


class Fleet:
    def __init__(self, stack: Stack, engines: dict[str, PrivateEngine]) -> None:
        self.stack = stack
        self.engines = engines
        self.clients = {host: engine.client() for host, engine in engines.items()}

    def start_edge(self, host: str, *agents: str) -> None:
        for agent in agents or ("monitor", "responder"):
            self.stack.start(
                agent,
                key=f"{agent}@{host}",
                DOCKER_HOST=self.engines[host].host,
                HEMOSTAT_HOST_NAME=host,
            )

    def stop_edge(self, host: str, *agents: str) -> None:
        for agent in agents or ("monitor", "responder"):
            self.stack.stop(f"{agent}@{host}")

    def run(self, host: str, script: str, name: str, labels: dict[str, str]) -> Any:
        return self.clients[host].containers.run(
            "hemostat-test/busybox:latest",
            ["sh", "-c", script],
            name=name,
            labels=labels | SCOPE,
            detach=True,
        )

    def restarts(self, host: str, container_id: str, since: float) -> int:
        found = self.clients[host].api.events(
            since=since,
            until=time.time(),
            decode=True,
            filters={"container": container_id, "event": "restart"},
        )
        return len(list(found))


@pytest.fixture(scope="module")
def fleet(redis_service, tmp_path_factory, docker) -> Iterator[Fleet]:
    engines: dict[str, PrivateEngine] = {}
    f: Fleet | None = None
    try:
        with stack_on_clean_redis(
            redis_service.url,
            tmp_path_factory.mktemp("fleet"),
            RUNBOOKS,
            host_name="central",
            watch_label="fleet.test={}".format(SCOPE["fleet.test"]),
            env={
                "HEMOSTAT_FLEET_HOST_GRACE_S": "5",
                "HEMOSTAT_FLEET_CHECK_INTERVAL_S": "0.5",
                "HEMOSTAT_RESPONDER_ORPHAN_DEADLINE_S": "4",
                "HEMOSTAT_ALERT_STORM_THRESHOLD": "0",
            },
            start_all=False,  # the central agents here, an edge per engine below
        ) as stack:
            for host in ("host-a", "host-b"):
                engines[host] = PrivateEngine(host[-1] + "flt").start()
                engines[host].ensure_test_image()
            f = Fleet(stack, engines)
            stack.start("analyzer")
            stack.start("alert")
            for host in engines:
                f.start_edge(host)
            client = sync_redis.Redis.from_url(redis_service.url, decode_responses=True)
            wait(lambda: len(list(client.scan_iter("hemostat:heartbeat:*"))) >= 6, 30, "6 beats")
            client.close()
            yield f
    finally:
        if f is not None:
            for client in f.clients.values():
                client.close()
        for engine in engines.values():
            engine.stop()


@pytest.fixture
def r(fleet: Fleet) -> Iterator[sync_redis.Redis]:
    client = sync_redis.Redis.from_url(fleet.stack.redis_url, decode_responses=True)
    yield client
    client.close()


def outcomes(r: sync_redis.Redis, container_id: str) -> list[Any]:
    return [
        e for e in events(r, Channel.REMEDIATION_COMPLETE) if e.subject.container_id == container_id
    ]


def test_a_crash_on_one_host_is_healed_there_and_the_same_name_elsewhere_is_untouched(fleet, r):
    since = time.time() - 1
    calm = fleet.run("host-a", "sleep 3600", "web", OPT_IN)
    crashing = fleet.run("host-b", CRASH_ONCE, "web", OPT_IN)
    wait(
        lambda: any(o.payload.status == "succeeded" for o in outcomes(r, crashing.id)),
        90,
        f"host-b's web healed\n{fleet.stack.log('responder@host-b')}",
    )
    assert fleet.restarts("host-b", crashing.id, since) == 1
    assert fleet.restarts("host-a", calm.id, since) == 0
    calm.reload()
    assert calm.status == "running"
    done = outcomes(r, crashing.id)
    assert {o.subject.host for o in done} == {"host-b"}
    assert all("host-b" in o.source.instance for o in done), "host-b's Responder published it"
    alerts = [e for e in events(r, Channel.HEALTH_ALERT) if e.subject.container_id == crashing.id]
    assert alerts and {a.subject.host for a in alerts} == {"host-b"}
    # The audit names the host too: the same name on two hosts is two different containers.
    on_b = audit.read(r, container="web", host="host-b")
    assert on_b and {a.host for a in on_b} == {"host-b"}
    assert audit.read(r, container="web", host="host-a") == []


def test_an_edge_that_stops_is_escalated_once_and_cleared_when_it_is_back(fleet, r):
    # Its Responder first, then its Monitor: one message for one edge going away (seen failing
    # before: the Monitor took its whole grace period to stop, and looked alive meanwhile, so
    # "no live Responder" went out first, then "no longer watched").
    fleet.stop_edge("host-b", "responder", "monitor")
    wait(lambda: _host_escalations(r, "host-b", "host_unwatched"), 30, "host-b unwatched")
    assert not _host_escalations(r, "host-b", "host_not_healed")
    [down] = _host_escalations(r, "host-b", "host_unwatched")
    assert "no longer watched" in down.payload.reason
    assert down.severity is Severity.CRITICAL
    wait(
        lambda: any(
            "host-b is no longer watched" in h.raw for h in fleet.stack.receiver.at("/slack")
        ),
        30,
        "Slack told",
    )
    fleet.start_edge("host-b")
    wait(lambda: _host_escalations(r, "host-b", "host_watched"), 30, "host-b watched again")
    assert not _host_escalations(r, "host-a", "host_unwatched"), "host-a was never down"


def _host_escalations(r: sync_redis.Redis, host: str, guard: str) -> list[Any]:
    return [
        e
        for e in events(r, Channel.ESCALATION)
        if e.subject.host == host and e.payload.guard == guard
    ]


def test_a_request_for_a_host_with_no_live_responder_fails_with_the_reason(fleet, r):
    fleet.stop_edge("host-b", "responder")
    target = fleet.run("host-b", "sleep 3600", "api", OPT_IN)
    request = _request("host-b", target.id)
    with contextlib.closing(sync_redis.Redis.from_url(fleet.stack.redis_url)) as raw:
        raw.xadd(str(Channel.REMEDIATION_NEEDED), {"event": request.model_dump_json()})
    wait(
        lambda: any(o.payload.status == "failed" for o in outcomes(r, target.id)),
        60,
        f"failed, not pending forever\n{fleet.stack.log('responder@host-a')}",
    )
    [failed] = outcomes(r, target.id)
    assert failed.payload.guard == "host"
    assert "host host-b has no live Responder" in failed.payload.reason
    assert failed.subject.host == "host-b"
    # Back: it reads the request from its group's backlog and does nothing twice.
    fleet.start_edge("host-b", "responder")
    wait(lambda: _read_by(r, "responder:host-b"), 60, "host-b's Responder caught up")
    assert len(outcomes(r, target.id)) == 1
    assert fleet.restarts("host-b", target.id, 0) == 0


def _read_by(r: sync_redis.Redis, group: str) -> bool:
    info = {g["name"]: g for g in r.xinfo_groups(str(Channel.REMEDIATION_NEEDED))}
    g = info.get(group)
    return bool(g) and int(g["pending"]) == 0 and int(g.get("lag") or 0) == 0


def _request(host: str, container_id: str) -> RemediationNeededEvent:
    runbook = load_runbooks_from_text()
    action = runbook.action("restart")
    assert action is not None
    now = to_datetime(time.time())
    return make_event(
        RemediationNeededEvent,
        source=Source(agent="analyzer", instance="test", version="0"),
        subject=Subject(host=host, container_id=container_id),
        severity=Severity.CRITICAL,
        payload=RemediationNeeded(
            alert_kind=AlertKind.CRASH,
            alert_occurred_at=now,
            runbook_id="fleet-crash",
            runbook_version=1,
            action=action,
            analysis=Analysis(method=AnalysisMethod.RULES, confidence=0.9, root_cause="test"),
            reason="test request",
        ),
        occurred_at=now,
        emitted_at=now,
        incident_id="inc-fleet",
    )


def load_runbooks_from_text() -> Any:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "rb.yaml").write_text(RUNBOOKS)
        runbook = load_runbooks(Path(folder)).get("fleet-crash")
    assert runbook is not None
    return runbook

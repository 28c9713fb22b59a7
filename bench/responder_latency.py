"""Responder latency (issue: Responder): from `remediation_needed` published (its stream entry
id, Redis's clock) to the restart issued on the Docker API (the daemon's `kill` event that starts
a restart, its own timestamp) — so the container's stop time is excluded. Dry-run off, no
approval, the Responder as its own process. Targets: one request at a time p95 <= 50 ms; a
burst of 40 requests published at once p95 <= 1 s (verifications are scheduled follow-ups, so
they never hold a handler slot while others wait)."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import docker
import redis as sync_redis
from redis.asyncio import Redis

from bench.common import (
    BENCH_HOST,
    agent_env,
    containers,
    header,
    percentile,
    private_redis,
    summary_ms,
    verdict,
)
from shared import keys
from shared.bus import Bus
from shared.clock import to_datetime
from shared.events import (
    AlertKind,
    Analysis,
    AnalysisMethod,
    RemediationNeeded,
    RemediationNeededEvent,
    Severity,
    Source,
    Subject,
    make_event,
)
from shared.runbooks import load_runbooks
from tests.support.services import ensure_test_image

TRIALS = 40
RUNBOOKS = Path(__file__).parent.parent / "runbooks"


def restart_request(container_id: str) -> RemediationNeededEvent:
    runbook = load_runbooks(RUNBOOKS).get("crash-nonzero-exit")
    assert runbook is not None
    action = runbook.action("restart")
    assert action is not None
    now = to_datetime(time.time())
    return make_event(
        RemediationNeededEvent,
        source=Source(agent="bench", instance="bench", version="0"),
        subject=Subject(host=BENCH_HOST, container_id=container_id),
        severity=Severity.CRITICAL,
        payload=RemediationNeeded(
            alert_kind=AlertKind.CRASH,
            alert_occurred_at=now,
            runbook_id=runbook.id,
            runbook_version=runbook.version,
            action=action,
            reason="bench",
            analysis=Analysis(method=AnalysisMethod.RULES, confidence=0.9, root_cause="bench"),
        ),
        occurred_at=now,
        emitted_at=now,
    )


def run() -> bool:
    header(f"Responder: remediation_needed published -> restart issued on Docker ({TRIALS} trials)")
    client = docker.from_env(timeout=120)
    image = ensure_test_image(client)
    latencies: list[float] = []
    burst_latencies: list[float] = []
    with (
        private_redis() as server,
        containers(
            client,
            image,
            2 * TRIALS,
            ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"],  # stops promptly on SIGTERM
            labels_extra={"hemostat.remediate": "true"},
        ) as made,
    ):
        import subprocess

        proc = subprocess.Popen(
            [sys.executable, "-m", "agents.cli", "agent", "responder"],
            env=agent_env(
                server.url, HEMOSTAT_DRY_RUN="false", HEMOSTAT_RUNBOOKS_DIR=str(RUNBOOKS)
            ),
        )
        r = sync_redis.Redis.from_url(server.url, decode_responses=True)
        try:
            deadline = time.monotonic() + 30
            while not list(r.scan_iter(f"{keys.HEARTBEAT}responder:*")):
                if time.monotonic() > deadline:
                    raise TimeoutError("responder did not start")
                time.sleep(0.1)
            loop = asyncio.new_event_loop()
            bus = Bus(Redis.from_url(server.url, decode_responses=True))
            for container in made[:TRIALS]:
                since = time.time() - 1
                request = restart_request(container.id)
                entry = loop.run_until_complete(bus.publish(request))
                published = int(entry.split("-")[0]) / 1000
                kill = _first_kill(client, container.id, since)
                latencies.append(kill - published)
                _await_outcome(r, request.id)  # one trial at a time: no queueing behind another
            # A burst: every request at once.
            burst = made[TRIALS:]
            since = time.time() - 1
            entries = loop.run_until_complete(
                bus.publish_many([restart_request(c.id) for c in burst])
            )
            published = [int(e.split("-")[0]) / 1000 for e in entries]
            burst_latencies = [
                _first_kill(client, c.id, since) - t for c, t in zip(burst, published, strict=True)
            ]
            loop.run_until_complete(bus.redis.aclose())
            loop.close()
        finally:
            proc.terminate()
            proc.wait(60)
            r.close()
    client.close()
    print(f"   one request at a time: {summary_ms(latencies)}")
    print(f"   burst of {TRIALS} at once: {summary_ms(burst_latencies)}")
    one = percentile(latencies, 0.95) * 1000
    ok = verdict("one at a time: publish -> restart issued p95", one, 50, False, "ms")
    burst_p95 = percentile(burst_latencies, 0.95) * 1000
    return (
        verdict(f"burst of {TRIALS}: publish -> restart issued p95", burst_p95, 1000, False, "ms")
        and ok
    )


def _await_outcome(r: sync_redis.Redis, request_id: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for _, fields in r.xrevrange(keys.REMEDIATION_COMPLETE, count=5):
            if request_id in fields["event"]:
                return
        time.sleep(0.05)
    raise TimeoutError(f"no outcome for {request_id}")


def _first_kill(client: docker.DockerClient, container_id: str, since: float) -> float:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        events = client.api.events(
            since=int(since),
            until=int(time.time()) + 1,
            decode=True,
            filters={"type": "container", "container": container_id, "event": "kill"},
        )
        for event in events:
            return int(event["timeNano"]) / 1e9
        time.sleep(0.05)
    raise TimeoutError(f"no restart of {container_id[:12]}")


if __name__ == "__main__":
    sys.exit(0 if run() else 1)

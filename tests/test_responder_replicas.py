"""Several Responder processes: racing on many requests they perform no duplicate action, and a
replica killed mid-action leaves no stuck lease while another finishes its request."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from agents.responder.guards import LEASE_PREFIX, REQUEST_PREFIX
from shared.bus import Bus
from shared.events import Channel, RemediationStatus
from tests.support.bus import wait_until
from tests.support.responder import completions, request, restart_events, write_runbooks

pytestmark = [pytest.mark.docker, pytest.mark.redis]
OPT_IN = {"hemostat.remediate": "true"}


def responder_process(redis_url, runbooks_dir, instance, **env):
    environment = (
        {k: v for k, v in os.environ.items() if not k.startswith("HEMOSTAT_")}
        | {
            "REDIS_URL": redis_url,
            "HEMOSTAT_DRY_RUN": "false",
            "HEMOSTAT_RUNBOOKS_DIR": str(runbooks_dir),
            "HEMOSTAT_INSTANCE": instance,
            "HEMOSTAT_BUS_BLOCK_MS": "100",
            "HEMOSTAT_RESPONDER_VERIFY_STABLE_S": "0.5",
            "HEMOSTAT_LOG_LEVEL": "WARNING",
            "HEMOSTAT_LOG_FORMAT": "json",
        }
        | env
    )
    return subprocess.Popen(
        [sys.executable, "-m", "agents.cli", "agent", "responder"],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_all(procs):
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_three_replicas_racing_on_200_requests_perform_no_duplicate_action(
    redis, redis_url, docker, test_image, run_label, tmp_path
):
    rbs = write_runbooks(tmp_path / "runbooks")
    containers = [
        docker.containers.run(test_image, ["sleep", "600"], labels=run_label | OPT_IN, detach=True)
        for _ in range(20)
    ]
    since = time.time()
    procs = [responder_process(redis_url, tmp_path / "runbooks", f"r{n}") for n in range(3)]
    try:
        await wait_until(lambda: _heartbeats(redis, 3), timeout=30, what="3 responders up")
        requests = [request(rbs, containers[i % 20], "restart-once") for i in range(200)]
        await Bus(redis).publish_many(requests)
        await wait_until(lambda: _all_done(redis, 200), timeout=120, what="200 outcomes")
    finally:
        stop_all(procs)
    done = await completions(redis)
    per_request = Counter(e.payload.request_id for e in done)
    assert set(per_request) == {r.id for r in requests}
    assert max(per_request.values()) == 1, "exactly one outcome per request"
    statuses = Counter(e.payload.status for e in done)
    assert statuses[RemediationStatus.SUCCEEDED] == 20, statuses
    assert statuses[RemediationStatus.REJECTED] == 180, statuses
    assert {e.payload.guard for e in done if e.payload.status is RemediationStatus.REJECTED} <= {
        "cooldown",
        "lease",
    }
    restarts = {c.id: restart_events(docker, c.id, since) for c in containers}
    assert set(restarts.values()) == {1}, f"Docker saw duplicate restarts: {restarts}"
    workers = Counter(e.source.instance for e in done)
    assert len(workers) == 3, f"all replicas took part: {workers}"


async def _heartbeats(redis, n):
    return len([k async for k in redis.scan_iter("hemostat:heartbeat:responder:*")]) >= n


async def _all_done(redis, n):
    return await redis.xlen(Channel.REMEDIATION_COMPLETE) >= n


async def test_a_replica_killed_mid_action_leaves_no_stuck_lease_and_another_finishes(
    redis, redis_url, docker, test_image, run_label, tmp_path
):
    rbs = write_runbooks(tmp_path / "runbooks")
    # Healthy only ~4 s after each start: the restart's verification takes a while.
    container = docker.containers.run(
        test_image,
        ["sh", "-c", "rm -f /tmp/ok; sleep 4; touch /tmp/ok; sleep 600"],
        labels=run_label | OPT_IN,
        detach=True,
        healthcheck={
            "test": ["CMD", "test", "-f", "/tmp/ok"],
            "interval": 300_000_000,
            "retries": 1,
        },
    )
    fast_reclaim = {
        "HEMOSTAT_BUS_CLAIM_IDLE_MS": "1500",
        "HEMOSTAT_BUS_RECLAIM_INTERVAL_S": "0.3",
        "HEMOSTAT_RESPONDER_LEASE_TTL_S": "3",
    }
    since = time.time()
    doomed = responder_process(redis_url, tmp_path / "runbooks", "doomed", **fast_reclaim)
    survivor = None
    try:
        await wait_until(lambda: _heartbeats(redis, 1), timeout=30)
        req = request(rbs, container, "restart-slow-verify")
        await Bus(redis).publish(req)
        record = REQUEST_PREFIX + req.idempotency_key
        await wait_until(lambda: _phase(redis, record, "executing"), timeout=20, what="executing")
        await wait_until(lambda: restart_events(docker, container.id, since) == 1, timeout=20)
        doomed.send_signal(signal.SIGKILL)  # mid-verification: no cleanup, no ack
        doomed.wait(10)
        assert await redis.exists(LEASE_PREFIX + container.id), (
            "the dead replica's lease is still there..."
        )
        survivor = responder_process(redis_url, tmp_path / "runbooks", "survivor", **fast_reclaim)
        await wait_until(
            lambda: _outcomes(redis, req.id), timeout=40, what="finished by the survivor"
        )
    finally:
        stop_all([p for p in (doomed, survivor) if p is not None])
    [done] = await completions(redis, req.id)
    assert done.source.instance == "survivor"
    assert done.payload.status is RemediationStatus.SUCCEEDED, done.payload.reason
    assert "resumed" in done.payload.reason
    assert restart_events(docker, container.id, since) == 1, "the action was not issued twice"
    assert not await redis.exists(LEASE_PREFIX + container.id), "...but it does not stay stuck"
    await asyncio.sleep(0)


async def _phase(redis, key, phase):
    return await redis.hget(key, "phase") == phase


async def _outcomes(redis, request_id):
    return len(await completions(redis, request_id)) >= 1

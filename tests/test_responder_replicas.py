"""Several Responder processes: racing on the same requests (each delivered ten times at once,
as two Analyzers or a retried publish produce them) they perform one action and publish one
outcome per request; a replica killed mid-action leaves no stuck lease while another finishes
its request."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from shared import keys
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
            "HEMOSTAT_HOST_NAME": "test-host",  # the host the test requests name
            "HEMOSTAT_BUS_BLOCK_MS": "100",
            "HEMOSTAT_HEARTBEAT_INTERVAL_S": "0.2",
            "HEMOSTAT_RESPONDER_VERIFY_STABLE_S": "0.5",
            "HEMOSTAT_LOG_LEVEL": "INFO",
            "HEMOSTAT_LOG_FORMAT": "json",
            "HEMOSTAT_WATCH_LABEL": "hemostat.test",
        }
        | env
    )
    log = (runbooks_dir.parent / f"{instance}.log").open("ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "agents.cli", "agent", "responder"],
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    finally:
        log.close()


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


async def test_three_replicas_racing_on_the_same_requests_act_once_per_request(
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
        # Ten copies of each request (same idempotency key, distinct events), interleaved so
        # that every replica's read batch holds copies of many requests at once.
        copies = [
            request(rbs, c, "restart-once", key=f"decision:{c.id}")
            for _ in range(10)
            for c in containers
        ]
        await Bus(redis).publish_many(copies)

        async def all_handled() -> bool:
            return sum((await _handled_per_replica(redis)).values()) >= len(copies)

        await wait_until(all_handled, timeout=120, what="every copy handled")
        await wait_until(lambda: _all_done(redis, 20), timeout=120, what="20 outcomes")
        handled = await _handled_per_replica(redis)
    finally:
        stop_all(procs)
    done = await completions(redis)
    per_key = Counter(f"decision:{e.subject.container_id}" for e in done)
    assert per_key == dict.fromkeys((f"decision:{c.id}" for c in containers), 1), per_key
    statuses = Counter(e.payload.status for e in done)
    assert statuses == {RemediationStatus.SUCCEEDED: 20}, [
        (e.payload.status, e.payload.guard, e.payload.reason) for e in done
    ]
    restarts = {c.id: restart_events(docker, c.id, since) for c in containers}
    assert set(restarts.values()) == {1}, f"Docker saw duplicate restarts: {restarts}"
    assert len(handled) == 3, f"every replica handled copies: {handled}"
    assert all(n > 0 for n in handled.values()), handled


async def _handled_per_replica(redis):
    out = {}
    async for key in redis.scan_iter("hemostat:heartbeat:responder:*"):
        beat = json.loads(await redis.get(key))
        out[beat["instance"]] = beat["details"]["consumer"]["handled"]
    return out


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
        record = keys.REQUEST + req.idempotency_key
        await wait_until(lambda: _phase(redis, record, "executing"), timeout=20, what="executing")
        await wait_until(lambda: restart_events(docker, container.id, since) == 1, timeout=20)
        doomed.send_signal(signal.SIGKILL)  # mid-verification: no cleanup, no ack
        doomed.wait(10)
        assert await redis.exists(keys.LEASE + keys.on_host("test-host", container.id)), (
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
    assert done.payload.verified is True
    assert restart_events(docker, container.id, since) == 1, "the action was not issued twice"
    assert not await redis.exists(keys.LEASE + keys.on_host("test-host", container.id)), (
        "...but it does not stay stuck"
    )
    await asyncio.sleep(0)


async def _phase(redis, key, phase):
    return await redis.hget(key, "phase") == phase


async def _outcomes(redis, request_id):
    return len(await completions(redis, request_id)) >= 1

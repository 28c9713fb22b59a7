"""Each action on real containers, through a running Responder on a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import pytest
from docker import errors as docker_errors

from shared import audit
from shared.bus import Bus
from shared.events import Channel, RemediationStatus
from tests.support.responder import (
    OPT_IN,
    outcome,
    request,
    restart_events,
    running_responder,
)
from tests.support.streams import events_on

pytestmark = [pytest.mark.docker, pytest.mark.redis]


def sleeper(docker, test_image, labels, **kw):
    return docker.containers.run(test_image, ["sleep", "600"], labels=labels, detach=True, **kw)


async def test_restart_really_restarts_verifies_and_audits(
    redis, redis_url, docker, test_image, run_label, runbooks
):
    folder, rbs = runbooks
    c = sleeper(docker, test_image, run_label | OPT_IN)
    since = time.time()
    before = docker.api.inspect_container(c.id)["State"]["StartedAt"]
    async with running_responder(redis, redis_url, folder):
        req = request(rbs, c, "restart")
        await Bus(redis).publish(req)
        done = await outcome(redis, req.id)
    p = done.payload
    assert p.status is RemediationStatus.SUCCEEDED, p.reason
    assert p.verified is True
    assert "verified running" in p.reason
    assert done.causation_id == req.id
    assert done.incident_id == "inc-test"
    assert docker.api.inspect_container(c.id)["State"]["StartedAt"] != before
    assert restart_events(docker, c.id, since) == 1
    import redis as sync_redis

    with sync_redis.Redis.from_url(redis_url, decode_responses=True) as r:
        [record] = audit.read(r, container=c.id)
    assert record.event == "executed"
    assert record.outcome == "succeeded"
    assert [g.guard for g in record.guards] == [
        "idempotency",
        "stale",
        "action_policy",
        "target_policy",
        "lease",
        "cooldown",
        "circuit_breaker",
        "crash_loop",
        "dry_run",
    ]
    assert all(g.passed for g in record.guards)
    assert record.params == {"stop_timeout_s": 1}
    assert record.durations_ms["action_ms"] > 0


async def test_stop_then_start(redis, redis_url, docker, test_image, run_label, runbooks):
    folder, rbs = runbooks
    c = sleeper(docker, test_image, run_label | OPT_IN)
    async with running_responder(redis, redis_url, folder):
        stop = request(rbs, c, "stop")
        await Bus(redis).publish(stop)
        assert (await outcome(redis, stop.id)).payload.status is RemediationStatus.SUCCEEDED
        c.reload()
        assert c.status == "exited"
        start = request(rbs, c, "start")
        await Bus(redis).publish(start)
        assert (await outcome(redis, start.id)).payload.status is RemediationStatus.SUCCEEDED
        c.reload()
        assert c.status == "running"


async def test_exec_runs_only_the_runbook_argv_and_redacts_its_output(
    redis, redis_url, docker, test_image, run_label, runbooks
):
    folder, rbs = runbooks
    c = sleeper(docker, test_image, run_label | OPT_IN)
    other = sleeper(docker, test_image, run_label | OPT_IN)  # one exec per container: cooldown
    async with running_responder(redis, redis_url, folder):
        ok = request(rbs, c, "exec-ok")
        bad = request(rbs, other, "exec-fail")
        await Bus(redis).publish_many([ok, bad])
        ok_done = await outcome(redis, ok.id)
        bad_done = await outcome(redis, bad.id)
    assert ok_done.payload.status is RemediationStatus.SUCCEEDED
    assert "checked" in ok_done.payload.output
    assert "hunter2hunter2" not in ok_done.payload.output
    assert bad_done.payload.status is RemediationStatus.FAILED, "a non-zero exit is a failure"
    assert "exited with 4" in bad_done.payload.reason
    assert "broken" in bad_done.payload.output


async def test_scale_a_compose_service_up_and_down(
    redis, redis_url, docker, test_image, run_label, runbooks
):
    folder, rbs = runbooks
    project = f"hemotest{uuid.uuid4().hex[:8]}"
    labels = (
        run_label
        | OPT_IN
        | {
            "com.docker.compose.project": project,
            "com.docker.compose.service": "web",
            "com.docker.compose.container-number": "1",
        }
    )
    first = docker.containers.run(
        test_image, ["sleep", "600"], labels=labels, detach=True, name=f"{project}-web-1"
    )

    def running_members():
        return docker.containers.list(filters={"label": [f"com.docker.compose.project={project}"]})

    async with running_responder(redis, redis_url, folder):
        up = request(rbs, first, "scale-up")
        await Bus(redis).publish(up)
        assert (await outcome(redis, up.id)).payload.status is RemediationStatus.SUCCEEDED
        members = running_members()
        assert len(members) == 2
        clone = next(m for m in members if m.id != first.id)
        assert clone.name == f"{project}-web-2"
        assert clone.labels["hemostat.test"] == run_label["hemostat.test"], (
            "labels are carried over"
        )
        down = request(rbs, first, "scale-down")
        await Bus(redis).publish(down)
        assert (await outcome(redis, down.id)).payload.status is RemediationStatus.SUCCEEDED
    assert [m.id for m in running_members()] == [first.id], "the highest-numbered one went away"


async def test_cleanup_removes_exited_members_of_the_service_but_keeps_volumes(
    redis, redis_url, docker, test_image, run_label, runbooks
):
    folder, rbs = runbooks
    project = f"hemotest{uuid.uuid4().hex[:8]}"
    service = {"com.docker.compose.project": project, "com.docker.compose.service": "job"}
    target = sleeper(docker, test_image, run_label | OPT_IN | service)
    exited = [
        docker.containers.run(
            test_image,
            ["true"],
            labels=run_label | OPT_IN | service,
            detach=True,
            volumes=["/data"],
        )
        for _ in range(2)
    ]
    protected = docker.containers.run(
        test_image, ["true"], detach=True, labels=run_label | service | {"hemostat.protect": "true"}
    )
    for c in [*exited, protected]:
        c.wait(timeout=20)
    volumes = [m["Name"] for c in exited for m in docker.api.inspect_container(c.id)["Mounts"]]
    assert len(volumes) == 2
    try:
        async with running_responder(redis, redis_url, folder):
            req = request(rbs, target, "cleanup")
            await Bus(redis).publish(req)
            done = await outcome(redis, req.id)
        assert done.payload.status is RemediationStatus.SUCCEEDED
        assert "removed 2 exited container(s)" in done.payload.reason
        remaining = {
            c.id
            for c in docker.containers.list(
                all=True, filters={"label": f"com.docker.compose.project={project}"}
            )
        }
        assert remaining == {target.id, protected.id}
        assert all(docker.volumes.get(v) for v in volumes), "volumes are never removed unless asked"
    finally:
        # Anonymous volumes carry no label, so the run-label sweep cannot find them.
        for c in exited:
            with contextlib.suppress(docker_errors.NotFound):
                c.remove(force=True)
        for v in volumes:
            with contextlib.suppress(docker_errors.NotFound):
                docker.volumes.get(v).remove(force=True)


async def test_a_notify_only_request_changes_nothing(
    redis, redis_url, docker, test_image, run_label, runbooks
):
    folder, rbs = runbooks
    c = sleeper(docker, test_image, run_label | OPT_IN)
    since = time.time()
    async with running_responder(redis, redis_url, folder):
        req = request(rbs, c, "notify")
        await Bus(redis).publish(req)
        done = await outcome(redis, req.id)
    assert done.payload.status is RemediationStatus.NOTIFIED
    assert restart_events(docker, c.id, since) == 0
    assert await events_on(redis, Channel.ESCALATION) == []
    await asyncio.sleep(0)

"""The Monitor against a real Docker engine and a real Redis: containers made to fail in each way
produce the right alert kinds, a healthy one produces none, every container gets a snapshot, and
a restarted daemon is re-subscribed."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time

import docker as docker_sdk
import pytest

from agents.cli import main as cli_main
from agents.monitor.agent import MonitorAgent
from agents.monitor.cgroups import CgroupReader
from shared import keys
from shared.container_state import DEATHS_PREFIX, read_snapshots
from shared.docker_api import DockerGateway
from shared.events import AlertKind, AlertStatus
from tests.conftest import make_settings
from tests.support.bus import wait_until
from tests.support.engines import PrivateEngine
from tests.support.streams import alerts_for

pytestmark = [pytest.mark.docker, pytest.mark.redis]

CANARY = "canary-pw-5c1e7a"


def monitor_settings(redis_url, **kw):
    return make_settings(
        redis_url,
        **{
            "monitor_poll_interval_s": 0.5,
            "monitor_sustained_samples": 2,
            "monitor_min_alert_gap_s": 0,
            "monitor_cpu_threshold": 60,
            "monitor_recovery_window_s": 1,
            "monitor_baseline_enabled": False,
            "webhook_port": 0,
        }
        | kw,
    )


@contextlib.asynccontextmanager
async def running_monitor(redis, redis_url, docker_host=None, **kw):
    client = (
        docker_sdk.DockerClient(base_url=docker_host, timeout=30)
        if docker_host
        else docker_sdk.from_env(timeout=30)
    )
    agent = MonitorAgent(
        settings=monitor_settings(redis_url, **kw),
        redis=redis,
        docker=DockerGateway(client),
        cgroups=CgroupReader(),
    )
    task = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(agent._connected.wait(), 20)
        yield agent
    finally:
        agent.stop()
        await asyncio.wait_for(task, 30)
        client.close()


def run(docker, image, labels, cmd, **kw):
    return docker.containers.run(image, cmd, labels=labels, detach=True, **kw)


async def test_each_failure_mode_gives_its_alert_and_a_healthy_container_none(
    redis, redis_url, docker, test_image, run_label, capsys, monkeypatch
):
    healthcheck_ok = {"test": ["CMD", "true"], "interval": 500_000_000, "retries": 1}
    healthcheck_bad = {
        "test": ["CMD-SHELL", "echo probe failed; exit 1"],
        "interval": 500_000_000,
        "retries": 1,
    }
    async with running_monitor(redis, redis_url) as monitor:
        crash = run(
            docker,
            test_image,
            run_label,
            ["sh", "-c", f"echo boot; sleep 1; echo fatal DB_PASSWORD={CANARY} >&2; exit 3"],
        )
        unhealthy = run(
            docker, test_image, run_label, ["sleep", "600"], healthcheck=healthcheck_bad
        )
        oom = run(
            docker,
            test_image,
            run_label,
            ["sh", "-c", "sleep 1; head -c 200m /dev/zero | tail"],
            mem_limit="16m",
            memswap_limit="16m",
        )
        burner = run(
            docker,
            test_image,
            run_label,
            ["sh", "-c", "while :; do :; done"],
            nano_cpus=200_000_000,
        )
        healthy = run(docker, test_image, run_label, ["sleep", "600"], healthcheck=healthcheck_ok)

        async def kinds(container):
            return {a.payload.kind for a in await alerts_for(redis, container.id)}

        await wait_until(lambda: _has(kinds(crash), AlertKind.CRASH), timeout=20, what="crash")
        await wait_until(lambda: _has(kinds(unhealthy), AlertKind.UNHEALTHY), timeout=20)
        await wait_until(lambda: _has(kinds(oom), AlertKind.OOM_KILLED), timeout=20, what="oom")
        await wait_until(lambda: _has(kinds(burner), AlertKind.HIGH_CPU), timeout=30, what="cpu")
        # The healthy container has been polled and sampled three times: still nothing for it.
        await wait_until(
            lambda: _samples(redis, healthy.id, 3), timeout=20, what="three polls of it"
        )
        assert await alerts_for(redis, healthy.id) == []

        [crash_alert] = await alerts_for(redis, crash.id)
        assert crash_alert.payload.exit_code == 3
        assert crash_alert.payload.status is AlertStatus.FIRING
        assert crash_alert.subject.container_name == crash.name
        assert any("fatal" in line for line in crash_alert.payload.log_tail)
        assert CANARY not in crash_alert.model_dump_json(), "secret in logs must be redacted"
        assert crash_alert.payload.labels == run_label
        assert (await redis.zcard(DEATHS_PREFIX + "test-host/" + crash.id)) == 1

        oom_alert = next(
            a for a in await alerts_for(redis, oom.id) if a.payload.kind is AlertKind.OOM_KILLED
        )
        assert oom_alert.payload.oom_killed is True
        assert AlertKind.CRASH not in await kinds(oom), "one OOM alert, not also a crash"

        cpu_alert = next(
            a for a in await alerts_for(redis, burner.id) if a.payload.kind is AlertKind.HIGH_CPU
        )
        assert cpu_alert.payload.metrics["cpu_percent"] >= 60
        assert cpu_alert.payload.thresholds["cpu_percent"] == 60

        unhealthy_alert = (await alerts_for(redis, unhealthy.id))[0]
        assert "probe failed" in unhealthy_alert.payload.summary

        import redis as sync_redis

        with sync_redis.Redis.from_url(redis_url, decode_responses=True) as client:
            snaps = {s.id: s for s in read_snapshots(client, time.time(), 60)}
        assert healthy.id in snaps, "healthy containers are in the snapshot too"
        assert snaps[healthy.id].health == "healthy"
        assert snaps[burner.id].cpu_percent is not None
        assert snaps[burner.id].stats_source in ("cgroup", "api")
        assert monitor.status.value == "ok"

        monkeypatch.setenv("REDIS_URL", redis_url)
        assert cli_main(["status"]) == 0
        out = capsys.readouterr().out
        assert "monitor" in out
        assert healthy.name in out
        assert "high_cpu" in out, "the burner's open alert is listed"


async def _has(kinds_coro, kind):
    return kind in await kinds_coro


async def _samples(redis, container_id, n):
    return await redis.xlen(keys.SAMPLES + container_id) >= n


async def test_deliberate_stop_is_not_an_alert_and_recovery_resolves(
    redis, redis_url, docker, test_image, run_label
):
    healthcheck = {"test": ["CMD-SHELL", "test -f /tmp/ok"], "interval": 300_000_000, "retries": 1}
    async with running_monitor(redis, redis_url):
        stopped = run(docker, test_image, run_label, ["sleep", "600"])
        await wait_until(lambda: _samples(redis, stopped.id, 1), what="the Monitor saw it run")
        await asyncio.to_thread(stopped.stop, timeout=1)
        flaky = run(docker, test_image, run_label, ["sleep", "600"], healthcheck=healthcheck)

        async def statuses():
            return [(a.payload.kind, a.payload.status) for a in await alerts_for(redis, flaky.id)]

        await wait_until(
            lambda: _contains(statuses(), (AlertKind.UNHEALTHY, AlertStatus.FIRING)), timeout=20
        )
        await asyncio.to_thread(flaky.exec_run, ["touch", "/tmp/ok"])
        await wait_until(
            lambda: _contains(statuses(), (AlertKind.UNHEALTHY, AlertStatus.RESOLVED)), timeout=20
        )
        assert await alerts_for(redis, stopped.id) == [], "docker stop is not a crash"


async def _contains(coro, item):
    return item in await coro


# While the daemon is down, docker-py's UnixHTTPConnection.connect() raises before it closes the
# socket it opened (an SDK leak, closed later by the garbage collector): all these filters hide.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_daemon_restart_is_resubscribed(redis, redis_url, tmp_path):
    """The Monitor's engine is one the test owns: it is stopped and started again under a
    running Monitor, and the host's engine (every other test's) is never touched."""
    engine = await asyncio.to_thread(PrivateEngine("mon").start)
    try:
        image = await asyncio.to_thread(engine.ensure_test_image)
        async with running_monitor(redis, redis_url, docker_host=engine.host) as monitor:
            seen: set[str] = set()

            async def watch_status():
                while True:
                    seen.add(monitor.status.value)
                    await asyncio.sleep(0.02)

            watcher = asyncio.create_task(watch_status())
            await asyncio.to_thread(engine.kill)
            await wait_until(lambda: "degraded" in seen, timeout=30, what="degraded")
            await asyncio.to_thread(engine.start)
            await wait_until(
                lambda: monitor._connected.is_set() and not monitor._degraded,
                timeout=30,
                what="re-subscribed",
            )
            watcher.cancel()
            assert monitor.status.value == "ok"
            fresh = engine.client()
            try:
                crash = fresh.containers.run(
                    image, ["sh", "-c", "exit 7"], detach=True, labels={"hemostat.test": "engine"}
                )

                async def crashed():
                    return any(
                        a.payload.kind is AlertKind.CRASH and a.payload.exit_code == 7
                        for a in await alerts_for(redis, crash.id)
                    )

                await wait_until(crashed, timeout=20, what="crash after daemon restart")
            finally:
                fresh.close()
    finally:
        await asyncio.to_thread(engine.stop)
    gc.collect()  # finalise the SDK's leaked sockets while the filters above apply


async def test_a_crash_right_after_a_restart_is_told_when_the_gap_is_over(
    redis, redis_url, docker, test_image, run_label
):
    """The sequence the operator saw: HemoStat restarts a crashed container and it dies again a
    second later, inside the minimum gap between alerts. That death is told once the gap is over
    (it is still down), not half an hour later with "succeeded" in the audit meanwhile."""
    script = "test -f /tmp/once && { sleep 1; exit 3; }; touch /tmp/once; exit 3"
    async with running_monitor(redis, redis_url, monitor_min_alert_gap_s=8):
        crashing = run(docker, test_image, run_label, ["sh", "-c", script])

        async def crashes():
            alerts = await alerts_for(redis, crashing.id)
            return [a for a in alerts if a.payload.kind is AlertKind.CRASH]

        await wait_until(lambda: _count(crashes(), 1), what="the first crash", timeout=20)
        await asyncio.to_thread(crashing.start)  # what the Responder's restart does
        await wait_until(lambda: _count(crashes(), 2), what="the crash after it", timeout=30)
        _first, second = await crashes()
        assert second.idempotency_key.startswith(f"held:{crashing.id}:crash:")
        assert second.payload.status is AlertStatus.FIRING
        assert second.payload.exit_code == 3
        assert "crash again" in second.payload.summary


async def _count(coro, n):
    return len(await coro) >= n

"""The README's detection table, each row against a real container: memory filling its limit,
a deviation from a container's own baseline with the default thresholds, the per-container
threshold labels, and a restart loop made of real Docker deaths."""

from __future__ import annotations

import pytest

from agents.monitor.tracker import MonitorPolicy
from shared import keys
from shared.events import AlertKind, Severity
from shared.settings import Settings
from tests.support.bus import wait_until
from tests.support.streams import alerts_for
from tests.test_monitor_agent import running_monitor

pytestmark = [pytest.mark.docker, pytest.mark.redis]

# Holds 28 MB (a file in /dev/shm: memory charged to the container, never reclaimable cache).
FILL_28M = "head -c 28000000 /dev/zero > /dev/shm/fill; sleep 600"
# Idles until the test creates /tmp/go, then burns one core.
IDLE_THEN_BURN = "while [ ! -f /tmp/go ]; do sleep 0.05; done; while :; do :; done"
BURN = ["sh", "-c", "while :; do :; done"]


async def kinds(redis, container_id):
    return {a.payload.kind for a in await alerts_for(redis, container_id)}


async def polled(redis, container_id, n):
    return await redis.xlen(keys.SAMPLES + container_id) >= n


async def test_high_memory_when_a_container_fills_its_limit(
    redis, redis_url, docker, test_image, run_label
):
    async with running_monitor(redis, redis_url, monitor_memory_threshold=80.0):
        full = docker.containers.run(
            test_image, ["sh", "-c", FILL_28M], labels=run_label, detach=True, mem_limit="32m"
        )

        async def high_memory():
            return AlertKind.HIGH_MEMORY in await kinds(redis, full.id)

        await wait_until(high_memory, timeout=30, what="high_memory")
    [alert] = [
        a for a in await alerts_for(redis, full.id) if a.payload.kind is AlertKind.HIGH_MEMORY
    ]
    assert alert.payload.metrics["memory_percent"] >= 80
    assert alert.payload.metrics["memory_limit_is_host"] == 0.0, "against its own limit"
    assert "of its limit" in alert.payload.summary


async def test_anomaly_against_the_containers_own_baseline_with_default_thresholds(
    redis, redis_url, docker, test_image, run_label
):
    defaults = Settings.model_fields
    policy = MonitorPolicy()  # the defaults the README documents
    assert policy.baseline is not None
    assert defaults["monitor_baseline_z"].default == policy.baseline.z == 4.0
    async with running_monitor(
        redis,
        redis_url,
        monitor_baseline_enabled=True,
        monitor_poll_interval_s=0.2,
    ):
        quiet = docker.containers.run(
            test_image, ["sh", "-c", IDLE_THEN_BURN], labels=run_label, detach=True
        )
        min_samples = policy.baseline.min_samples
        await wait_until(
            lambda: polled(redis, quiet.id, min_samples + 2),
            timeout=60,
            what="a baseline of idle samples",
        )
        assert AlertKind.ANOMALY not in await kinds(redis, quiet.id), "idle is its normal"
        quiet.exec_run(["touch", "/tmp/go"])

        async def anomaly():
            return AlertKind.ANOMALY in await kinds(redis, quiet.id)

        await wait_until(anomaly, timeout=30, what="the anomaly")
    [alert] = [a for a in await alerts_for(redis, quiet.id) if a.payload.kind is AlertKind.ANOMALY]
    assert alert.severity is Severity.INFO
    assert alert.payload.metrics["zscore"] >= 4
    assert alert.payload.thresholds == {"zscore": 4.0, "min_delta": 15.0}


async def test_threshold_labels_override_the_global_thresholds_per_container(
    redis, redis_url, docker, test_image, run_label
):
    """The same load twice: below the global thresholds (85 % CPU, 80 % memory), above the
    thresholds two containers set for themselves by label."""
    async with running_monitor(
        redis, redis_url, monitor_cpu_threshold=85.0, monitor_memory_threshold=80.0
    ):
        # One core of two (about 50 % of an unlimited container's allowance), and 28 MB of 64.
        cpu_labelled = docker.containers.run(
            test_image, BURN, labels=run_label | {"hemostat.cpu_threshold": "20"}, detach=True
        )
        mem_labelled = docker.containers.run(
            test_image,
            ["sh", "-c", FILL_28M],
            labels=run_label | {"hemostat.memory_threshold": "30"},
            detach=True,
            mem_limit="64m",
        )
        cpu_plain = docker.containers.run(test_image, BURN, labels=run_label, detach=True)
        mem_plain = docker.containers.run(
            test_image, ["sh", "-c", FILL_28M], labels=run_label, detach=True, mem_limit="64m"
        )

        async def fired(container, kind):
            return kind in await kinds(redis, container.id)

        await wait_until(lambda: fired(cpu_labelled, AlertKind.HIGH_CPU), timeout=30, what="cpu")
        await wait_until(lambda: fired(mem_labelled, AlertKind.HIGH_MEMORY), timeout=30)
        for plain in (cpu_plain, mem_plain):
            await wait_until(lambda p=plain: polled(redis, p.id, 6), timeout=30, what="6 polls")
    assert await kinds(redis, cpu_plain.id) == set(), "the same load without the label: nothing"
    assert await kinds(redis, mem_plain.id) == set()
    [cpu] = await alerts_for(redis, cpu_labelled.id)
    assert cpu.payload.thresholds["cpu_percent"] == 20.0
    [mem] = await alerts_for(redis, mem_labelled.id)
    assert mem.payload.thresholds["memory_percent"] == 30.0


async def test_a_restart_loop_from_real_docker_deaths(
    redis, redis_url, docker, test_image, run_label
):
    async with running_monitor(redis, redis_url):
        looping = docker.containers.run(
            test_image,
            ["sh", "-c", "sleep 0.2; exit 1"],
            labels=run_label,
            detach=True,
            restart_policy={"Name": "on-failure", "MaximumRetryCount": 5},
        )

        async def looped():
            return AlertKind.RESTART_LOOP in await kinds(redis, looping.id)

        await wait_until(looped, timeout=60, what="restart_loop")
    loop = next(
        a for a in await alerts_for(redis, looping.id) if a.payload.kind is AlertKind.RESTART_LOOP
    )
    # The first one comes at exactly HEMOSTAT_MONITOR_RESTART_LOOP_COUNT (3) deaths, not later.
    assert loop.payload.metrics["deaths_in_window"] == 3
    assert loop.severity is Severity.CRITICAL

"""BaseAgent lifecycle, loops, heartbeat and graceful shutdown — in-process and as a real process
driven by signals through the `hemostat` CLI."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agents.base import BaseAgent
from agents.cli import main as cli_main
from shared.bus import Bus
from shared.events import Channel
from shared.heartbeat import heartbeat_key
from shared.stub_bus import StubBus
from tests.conftest import make_settings
from tests.support import factories
from tests.support.agents import EchoAgent
from tests.support.bus import blocked_readers, dead_letters, wait_until

pytestmark = pytest.mark.redis


def check(monkeypatch, redis_url, *args) -> int:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("HEMOSTAT_HOST_NAME", "test-host")
    return cli_main(["check", *args])


async def test_lifecycle_hooks_loops_consumer_and_heartbeat(redis, redis_url, monkeypatch):
    agent = EchoAgent(settings=make_settings(redis_url), redis=redis)
    task = asyncio.create_task(agent.run())
    await wait_until(lambda: agent.hooks == ["start", "started"])
    event = factories.health_alert()
    await Bus(redis).publish(event)
    await wait_until(lambda: agent.handled == [event.id])
    await wait_until(lambda: agent.ticks >= 3, what="periodic loop")
    key = heartbeat_key("echo", "test-1")
    await wait_until(lambda: redis.exists(key), what="heartbeat")
    assert 0 < await redis.pttl(key) <= 2000
    assert check(monkeypatch, redis_url, "echo") == 0
    assert check(monkeypatch, redis_url, "echo", "--instance", "other") == 1

    agent.stop()
    await asyncio.wait_for(task, 10)
    assert agent.hooks == ["start", "started", "stop"]
    assert agent.background_exited, "the background loop's sleep returned on stop"
    assert not await redis.exists(key)
    assert check(monkeypatch, redis_url, "echo") == 1


async def test_a_failing_loop_is_logged_and_keeps_running(redis, redis_url):
    agent = EchoAgent(settings=make_settings(redis_url), redis=redis)
    agent.fail_ticks = 3
    task = asyncio.create_task(agent.run())
    await wait_until(lambda: agent.ticks >= 6)
    assert agent.fail_ticks == 0
    agent.stop()
    await asyncio.wait_for(task, 10)


async def test_sleep_returns_early_on_stop(redis, redis_url):
    agent = EchoAgent(settings=make_settings(redis_url), redis=redis)
    started = time.monotonic()
    sleeper = asyncio.create_task(agent.sleep(30))
    await asyncio.sleep(0.05)
    agent.stop()
    assert await sleeper is False
    assert time.monotonic() - started < 2
    assert await agent.sleep(0.01) is False


async def test_graceful_stop_lets_in_flight_handlers_finish(redis, redis_url):
    agent = EchoAgent(settings=make_settings(redis_url), redis=redis, delay_s=0.6)
    task = asyncio.create_task(agent.run())
    bus = Bus(redis)
    await wait_until(lambda: redis.exists(Channel.HEALTH_ALERT))
    events = [factories.health_alert(f"c{i}") for i in range(5)]
    await bus.publish_many(events)
    await wait_until(lambda: agent.consumer.inflight == 5)
    agent.stop()
    await asyncio.wait_for(task, 10)
    assert sorted(agent.handled) == sorted(e.id for e in events)
    assert (await redis.xpending(Channel.HEALTH_ALERT, "echo"))["pending"] == 0


async def test_an_agent_with_unknown_handler_dead_letters_not_crashes(redis, redis_url):
    class NoHandler(BaseAgent):
        name = "nohandler"
        consumes = (Channel.HEALTH_ALERT,)

    settings = make_settings(redis_url, bus_max_deliveries=1)
    agent = NoHandler(settings=settings, redis=redis)
    task = asyncio.create_task(agent.run())
    await wait_until(lambda: redis.exists(Channel.HEALTH_ALERT))
    await Bus(redis).publish(factories.health_alert())
    await wait_until(lambda: redis.xlen("hemostat:dead_letter"))
    assert not task.done()
    agent.stop()
    await asyncio.wait_for(task, 10)


async def test_an_agent_survives_bad_bytes_and_lost_streams_and_groups(redis, redis_url):
    """Each of these used to kill the agent (and crash-loop it under `hemostat run`)."""
    agent = EchoAgent(settings=make_settings(redis_url, bus_block_ms=2_000), redis=redis)
    task = asyncio.create_task(agent.run())
    bus = Bus(redis)
    try:
        await wait_until(lambda: redis.exists(Channel.HEALTH_ALERT), what="group created")
        await redis.xadd(Channel.HEALTH_ALERT, {"event": b"\xff\xfe"})
        event = factories.health_alert()
        await bus.publish(event)
        await wait_until(lambda: agent.handled == [event.id], what="the event after the bad one")
        [(_, dead)] = await dead_letters(redis)
        assert "not valid UTF-8" in dead["error"]
        losses = {
            "DEL": lambda: redis.delete(Channel.HEALTH_ALERT),
            "FLUSHALL": lambda: redis.flushall(),
            "XGROUP DESTROY": lambda: redis.xgroup_destroy(Channel.HEALTH_ALERT, "echo"),
            "FLUSHDB": lambda: redis.flushdb(),
        }
        for loss, do in losses.items():
            await wait_until(lambda: blocked_readers(redis), what=f"blocked read before {loss}")
            await do()
            event = factories.health_alert()
            await bus.publish(event)
            await wait_until(lambda e=event: e.id in agent.handled, what=f"an event after {loss}")
            assert not task.done(), f"the agent stopped after {loss}"
        assert agent.consumer is not None
        assert agent.consumer.stats.groups_recreated == len(losses)
    finally:
        agent.stop()
        await asyncio.wait_for(task, 10)


def _agent_process(redis_url: str, tmp_path: Path, delay: float) -> subprocess.Popen[str]:
    env = os.environ | {
        "REDIS_URL": redis_url,
        "HEMOSTAT_INSTANCE": "proc-1",
        "HEMOSTAT_HOST_NAME": "test-host",
        "HEMOSTAT_HEARTBEAT_INTERVAL_S": "0.2",
        "HEMOSTAT_HEARTBEAT_TTL_S": "1.5",
        "HEMOSTAT_BUS_BLOCK_MS": "100",
        "HEMOSTAT_LOG_FORMAT": "json",
        "ECHO_DELAY_S": str(delay),
        "ECHO_LOG": str(tmp_path / "echo.log"),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "agents.cli", "agent", "tests.support.agents:build"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_sigterm_drains_in_flight_work_and_exits_zero(
    redis, redis_url, tmp_path, monkeypatch
):
    proc = _agent_process(redis_url, tmp_path, delay=1.0)
    try:
        await wait_until(
            lambda: check(monkeypatch, redis_url, "echo") == 0, timeout=20, what="heartbeat"
        )
        event = factories.health_alert()
        await Bus(redis).publish(event)
        log = tmp_path / "echo.log"
        await wait_until(lambda: log.exists() and f"start {event.id}" in log.read_text())
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 15)
        stderr = proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert code == 0, stderr
    assert f"done {event.id}" in log.read_text(), "in-flight handler was cut off"
    assert (await redis.xpending(Channel.HEALTH_ALERT, "echo"))["pending"] == 0
    assert check(monkeypatch, redis_url, "echo") == 1
    assert '"event": "agent.stopped"' in stderr


async def test_heartbeat_of_a_killed_agent_expires(redis, redis_url, tmp_path, monkeypatch):
    proc = _agent_process(redis_url, tmp_path, delay=0)
    try:
        await wait_until(lambda: check(monkeypatch, redis_url, "echo") == 0, timeout=20)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert check(monkeypatch, redis_url, "echo") == 0, "the key lives until its TTL"
    await wait_until(lambda: check(monkeypatch, redis_url, "echo") == 1, timeout=5)


class _Said:
    """Stands in for an agent's logger: what it was told, in order."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **kw: self.lines.append((level, event))


async def test_a_loop_in_an_outage_backs_off_and_says_so_once_not_per_tick(redis_url):
    """Seen failing before: a periodic loop retried every tick (0.25 s) and logged a traceback
    each time while Redis was away (about 60 per Responder in 12 s)."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    agent = EchoAgent(settings=make_settings(redis_url), redis=None, bus=StubBus())
    said = _Said()
    agent.log = said  # type: ignore[assignment]
    outage = iter([True] * 6 + [False] * 2)
    waits: list[float] = []

    async def tick() -> None:
        if next(outage):
            raise RedisConnectionError("Connection refused")

    async def sleep(seconds: float) -> bool:
        waits.append(seconds)
        if len(waits) == 8:
            agent.stop()
        return not agent.stopping

    tick.__hemostat_loop__ = type(agent).tick.__hemostat_loop__  # type: ignore[attr-defined]
    agent.tick = tick  # type: ignore[method-assign]
    agent.sleep = sleep  # type: ignore[method-assign]
    await agent._run_loop("tick")
    assert said.lines == [
        ("warning", "agent.loop_unavailable"),
        ("info", "agent.loop_recovered"),
    ], "one line when it starts, one when it is over; no traceback per tick"
    backoffs = waits[:6]
    assert all(w >= 0.05 for w in backoffs), "never sooner than the loop's interval"
    assert backoffs[-1] > 4 * backoffs[0], "consecutive failures wait longer and longer"
    assert max(backoffs) <= 5 * 1.2, "capped, so the loop is back soon after Redis is"
    assert waits[6] <= 0.05, "after a success: the interval again"

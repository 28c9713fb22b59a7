"""The Monitor tells the truth (real Docker, real Redis): a stop is never a crash however long it
takes, live or on catch-up after the Monitor's own restart; a death nobody saw is reported as
unknown, never as a crash; a reload signal hides no crash; a reconnect or a stalled stream
neither doubles nor loses a death; two replicas publish one alert per Docker event; a removed
container closes its incident."""

from __future__ import annotations

import asyncio
import time

import pytest

from shared import keys
from shared.events import AlertKind, AlertStatus, Channel
from tests.support.bus import wait_until
from tests.support.docker_events import docker_events
from tests.support.engines import PrivateEngine
from tests.support.streams import alerts_for, events_on
from tests.support.unix_proxy import DockerSocketProxy
from tests.test_monitor_agent import running_monitor

pytestmark = [pytest.mark.docker, pytest.mark.redis]

# A database-like process: on SIGTERM it takes 16 s to shut down, then exits 1.
SLOW_STOP = "trap 'sleep 16; exit 1' TERM; sleep 600 & wait"
IGNORES_TERM = ["sleep", "600"]  # PID 1 ignores SIGTERM: `docker stop` kills it (137)


def run(docker, image, labels, cmd, **kw):
    script = ["sh", "-c", cmd] if isinstance(cmd, str) else cmd
    return docker.containers.run(image, script, labels=labels, detach=True, **kw)


async def cursor_past(redis, nano: int) -> bool:
    raw = await redis.get(keys.MONITOR_CURSOR + "test-host")
    return raw is not None and int(raw) >= nano


async def handled_until(redis, container_id: str, action: str, since: float) -> None:
    """Wait until the Monitor has handled that Docker event (its cursor moved past it)."""
    log = docker_events()
    await wait_until(lambda: log.count(container_id, action, since), timeout=60, what=action)
    nano = max(log.nanos(container_id, action))
    await wait_until(lambda: cursor_past(redis, nano), timeout=30, what="the Monitor handled it")


async def kinds(redis, container_id):
    return [(a.payload.kind, a.payload.status) for a in await alerts_for(redis, container_id)]


# ---------------------------------------------------------------- stops are not crashes


async def test_a_slow_docker_stop_is_not_a_crash(redis, redis_url, docker, test_image, run_label):
    async with running_monitor(redis, redis_url):
        slow = run(docker, test_image, run_label, SLOW_STOP)
        since = time.time() - 1
        await asyncio.to_thread(slow.stop, timeout=40)  # returns once it exited, 16 s later
        slow.reload()
        assert slow.attrs["State"]["ExitCode"] == 1
        await handled_until(redis, slow.id, "die", since)
    assert await alerts_for(redis, slow.id) == [], "a stop that takes 16 s is still a stop"


async def test_a_reload_signal_does_not_hide_the_crash_that_follows(
    redis, redis_url, docker, test_image, run_label
):
    script = "trap 'echo reloaded' HUP; while [ ! -f /tmp/crash ]; do sleep 0.1; done; exit 1"
    async with running_monitor(redis, redis_url):
        c = run(docker, test_image, run_label, script)
        since = time.time() - 1
        await asyncio.to_thread(c.kill, signal="SIGHUP")
        await wait_until(lambda: docker_events().count(c.id, "kill", since), what="the HUP")
        await asyncio.to_thread(c.exec_run, ["touch", "/tmp/crash"])

        async def crashed():
            return (AlertKind.CRASH, AlertStatus.FIRING) in await kinds(redis, c.id)

        await wait_until(crashed, timeout=30, what="the crash after the reload")


async def test_on_catch_up_stopped_and_killed_are_left_alone_and_a_crash_is_reported(
    redis, redis_url, docker, test_image, run_label
):
    async with running_monitor(redis, redis_url):
        stopped = run(docker, test_image, run_label, IGNORES_TERM)
        killed = run(docker, test_image, run_label, IGNORES_TERM)
        await wait_until(lambda: redis.exists(keys.MONITOR_CURSOR + "test-host"))
    # The Monitor is down: a person stops one, kills another, and a third crashes.
    await asyncio.to_thread(stopped.stop, timeout=1)
    await asyncio.to_thread(killed.kill)
    crashed = run(docker, test_image, run_label, "exit 3")
    await asyncio.to_thread(crashed.wait, timeout=30)
    async with running_monitor(redis, redis_url):

        async def reported():
            return (AlertKind.CRASH, AlertStatus.FIRING) in await kinds(redis, crashed.id)

        await wait_until(reported, timeout=30, what="the crash during downtime")
    [alert] = await alerts_for(redis, crashed.id)
    assert alert.payload.uncertain is False, "its events were seen: a crash, for sure"
    assert "while the Monitor was not listening" in alert.payload.summary
    # Judged in the same catch-up pass as the crash: a stop and a kill are no failures.
    assert await alerts_for(redis, stopped.id) == []
    assert await alerts_for(redis, killed.id) == []


# While the daemon restarts, docker-py leaks the socket it failed to connect (closed by the GC).
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_death_whose_events_are_gone_is_reported_as_unknown_never_as_a_crash(
    redis, redis_url
):
    """The daemon restarted while the Monitor was down: its event history is gone, so nobody can
    tell whether the container stopped in error or a person stopped it."""
    engine = await asyncio.to_thread(PrivateEngine("catchup").start)
    try:
        image = await asyncio.to_thread(engine.ensure_test_image)
        client = engine.client()
        labels = {"hemostat.test": "catchup"}
        c = client.containers.run(image, IGNORES_TERM, labels=labels, detach=True)
        async with running_monitor(redis, redis_url, docker_host=engine.host):
            await wait_until(lambda: redis.exists(keys.MONITOR_CURSOR + "test-host"))
        await asyncio.to_thread(c.stop, timeout=1)  # exit 137; nobody watching
        await asyncio.to_thread(engine.restart)  # and the daemon forgets its events
        async with running_monitor(redis, redis_url, docker_host=engine.host):

            async def told():
                return await alerts_for(redis, c.id)

            await wait_until(told, timeout=30, what="the report")
        [alert] = await alerts_for(redis, c.id)
        assert alert.payload.kind is AlertKind.CRASH
        assert alert.payload.uncertain is True, "notify-only: it never asks for a restart"
        assert "cannot tell" in alert.payload.summary
        client.close()
    finally:
        await asyncio.to_thread(engine.stop)


# ---------------------------------------------------------------- the stream itself


async def test_a_reconnect_replays_nothing_twice_so_two_deaths_stay_two(
    redis, redis_url, docker, test_image, run_label
):
    async with running_monitor(redis, redis_url) as monitor:
        c = run(
            docker,
            test_image,
            run_label,
            "sleep 0.3; exit 1",
            restart_policy={"Name": "on-failure", "MaximumRetryCount": 1},
        )
        since = time.time() - 1
        log = docker_events()
        await wait_until(lambda: log.count(c.id, "die", since) >= 2, timeout=30, what="2 deaths")
        await asyncio.to_thread(c.wait, timeout=30)
        await handled_until(redis, c.id, "die", since)
        before = monitor.events.reconnects
        monitor.events.report_stall("the test drops the stream")  # reconnect, `since` inclusive
        await wait_until(
            lambda: monitor.events.reconnects > before and monitor.events.connected.is_set(),
            timeout=30,
            what="reconnected",
        )
        track = monitor.tracker.tracks[c.id]
        assert len(track.deaths) == 2
    assert (AlertKind.RESTART_LOOP, AlertStatus.FIRING) not in await kinds(redis, c.id)


async def test_a_stalled_event_stream_is_noticed_and_the_gap_caught_up(
    redis, redis_url, docker, test_image, run_label
):
    proxy = await DockerSocketProxy().start()
    try:
        async with running_monitor(
            redis,
            redis_url,
            docker_host=proxy.host,
            monitor_poll_interval_s=0.3,
            monitor_events_stall_grace_s=1.0,
        ) as monitor:
            assert proxy.stall_events() == 1  # open, silent, no error from now on
            c = run(docker, test_image, run_label, "exit 3")

            async def reported():
                return (AlertKind.CRASH, AlertStatus.FIRING) in await kinds(redis, c.id)

            await wait_until(reported, timeout=30, what="the crash, found despite the stall")
            assert monitor.events.stalls >= 1
        [alert] = await alerts_for(redis, c.id)
        assert alert.payload.uncertain is False, "the catch-up read its events"
    finally:
        await proxy.stop()


async def test_two_monitor_replicas_publish_one_alert_per_docker_event(
    redis, redis_url, docker, test_image, run_label
):
    async with (
        running_monitor(redis, redis_url, instance="mon-a") as a,
        running_monitor(redis, redis_url, instance="mon-b") as b,
    ):
        c = run(docker, test_image, run_label, "sleep 0.5; exit 3")

        async def both_saw_it() -> bool:
            seen = [a.publisher.published + a.publisher.duplicates, b.publisher.published]
            seen[1] += b.publisher.duplicates
            return min(seen) >= 1 and not a.publisher.outbox and not b.publisher.outbox

        await wait_until(both_saw_it, timeout=60, what="each replica handled the death")
    crashes = [a for a in await alerts_for(redis, c.id) if a.payload.kind is AlertKind.CRASH]
    assert len(crashes) == 1, [x.source.instance for x in crashes]


async def test_a_removed_container_closes_its_incident(
    redis, redis_url, docker, test_image, run_label
):
    from tests.test_analyzer_agent import analyzer

    async with running_monitor(redis, redis_url), analyzer(redis, redis_url):
        c = run(docker, test_image, run_label, "exit 3")
        await wait_until(lambda: _incident_of(redis, c.id), timeout=30, what="an incident")
        incident = await _incident_of(redis, c.id)
        await asyncio.to_thread(c.remove)

        async def closed():
            status = await redis.hget(f"hemostat:incident:{incident}", "status")
            return status == "resolved"

        await wait_until(closed, timeout=30, what="the incident closed")
    reason = await redis.hget(f"hemostat:incident:{incident}", "close_reason")
    assert "removed" in reason


async def _incident_of(redis, container_id):
    decisions = await events_on(redis, Channel.REMEDIATION_NEEDED)
    decisions += await events_on(redis, Channel.FALSE_ALARM)
    return next((d.incident_id for d in decisions if d.subject.container_id == container_id), None)

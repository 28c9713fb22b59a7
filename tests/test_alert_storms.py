"""Storms on a real Redis, told over real HTTP to local Slack, Discord and ntfy stand-ins: many
failures at once are one message per channel when the storm starts and one when it ends; fewer
go out one by one after the hold; approval requests and runbooks that opt out are never bundled;
two Alert replicas tell a storm once. Time moves with a clock the test advances."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared import keys
from shared.bus import Bus
from shared.events import RemediationStatus, Severity, Subject
from shared.runbooks import load_runbooks
from tests.support import factories
from tests.support.bus import wait_until
from tests.support.clock import OffsetClock
from tests.support.webhooks import Receiver
from tests.test_alert_agent import DISCORD, NTFY, SLACK, alert_agent

pytestmark = pytest.mark.redis
PATHS = (SLACK, DISCORD, NTFY)
# No failure goes out alone before the test moves the clock: what is bundled does not depend on
# how fast this machine handles 25 events.
STORM = {
    "alert_storm_threshold": 5,
    "alert_storm_window_s": 60.0,
    "alert_storm_hold_s": 30.0,
    "alert_storm_quiet_s": 60.0,
    "alert_outbox_poll_s": 0.1,
}


@pytest.fixture
def receiver():
    server = Receiver().start()
    yield server
    server.stop()


def heal(n: int, host: str = "test-host", **payload):
    event = factories.remediation_complete(f"c{n}", RemediationStatus.SUCCEEDED, **payload)
    subject = Subject(host=host, container_id=f"c{n}", container_name=f"web-{n}")
    # Each its own incident: a heal is told once per incident, and these are 25 incidents.
    return event.model_copy(update={"subject": subject, "incident_id": f"inc-{host}-{n}"})


def texts(receiver, path: str) -> list[str]:
    return [h.raw for h in receiver.at(path)]


async def storm_members(redis) -> int:
    ids = await redis.zrange(keys.ALERT_STORMS_OPEN, 0, -1)
    total = 0
    for storm_id in ids:
        total += await redis.hlen(keys.ALERT_STORM + storm_id + ":members")
    return total


async def outbox_empty(redis) -> bool:
    return not await redis.zcard(keys.ALERT_OUTBOX) and not await redis.zcard(
        keys.ALERT_OUTBOX_LEASED
    )


async def test_25_failures_at_once_are_one_storm_message_and_one_all_clear_per_channel(
    redis, redis_url, receiver
):
    clock = OffsetClock()
    async with alert_agent(redis, redis_url, receiver, clock=clock, **STORM):
        bus = Bus(redis)
        for n in range(25):
            await bus.publish(heal(n))
        await wait_until(
            lambda: all(receiver.at(p) for p in PATHS), what="the storm's first message"
        )
        await wait_until(lambda: _is(storm_members(redis), 25), what="25 failures in the storm")
        clock.advance(61)  # a minute with no new failure: the storm is over
        await wait_until(
            lambda: all(len(receiver.at(p)) >= 2 for p in PATHS), what="the storm's last message"
        )
        await wait_until(lambda: outbox_empty(redis), what="nothing left to send")
    for path in PATHS:
        start, end = texts(receiver, path)
        assert "storm on host test-host" in start
        assert "storm over on host test-host: 25 failure(s)" in end
        assert "25 healed" in end
        for n in range(25):
            assert f"web-{n} " in end, f"web-{n} missing from the last message on {path}"
    # Every failure is still in the history.
    assert await redis.xlen(keys.HISTORY) == 25


async def _is(awaitable, expected: int) -> bool:
    return await awaitable == expected


async def test_fewer_failures_than_the_threshold_go_out_one_by_one_after_the_hold(
    redis, redis_url, receiver
):
    clock = OffsetClock()
    async with alert_agent(redis, redis_url, receiver, clock=clock, **STORM):
        for n in range(4):
            await Bus(redis).publish(heal(n))
        await wait_until(lambda: _held(redis, 4), what="4 messages held")
        assert not any(receiver.at(p) for p in PATHS)  # held: nothing out before the hold ends
        clock.advance(31)
        await wait_until(lambda: all(len(receiver.at(p)) == 4 for p in PATHS), what="4 each")
        await wait_until(lambda: outbox_empty(redis), what="nothing left to send")
    for path in PATHS:
        assert not any("storm" in t for t in texts(receiver, path))
        assert sorted(t.count("web-") > 0 for t in texts(receiver, path)) == [True] * 4


async def _held(redis, n: int) -> bool:
    return await redis.zcard(keys.ALERT_OUTBOX) == n


async def test_a_storm_across_hosts_of_one_alert_kind_is_one_message(redis, redis_url, receiver):
    clock = OffsetClock()
    async with alert_agent(redis, redis_url, receiver, clock=clock, channels=("slack",), **STORM):
        for n in range(5):
            await Bus(redis).publish(heal(n, host=f"host-{n}"))
        await wait_until(lambda: receiver.at(SLACK), what="the storm's first message")
    [start] = texts(receiver, SLACK)
    assert "storm on crash across hosts: 5 failure(s)" in start


async def test_approval_requests_are_never_bundled_even_in_a_storm(redis, redis_url, receiver):
    clock = OffsetClock()
    async with alert_agent(redis, redis_url, receiver, clock=clock, channels=("slack",), **STORM):
        bus = Bus(redis)
        for n in range(5):
            await bus.publish(heal(n))
        await wait_until(lambda: receiver.at(SLACK), what="the storm's first message")
        await bus.publish(factories.approval_request("c9", "p-storm"))
        await wait_until(lambda: len(receiver.at(SLACK)) == 2, what="the approval request")
    assert "approval needed" in texts(receiver, SLACK)[1]
    assert "hemostat approve p-storm" in texts(receiver, SLACK)[1]


async def test_a_runbook_that_opts_out_is_told_one_by_one(redis, redis_url, receiver, tmp_path):
    folder = Path(tmp_path) / "runbooks"
    folder.mkdir()
    (folder / "quiet.yaml").write_text(
        "id: crash-nonzero-exit\nversion: 1\nmatch: {kinds: [crash]}\n"
        "actions: [{id: restart, type: restart}]\ndefault_action: restart\n"
        "notify: {storm: false}\n"
    )
    clock = OffsetClock()
    async with alert_agent(
        redis,
        redis_url,
        receiver,
        clock=clock,
        channels=("slack",),
        runbooks=load_runbooks(folder),
        **STORM,
    ):
        for n in range(6):
            await Bus(redis).publish(heal(n))
        # Not held either: the hold only exists for a storm to form.
        await wait_until(lambda: len(receiver.at(SLACK)) == 6, what="6 single messages")
    assert not any("storm" in t for t in texts(receiver, SLACK))


async def test_two_alert_replicas_tell_one_storm_once(redis, redis_url, receiver):
    clock = OffsetClock()
    async with (
        alert_agent(redis, redis_url, receiver, clock=clock, instance="alert-a", **STORM),
        alert_agent(redis, redis_url, receiver, clock=clock, instance="alert-b", **STORM),
    ):
        bus = Bus(redis)
        for n in range(25):
            await bus.publish(heal(n, severity=Severity.INFO))
        await wait_until(lambda: _is(storm_members(redis), 25), what="25 failures in the storm")
        clock.advance(61)
        await wait_until(
            lambda: all(len(receiver.at(p)) >= 2 for p in PATHS), what="the storm's last message"
        )
        await wait_until(lambda: outbox_empty(redis), what="nothing left to send")
    for path in PATHS:
        assert len(receiver.at(path)) == 2, texts(receiver, path)
    bundled = [f for _, f in await redis.xrange(keys.NOTIFICATIONS) if f["status"] == "bundled"]
    assert bundled, "the notification log marks bundled failures"


async def test_after_a_storm_ends_the_next_failure_is_told_on_its_own(redis, redis_url, receiver):
    clock = OffsetClock()
    async with alert_agent(redis, redis_url, receiver, clock=clock, channels=("slack",), **STORM):
        bus = Bus(redis)
        for n in range(5):
            await bus.publish(heal(n))
        await wait_until(lambda: _is(storm_members(redis), 5), what="5 failures in the storm")
        clock.advance(61)
        await wait_until(lambda: len(receiver.at(SLACK)) == 2, what="the storm's two messages")
        await bus.publish(heal(7))
        await wait_until(lambda: _held(redis, 1), what="the next failure held")
        clock.advance(31)
        await wait_until(lambda: len(receiver.at(SLACK)) == 3, what="the next failure, alone")
    assert "web-7" in texts(receiver, SLACK)[2]
    assert "storm" not in texts(receiver, SLACK)[2]

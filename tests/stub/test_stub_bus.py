"""StubBus: the in-memory bus handler tests run on (no Redis). What it shares with the Redis bus:
JSON on the wire, one group per agent type, retries up to max deliveries then a dead letter,
`current_delivery()` in the handler, partition keys, `join(channel, fail_fast=True)`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from shared.eventbus import Delivery, current_delivery
from shared.events import Channel, Event
from shared.stub_bus import StubBus, StubConsumer
from tests.support import factories

pytestmark = pytest.mark.timeout(10)


@contextlib.asynccontextmanager
async def running(*consumers: StubConsumer) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(c.run()) for c in consumers]
    try:
        yield
    finally:
        for c in consumers:
            c.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)


def consumer(bus: StubBus, handler, group: str = "g", name: str = "c1", **kw) -> StubConsumer:
    return bus.consumer(
        group=group, name=name, channels=[Channel.HEALTH_ALERT], handler=handler, **kw
    )


async def test_every_group_handles_every_event_and_join_waits_for_it():
    bus = StubBus()
    seen: dict[str, list[str]] = {"a": [], "b": []}

    def record(group: str):
        async def handle(event: Event) -> None:
            await asyncio.sleep(0)
            seen[group].append(event.id)

        return handle

    events = [factories.health_alert(f"c{i}") for i in range(3)]
    await bus.publish(events[0])  # before the groups exist: a new group starts at "0"
    a, b = consumer(bus, record("a"), group="a"), consumer(bus, record("b"), group="b")
    async with running(a, b):
        await bus.publish_many(events[1:])
        await bus.join(Channel.HEALTH_ALERT)
        assert seen == {"a": [e.id for e in events], "b": [e.id for e in events]}
    assert [e.id for e in bus.published(Channel.HEALTH_ALERT)] == [e.id for e in events]
    assert a.stats.handled == b.stats.handled == 3


async def test_replicas_of_one_group_share_its_events():
    bus = StubBus()
    by: dict[str, list[str]] = {"r1": [], "r2": []}

    def replica(name: str) -> StubConsumer:
        async def handle(event: Event) -> None:
            by[name].append(event.id)
            await asyncio.sleep(0.001)

        return consumer(bus, handle, name=name, concurrency=1)

    async with running(replica("r1"), replica("r2")):
        await bus.publish_many([factories.health_alert(f"c{i}") for i in range(6)])
        await bus.join(Channel.HEALTH_ALERT)
    assert len(by["r1"]) + len(by["r2"]) == 6
    assert not set(by["r1"]) & set(by["r2"]), "each event handled once per group"


async def test_a_failing_handler_is_redelivered_then_dead_lettered_and_join_raises_it():
    bus = StubBus()
    deliveries: list[Delivery | None] = []

    async def fail(event: Event) -> None:
        deliveries.append(current_delivery())
        raise RuntimeError(f"boom {event.id}")

    event = factories.health_alert()
    c = consumer(bus, fail, max_deliveries=3)
    async with running(c):
        entry = await bus.publish(event)
        with pytest.raises(RuntimeError, match=f"boom {event.id}"):
            await bus.join(Channel.HEALTH_ALERT)
        await bus.join(Channel.HEALTH_ALERT)  # raised once; nothing else failed since
    assert [(d.message_id, d.attempt, d.group, d.consumer) for d in deliveries] == [
        (entry, n, "g", "c1") for n in (1, 2, 3)
    ]
    [letter] = bus.dead_letters
    assert (letter.channel, letter.group, letter.message_id, letter.attempts) == (
        Channel.HEALTH_ALERT,
        "g",
        entry,
        3,
    )
    assert letter.event is not None and letter.event.id == event.id
    assert letter.error == f"RuntimeError: boom {event.id}"
    assert (c.stats.failed, c.stats.dead_lettered, c.stats.handled) == (3, 1, 0)


async def test_a_retry_that_succeeds_is_not_a_dead_letter():
    bus = StubBus()
    attempts: list[int] = []

    async def flaky(event: Event) -> None:
        delivery = current_delivery()
        assert delivery is not None
        attempts.append(delivery.attempt)
        if delivery.attempt < 2:
            raise RuntimeError("once")

    async with running(consumer(bus, flaky)):
        await bus.publish(factories.health_alert())
        await bus.join(Channel.HEALTH_ALERT)
    assert attempts == [1, 2]
    assert not bus.dead_letters


async def test_without_fail_fast_join_returns_and_the_letter_stays_inspectable():
    bus = StubBus()

    async def fail(event: Event) -> None:
        raise ValueError("nope")

    async with running(consumer(bus, fail, max_deliveries=1)):
        await bus.publish(factories.health_alert())
        await bus.join(Channel.HEALTH_ALERT, fail_fast=False)
    assert [d.error for d in bus.dead_letters_on(Channel.HEALTH_ALERT)] == ["ValueError: nope"]


async def test_a_payload_that_does_not_parse_is_dead_lettered_alone():
    bus = StubBus()
    handled: list[str] = []

    async def handle(event: Event) -> None:
        handled.append(event.id)

    event = factories.health_alert()
    async with running(consumer(bus, handle)):
        await bus.publish_raw(Channel.HEALTH_ALERT, "{not json")
        await bus.publish(event)
        await bus.join(Channel.HEALTH_ALERT, fail_fast=False)
    assert handled == [event.id]
    [letter] = bus.dead_letters
    assert letter.event is None and letter.attempts == 1


async def test_a_partition_key_handles_one_key_at_a_time_in_order():
    bus = StubBus()
    running_now: set[str] = set()
    order: list[str] = []

    async def handle(event: Event) -> None:
        key = event.subject.container_id or ""
        assert key not in running_now, "two events of one key at once"
        running_now.add(key)
        await asyncio.sleep(0.001)
        order.append(event.id)
        running_now.discard(key)

    events = [factories.health_alert("c1") for _ in range(4)]
    c = consumer(bus, handle, partition_key=lambda e: e.subject.container_id)
    async with running(c):
        await bus.publish_many(events)
        await bus.join(Channel.HEALTH_ALERT)
    assert order == [e.id for e in events]


async def test_a_handler_that_hangs_is_cancelled_after_the_timeout():
    bus = StubBus()

    async def hang(event: Event) -> None:
        await asyncio.sleep(60)

    c = consumer(bus, hang, max_deliveries=1, handler_timeout_s=0.01)
    async with running(c):
        await bus.publish(factories.health_alert())
        with pytest.raises(TimeoutError):
            await bus.join(Channel.HEALTH_ALERT)
    assert c.stats.timed_out == 1
    assert "timed out after 0.01s" in bus.dead_letters[0].error


async def test_groups_start_where_asked_and_publish_once_keeps_one():
    bus = StubBus()
    first = await bus.publish(factories.health_alert())
    assert await bus.create_group(Channel.HEALTH_ALERT, "late", "$")
    assert not await bus.create_group(Channel.HEALTH_ALERT, "late", "0")
    assert await bus.create_group(Channel.HEALTH_ALERT, "after-first", first)
    seen: list[str] = []

    async def handle(event: Event) -> None:
        seen.append(event.id)

    event = factories.health_alert()
    assert await bus.publish_once(event, "m", 60) is not None
    assert await bus.publish_once(event, "m", 60) is None
    late = consumer(bus, handle, group="late")
    after = consumer(bus, handle, group="after-first")
    async with running(late, after):
        await bus.join(Channel.HEALTH_ALERT)
    assert seen == [event.id, event.id]


async def test_join_without_a_running_consumer_says_which_group_is_behind():
    bus = StubBus()
    consumer(bus, lambda e: asyncio.sleep(0), group="idle")
    await bus.publish(factories.health_alert())
    with pytest.raises(TimeoutError, match="idle"):
        await bus.join(Channel.HEALTH_ALERT, timeout=0.01)

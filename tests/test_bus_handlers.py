"""What a bus handler can rely on: it knows which stream entry it handles, and a handler that
hangs is timed out, retried and finally dead-lettered."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest

from shared.bus import Bus
from shared.eventbus import Delivery, current_delivery
from shared.events import Channel
from tests.conftest import make_settings
from tests.support import factories
from tests.support.agents import EchoAgent
from tests.support.bus import dead_letters, fast_consumer, pending, running, wait_until

pytestmark = pytest.mark.redis


async def test_a_handler_knows_which_stream_entry_it_handles(redis):
    bus = Bus(redis)
    await bus.ensure_group(Channel.HEALTH_ALERT, "g")
    event = factories.health_alert()
    first_id = await bus.publish(event)
    twin_id = await bus.publish(event)  # a twin entry: the same event, the same idempotency key
    seen: list[Delivery | None] = []

    async def handler(ev):
        delivery = current_delivery()
        seen.append(delivery)
        await asyncio.sleep(0)  # handlers run concurrently: each still sees its own entry
        assert current_delivery() == delivery
        if delivery is not None and (delivery.message_id, delivery.attempt) == (first_id, 1):
            raise RuntimeError("fails once: the redelivery is the same entry")

    consumer = fast_consumer(bus, handler, name="c1")
    async with running(consumer):
        await wait_until(lambda: consumer.stats.handled == 2)
    channel = str(Channel.HEALTH_ALERT)
    assert sorted(seen, key=lambda d: (d.message_id, d.attempt)) == [
        Delivery(channel=channel, message_id=first_id, group="g", consumer="c1", attempt=1),
        Delivery(channel=channel, message_id=first_id, group="g", consumer="c1", attempt=2),
        Delivery(channel=channel, message_id=twin_id, group="g", consumer="c1", attempt=1),
    ]
    assert current_delivery() is None, "outside a handler there is no delivery"


async def test_a_hung_handler_is_timed_out_retried_and_dead_lettered(redis):
    bus = Bus(redis)
    await bus.ensure_group(Channel.HEALTH_ALERT, "g")
    cancelled: Counter[str] = Counter()

    async def handler(ev):
        try:
            await asyncio.Event().wait()  # hangs forever
        except asyncio.CancelledError:
            cancelled[ev.id] += 1
            raise

    consumer = fast_consumer(bus, handler, max_deliveries=3, handler_timeout_s=0.2)
    event = factories.health_alert()
    async with running(consumer):
        await bus.publish(event)
        await wait_until(lambda: consumer.stats.dead_lettered == 1, what="dead letter")
    assert cancelled[event.id] == 3, "each attempt's handler was cancelled"
    assert consumer.stats.timed_out == 3
    assert consumer.stats.failed == 3
    [(_, dead)] = await dead_letters(redis)
    assert dead["attempts"] == "3"
    assert "handler timed out after 0.2s" in dead["error"]
    assert json.loads(dead["event"])["id"] == event.id
    assert await pending(redis) == 0


async def test_a_handler_that_hung_once_succeeds_on_its_retry(redis):
    bus = Bus(redis)
    await bus.ensure_group(Channel.HEALTH_ALERT, "g")
    calls: Counter[str] = Counter()

    async def handler(ev):
        calls[ev.id] += 1
        if calls[ev.id] == 1:
            await asyncio.Event().wait()

    consumer = fast_consumer(bus, handler, handler_timeout_s=0.2)
    event = factories.health_alert()
    async with running(consumer):
        await bus.publish(event)
        await wait_until(lambda: consumer.stats.handled == 1)
    assert calls[event.id] == 2
    assert consumer.stats.timed_out == 1
    assert await dead_letters(redis) == []
    assert await pending(redis) == 0


async def test_an_agent_takes_its_handler_timeout_from_the_settings(redis, redis_url):
    settings = make_settings(redis_url, bus_handler_timeout_s=0.2, bus_max_deliveries=2)
    agent = EchoAgent(settings=settings, redis=redis, delay_s=3600)
    task = asyncio.create_task(agent.run())
    try:
        await wait_until(lambda: redis.exists(Channel.HEALTH_ALERT), what="group created")
        await Bus(redis).publish(factories.health_alert())
        await wait_until(lambda: dead_letters(redis), what="dead letter")
        [(_, dead)] = await dead_letters(redis)
        assert "handler timed out after 0.2s" in dead["error"]
        assert not task.done()
    finally:
        agent.stop()
        await asyncio.wait_for(task, 10)

"""The Redis Streams bus against a real redis-server."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter

import pytest

from shared import keys
from shared.bus import Bus
from shared.events import Channel, encode_event
from tests.support import factories
from tests.support.bus import dead_letters, fast_consumer, running, wait_until

pytestmark = pytest.mark.redis


async def pending_count(redis, group="g", channel=Channel.HEALTH_ALERT):
    info = await redis.xpending(channel, group)
    return info["pending"]


async def test_round_trip_validates_and_acks(redis):
    bus = Bus(redis)
    received = []

    async def handler(event):
        received.append(event)

    consumer = fast_consumer(bus, handler)
    sent = factories.health_alert()
    async with running(consumer):
        await wait_until(lambda: redis.exists(Channel.HEALTH_ALERT))  # group created
        await bus.publish(sent)
        await wait_until(lambda: received, what="delivery")
        await wait_until(lambda: consumer.stats.handled == 1)
    assert received == [sent]
    assert await pending_count(redis) == 0
    entries = await redis.xrange(Channel.HEALTH_ALERT)
    assert json.loads(entries[0][1]["event"])["id"] == sent.id


async def test_publish_also_notifies_live_viewers(redis):
    bus = Bus(redis)
    pubsub = redis.pubsub()
    await pubsub.subscribe(Channel.HEALTH_ALERT)
    await pubsub.get_message(timeout=1)  # subscription confirmation
    event = factories.health_alert()
    await bus.publish(event)
    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
    await pubsub.aclose()
    assert message is not None
    assert message["data"] == encode_event(event)


async def test_stream_is_bounded_by_approximate_maxlen(redis):
    bus = Bus(redis, maxlen=100)
    await bus.publish_many([factories.health_alert() for _ in range(1000)])
    length = await redis.xlen(Channel.HEALTH_ALERT)
    assert 100 <= length < 1000


async def test_two_consumers_of_a_group_split_the_work_without_duplicates(redis):
    bus = Bus(redis)
    seen: Counter[str] = Counter()
    by_consumer: Counter[str] = Counter()

    def handler_for(name):
        async def handler(event):
            await asyncio.sleep(0.001)
            seen[event.id] += 1
            by_consumer[name] += 1

        return handler

    await bus.ensure_group(Channel.HEALTH_ALERT, "g")
    events = [factories.health_alert(f"c{i % 7}") for i in range(400)]
    a = fast_consumer(bus, handler_for("a"), name="a", concurrency=4)
    b = fast_consumer(bus, handler_for("b"), name="b", concurrency=4)
    async with running(a), running(b):
        for chunk in range(0, 400, 50):
            await bus.publish_many(events[chunk : chunk + 50])
        await wait_until(lambda: len(seen) == 400, what="all events handled")
    assert set(seen) == {e.id for e in events}
    assert max(seen.values()) == 1, "an event was handled twice"
    assert by_consumer["a"] > 0 and by_consumer["b"] > 0
    assert await pending_count(redis) == 0


async def test_each_group_gets_every_event(redis):
    bus = Bus(redis)
    got = {"x": [], "y": []}

    def handler_for(group):
        async def handler(event):
            got[group].append(event.id)

        return handler

    x = fast_consumer(bus, handler_for("x"), group="x")
    y = fast_consumer(bus, handler_for("y"), group="y")
    for group in ("x", "y"):
        await bus.ensure_group(Channel.HEALTH_ALERT, group)
    events = [factories.health_alert() for _ in range(20)]
    async with running(x), running(y):
        await bus.publish_many(events)
        await wait_until(lambda: len(got["x"]) == 20 and len(got["y"]) == 20)
    assert sorted(got["x"]) == sorted(got["y"]) == sorted(e.id for e in events)


async def test_events_published_before_first_start_are_not_lost(redis):
    bus = Bus(redis)
    early = factories.health_alert()
    await bus.publish(early)  # no group exists yet
    received = []

    async def handler(event):
        received.append(event.id)

    async with running(fast_consumer(bus, handler)):
        await wait_until(lambda: received)
    assert received == [early.id]


async def test_poison_message_is_dead_lettered_after_max_deliveries(redis):
    bus = Bus(redis)
    attempts = Counter()

    async def handler(event):
        attempts[event.id] += 1
        raise RuntimeError("handler exploded on purpose")

    consumer = fast_consumer(bus, handler, max_deliveries=3)
    poison = factories.health_alert()
    await bus.ensure_group(Channel.HEALTH_ALERT, "g")
    async with running(consumer):
        await bus.publish(poison)
        await wait_until(lambda: redis.xlen(keys.DEAD_LETTER), what="dead letter")
    assert attempts[poison.id] == 3
    [(_, fields)] = await redis.xrange(keys.DEAD_LETTER)
    assert fields["channel"] == Channel.HEALTH_ALERT
    assert fields["attempts"] == "3"
    assert "RuntimeError: handler exploded on purpose" in fields["error"]
    assert json.loads(fields["event"])["id"] == poison.id
    assert await pending_count(redis) == 0
    assert consumer.stats.dead_lettered == 1


async def test_transient_failure_is_retried_and_then_acknowledged_not_dead_lettered(redis):
    bus = Bus(redis)
    attempts = Counter()

    async def handler(event):
        attempts[event.id] += 1
        if attempts[event.id] < 3:
            raise ConnectionError("flaky dependency")

    consumer = fast_consumer(bus, handler, max_deliveries=3)
    await bus.ensure_group(Channel.HEALTH_ALERT, "g")
    event = factories.health_alert()
    async with running(consumer):
        await bus.publish(event)
        await wait_until(lambda: consumer.stats.handled == 1)
    assert attempts[event.id] == 3
    assert await redis.xlen(keys.DEAD_LETTER) == 0
    assert await pending_count(redis) == 0
    # Each retry was a real redelivery: Redis counted the deliveries.
    assert consumer.stats.failed == 2


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"event": "{this is not json"}, "malformed JSON"),
        ({"event": '{"type": "health_alert", "id": "x"}'}, "invalid event"),
        ({"other": "field"}, "no 'event' field"),
    ],
)
async def test_malformed_messages_go_straight_to_dead_letter_with_reason(redis, fields, reason):
    bus = Bus(redis)
    handled = []

    async def handler(event):
        handled.append(event)

    consumer = fast_consumer(bus, handler)
    await bus.ensure_group(Channel.HEALTH_ALERT, "g")
    good = factories.health_alert()
    async with running(consumer):
        await redis.xadd(Channel.HEALTH_ALERT, fields)
        await bus.publish(good)
        await wait_until(lambda: handled and consumer.stats.invalid == 1)
    [(_, dead)] = await redis.xrange(keys.DEAD_LETTER)
    assert reason in dead["error"]
    assert dead["attempts"] == "1"
    assert handled == [good], "the bad message must not stop the good one behind it"
    assert await pending_count(redis) == 0


async def test_concurrency_is_bounded_and_a_slow_handler_does_not_hold_back_others(redis):
    bus = Bus(redis)
    active = 0
    peak = 0
    done: list[str] = []
    release_slow = asyncio.Event()

    async def handler(event):
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            if event.subject.container_id == "slow":
                await release_slow.wait()
            else:
                await asyncio.sleep(0.01)
            done.append(event.subject.container_id)
        finally:
            active -= 1

    consumer = fast_consumer(bus, handler, concurrency=4)
    await bus.ensure_group(Channel.HEALTH_ALERT, "g")
    async with running(consumer):
        await bus.publish(factories.health_alert("slow"))
        await bus.publish_many([factories.health_alert(f"fast{i}") for i in range(30)])
        await wait_until(lambda: len(done) == 30, what="fast events done while slow blocks")
        assert "slow" not in done
        release_slow.set()
        await wait_until(lambda: len(done) == 31)
    assert peak == 4


async def test_partition_key_serialises_events_of_one_container(redis):
    bus = Bus(redis)
    active: Counter[str] = Counter()
    overlap = []
    order: list[int] = []

    async def handler(event):
        key = event.subject.container_id
        active[key] += 1
        if active[key] > 1:
            overlap.append(key)
        await asyncio.sleep(0.005)
        if key == "same":
            order.append(event.payload.restart_count)
        active[key] -= 1

    consumer = fast_consumer(
        bus, handler, concurrency=8, partition_key=lambda e: e.subject.container_id
    )
    await bus.ensure_group(Channel.HEALTH_ALERT, "g")
    async with running(consumer):
        await bus.publish_many([factories.health_alert("same", restart_count=i) for i in range(20)])
        await wait_until(lambda: len(order) == 20)
    assert overlap == []
    assert order == list(range(20))


@pytest.mark.parametrize(
    ("fields", "reason", "shown"),
    [
        ({"event": b"\xff\xfe not UTF-8"}, "not valid UTF-8", "\\xff\\xfe not UTF-8"),
        ({b"ev\xffent": b"{}"}, "no 'event' field", "ev\\xffent"),
    ],
    ids=["value", "field-name"],
)
async def test_an_entry_that_is_not_utf8_is_dead_lettered_and_the_rest_of_its_batch_handled(
    redis, fields, reason, shown
):
    bus = Bus(redis)
    handled = []

    async def handler(event):
        handled.append(event.id)

    await bus.ensure_group(Channel.HEALTH_ALERT, "g")
    first, last = factories.health_alert(), factories.health_alert()
    await bus.publish(first)
    bad_id = await redis.xadd(Channel.HEALTH_ALERT, fields)
    await bus.publish(last)
    consumer = fast_consumer(bus, handler)  # starts after all three: they arrive in one batch
    async with running(consumer) as task:
        await wait_until(lambda: consumer.stats.handled == 2 and consumer.stats.dead_lettered == 1)
        later = factories.health_alert()
        await bus.publish(later)
        await wait_until(lambda: consumer.stats.handled == 3, what="an event after the bad one")
        assert not task.done()
    assert handled == [first.id, last.id, later.id]
    [(_, dead)] = await dead_letters(redis)
    assert dead["message_id"] == bad_id
    assert reason in dead["error"]
    assert shown in dead["event"], "the bad bytes are kept, escaped, so the letter stays readable"
    assert consumer.stats.invalid == 1
    assert await pending_count(redis) == 0


async def test_a_huge_entry_is_dead_lettered_as_one_bounded_excerpt_with_size_and_hash(redis):
    bus = Bus(redis)
    groups = ("analyzer", "alert", "metrics")
    handled = []

    async def handler(event):
        handled.append(event)

    consumers = [fast_consumer(bus, handler, name=f"{g}-1", group=g) for g in groups]
    for group in groups:
        await bus.ensure_group(Channel.HEALTH_ALERT, group)
    huge = b'{"type": "health_alert", "junk": "' + b"x" * 5_000_000  # 5 MB, JSON never closed
    await redis.xadd(Channel.HEALTH_ALERT, {"event": huge})
    async with running(consumers[0]), running(consumers[1]), running(consumers[2]):
        await wait_until(
            lambda: all(c.stats.dead_lettered == 1 for c in consumers), what="three dead letters"
        )
    letters = await dead_letters(redis)
    assert sorted(f["group"] for _, f in letters) == sorted(groups)
    for _, dead in letters:
        assert "malformed JSON" in dead["error"]
        assert dead["size"] == str(len(huge))
        assert dead["sha256"] == hashlib.sha256(huge).hexdigest()
    holders = [(i, f) for i, f in letters if f["event"]]
    assert len(holders) == 1, "the excerpt is stored once, not once per group"
    holder_id, holder = holders[0]
    assert holder["truncated"] == "true"
    assert len(holder["event"].encode()) == 64 * 1024
    assert huge.startswith(holder["event"].encode())
    assert [f["excerpt_in"] for i, f in letters if i != holder_id] == [holder_id, holder_id]
    assert await redis.memory_usage(keys.DEAD_LETTER) < 256 * 1024
    assert handled == []


async def test_a_small_dead_letter_keeps_the_whole_payload_inline(redis):
    bus = Bus(redis)
    await bus.ensure_group(Channel.HEALTH_ALERT, "g")
    message_id = await redis.xadd(Channel.HEALTH_ALERT, {"event": "{bad"})
    await bus.dead_letter(
        channel=Channel.HEALTH_ALERT,
        group="g",
        consumer="c1",
        message_id=message_id,
        raw="{bad",
        error="malformed JSON",
        attempts=1,
    )
    [(_, dead)] = await dead_letters(redis)
    assert dead["event"] == "{bad"
    assert dead["truncated"] == "false"
    assert dead["size"] == "4"
    assert dead["sha256"] == hashlib.sha256(b"{bad").hexdigest()


async def test_a_dead_letter_excerpt_is_cut_on_a_character_boundary(redis):
    bus = Bus(redis, dead_letter_excerpt_bytes=256)
    payload = "é" * 200  # 400 bytes: the limit falls in the middle of a character
    await bus.dead_letter(
        channel=Channel.HEALTH_ALERT,
        group="g",
        consumer="c1",
        message_id="1-0",
        raw=payload,
        error="malformed JSON",
        attempts=1,
    )
    [(_, dead)] = await dead_letters(redis)
    assert dead["event"] == "é" * 128
    assert dead["truncated"] == "true"
    assert dead["size"] == "400"

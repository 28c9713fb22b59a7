"""Helpers to run consumers in tests and wait for conditions without fixed sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from shared import keys
from shared.consumer import Consumer
from shared.events import Channel


async def wait_until(
    condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")


@contextlib.asynccontextmanager
async def running(consumer: Consumer) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(consumer.run())
    try:
        yield task
    finally:
        consumer.stop()
        await asyncio.wait_for(task, timeout=30)


Handler = Callable[[Any], Awaitable[None]]


def fast_consumer(
    bus: Any, handler: Handler, name: str = "c1", group: str = "g", **kw: Any
) -> Consumer:
    """A consumer on hemostat:health_alert with timings shrunk for tests."""
    opts: dict[str, Any] = {
        "group": group,
        "name": name,
        "channels": [Channel.HEALTH_ALERT],
        "handler": handler,
        "block_ms": 50,
        "claim_idle_ms": 500,
        "reclaim_interval_s": 0.1,
        "retry_backoff_s": 0.02,
        "max_deliveries": 3,
        "grace_s": 5,
    }
    consumer: Consumer = bus.consumer(**(opts | kw))
    return consumer


async def blocked_readers(redis: Any) -> int:
    """Clients blocked in XREADGROUP right now: a loss that lands then is seen by the blocked read
    itself ("UNBLOCKED ..."), not by the next one."""
    return sum(
        1 for c in await redis.client_list() if c["cmd"] == "xreadgroup" and "b" in c["flags"]
    )


async def dead_letters(redis: Any) -> list[tuple[str, dict[str, str]]]:
    entries: list[tuple[str, dict[str, str]]] = await redis.xrange(keys.DEAD_LETTER)
    return entries


async def pending(redis: Any, group: str = "g", channel: str = Channel.HEALTH_ALERT) -> int:
    count: int = (await redis.xpending(channel, group))["pending"]
    return count


async def all_acked(redis: Any, group: str = "g", channel: str = Channel.HEALTH_ALERT) -> bool:
    return await pending(redis, group, channel) == 0


async def owner_of(redis: Any, message_id: str, group: str = "g") -> str | None:
    """The consumer holding a pending message (None when it is not pending)."""
    entries = await redis.xpending_range(Channel.HEALTH_ALERT, group, message_id, message_id, 1)
    return str(entries[0]["consumer"]) if entries else None

"""A consumer in its own OS process, for tests that kill it (`python -m tests.support.consumer_proc
URL NAME`). Its handler announces each event on stdout and then hangs, so it never acknowledges."""

from __future__ import annotations

import asyncio
import sys

from redis.asyncio import Redis

from shared.bus import Bus
from shared.events import Channel


async def main(url: str, name: str) -> None:
    redis = Redis.from_url(url, decode_responses=True)
    bus = Bus(redis)

    async def handler(event: object) -> None:
        print(f"got {getattr(event, 'id', '?')}", flush=True)
        await asyncio.Event().wait()

    consumer = bus.consumer(
        group="g", name=name, channels=[Channel.HEALTH_ALERT], handler=handler, block_ms=50
    )
    await consumer.run()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))

"""A consumer in its own OS process, for tests that kill or freeze it (`python -m
tests.support.consumer_proc URL NAME [CLAIM_IDLE_MS]`). Its handler announces each event on stdout
and then hangs, so it never acknowledges. Logs go to stderr as JSON."""

from __future__ import annotations

import asyncio
import sys

from redis.asyncio import Redis

from shared.bus import Bus
from shared.events import Channel
from shared.log import configure_logging
from shared.settings import LogFormat


async def main(url: str, name: str, claim_idle_ms: int) -> None:
    redis = Redis.from_url(url, decode_responses=True)
    bus = Bus(redis)

    async def handler(event: object) -> None:
        print(f"got {getattr(event, 'id', '?')}", flush=True)
        await asyncio.Event().wait()

    consumer = bus.consumer(
        group="g",
        name=name,
        channels=[Channel.HEALTH_ALERT],
        handler=handler,
        block_ms=50,
        claim_idle_ms=claim_idle_ms,
        reclaim_interval_s=min(5.0, claim_idle_ms / 10_000),
    )
    await consumer.run()


if __name__ == "__main__":
    configure_logging("INFO", LogFormat.JSON, stream=sys.stderr)
    idle = int(sys.argv[3]) if len(sys.argv) > 3 else 30_000
    asyncio.run(main(sys.argv[1], sys.argv[2], idle))

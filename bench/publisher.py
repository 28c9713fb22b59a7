"""Publisher process for the bus benchmark: `python -m bench.publisher URL COUNT`."""

from __future__ import annotations

import asyncio
import sys

from redis.asyncio import Redis

from shared.bus import Bus
from tests.support import factories


async def main(url: str, count: int, batch: int = 100) -> None:
    redis = Redis.from_url(url, decode_responses=True)
    bus = Bus(redis)
    events = [factories.health_alert(f"c{i % 50}") for i in range(count)]
    for start in range(0, count, batch):
        await bus.publish_many(events[start : start + batch])
    await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))

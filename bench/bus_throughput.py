"""Bus throughput (issue: foundation): publish → consume → handler → ack, with envelope
validation, one consumer process, against a local Redis. Target >= 5,000 events/s. Baseline in
the same run: the raw Redis XADD rate (pipelined), and our ratio to it."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time

from redis.asyncio import Redis

from bench.common import header, private_redis, verdict
from shared.bus import Bus
from shared.events import Channel, encode_event
from tests.support import factories

EVENTS = 30_000


def raw_xadd_rate(url: str, port: int, payload: str, n: int = 100_000) -> tuple[float, str]:
    """Raw Redis XADD rate with the same payload, pipelined (redis-benchmark when present)."""
    if shutil.which("redis-benchmark"):
        out = subprocess.run(
            [
                "redis-benchmark",
                "-p",
                str(port),
                "-n",
                str(n),
                "-P",
                "100",
                "-q",
                "XADD",
                "bench:raw",
                "MAXLEN",
                "~",
                "100000",
                "*",
                "event",
                payload,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        # e.g. "XADD bench:raw ...: 312500.00 requests per second, p50=..."
        rate = float(out.split("requests per second")[0].rsplit(":", 1)[1].strip().split()[-1])
        return rate, "redis-benchmark -P 100"
    import redis as sync_redis

    client = sync_redis.Redis.from_url(url)
    started = time.perf_counter()
    for _ in range(n // 1000):
        pipe = client.pipeline(transaction=False)
        for _ in range(1000):
            pipe.xadd("bench:raw", {"event": payload}, maxlen=100_000)
        pipe.execute()
    return n / (time.perf_counter() - started), "redis-py pipeline of 1000"


async def consume(url: str, count: int) -> float:
    redis = Redis.from_url(url, decode_responses=True)
    bus = Bus(redis)
    await bus.ensure_group(Channel.HEALTH_ALERT, "bench")
    handled = 0
    first: float | None = None
    done = asyncio.Event()

    async def handler(event: object) -> None:
        nonlocal handled, first
        if first is None:
            first = time.perf_counter()
        handled += 1
        if handled == count:
            done.set()

    consumer = bus.consumer(
        group="bench", name="c1", channels=[Channel.HEALTH_ALERT], handler=handler
    )
    task = asyncio.create_task(consumer.run())
    started = time.perf_counter()
    publisher = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.publisher", url, str(count)
    )
    await asyncio.wait_for(done.wait(), timeout=300)
    while (await redis.xpending(Channel.HEALTH_ALERT, "bench"))["pending"]:  # noqa: ASYNC110
        await asyncio.sleep(0.001)  # acks are batched: poll Redis, the source of truth
    finished = time.perf_counter()
    await publisher.wait()
    consumer.stop()
    await task
    await redis.aclose()
    return count / (finished - started)


def run() -> bool:
    header(f"bus throughput: publish -> consume -> validate -> handle -> ack ({EVENTS:,} events)")
    payload = encode_event(factories.health_alert())
    with private_redis() as server:
        raw, how = raw_xadd_rate(server.url, server.port, payload)
        ours = asyncio.run(consume(server.url, EVENTS))
    print(f"   event size: {len(payload)} bytes")
    print(f"   raw Redis XADD ({how}): {raw:,.0f} /s")
    print(f"   HemoStat bus end to end: {ours:,.0f} events/s (ratio to raw XADD: {ours / raw:.3f})")
    return verdict("bus throughput", ours, 5_000, True, "events/s")


if __name__ == "__main__":
    sys.exit(0 if run() else 1)

"""Metrics exporter (issue: metrics): keeps up with 5,000 events/s without growing consumer lag,
and a scrape with 500 containers takes <= 100 ms. The exporter runs as its own process."""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time

import httpx
import redis as sync_redis
from redis.asyncio import Redis

from bench.common import agent_env, header, percentile, private_redis, verdict
from shared import keys
from shared.bus import Bus
from shared.container_state import ContainerSnapshot, write_snapshots
from shared.events import Channel, RemediationStatus, Severity
from shared.redis_server import free_port
from tests.support import factories

RATE = 5000  # events per second offered
SECONDS = 20
CONTAINERS = 500


def _lag(r: sync_redis.Redis) -> int:
    total = 0
    for channel in (Channel.HEALTH_ALERT, Channel.REMEDIATION_COMPLETE):
        for group in r.xinfo_groups(channel):  # type: ignore[union-attr]
            if group["name"] == "metrics":
                total += int(group.get("lag") or 0) + int(group.get("pending") or 0)
    return total


async def _offer(url: str, r: sync_redis.Redis) -> list[tuple[float, int]]:
    redis = Redis.from_url(url, decode_responses=True)
    bus = Bus(redis)
    batch = [factories.health_alert(f"c{i % 50}") for i in range(250)] + [
        factories.remediation_complete(f"c{i % 50}", RemediationStatus.FAILED, Severity.WARNING)
        for i in range(250)
    ]
    lags: list[tuple[float, int]] = []
    started = time.perf_counter()
    for tick in range(SECONDS * 10):  # 500 events every 100 ms = 5,000/s
        await bus.publish_many(batch)
        if tick % 10 == 9:
            lags.append((time.perf_counter() - started, _lag(r)))
        delay = started + (tick + 1) * 0.1 - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
    await redis.aclose()
    return lags


def run() -> bool:
    header(
        f"Metrics exporter: {RATE:,} events/s for {SECONDS}s; scrape with {CONTAINERS} containers"
    )
    with private_redis() as server:
        r = sync_redis.Redis.from_url(server.url, decode_responses=True)
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "agents.cli", "agent", "metrics"],
            env=agent_env(
                server.url, HEMOSTAT_METRICS_PORT=str(port), HEMOSTAT_METRICS_HOST="127.0.0.1"
            ),
        )
        try:
            deadline = time.monotonic() + 30
            while not r.exists(Channel.REMEDIATION_COMPLETE) or not list(
                r.scan_iter(f"{keys.HEARTBEAT}metrics:*")
            ):
                if time.monotonic() > deadline:
                    raise TimeoutError("exporter did not start")
                time.sleep(0.1)
            offered_at = time.perf_counter()
            lags = asyncio.run(_offer(server.url, r))
            offered = time.perf_counter() - offered_at
            drain_started = time.perf_counter()
            while _lag(r) > 0 and time.perf_counter() - drain_started < 60:
                time.sleep(0.01)
            drained = time.perf_counter() - drain_started
            for at, lag in lags:
                print(f"   t={at:5.1f}s lag {lag:,} events")
            rate = RATE * SECONDS / offered
            print(f"   offered {RATE * SECONDS:,} events in {offered:.1f}s ({rate:,.0f}/s); ")
            print(f"   lag back to 0 {drained:.2f}s after the last publish")
            keeps_up = max(lag for _, lag in lags[len(lags) // 2 :]) <= RATE and drained < 5
            print(
                f"   keeps up without growing lag: {'PASS' if keeps_up else 'FAIL'} "
                f"(max lag in the second half {max(lag for _, lag in lags[len(lags) // 2 :]):,})"
            )

            asyncio.run(_seed(server.url))
            timings = []
            with httpx.Client() as http:
                for _ in range(30):
                    started = time.perf_counter()
                    body = http.get(f"http://127.0.0.1:{port}/metrics").text
                    timings.append(time.perf_counter() - started)
            series = body.count("hemostat_container_cpu_percent{")
            median = statistics.median(timings) * 1000
            p95 = percentile(timings, 0.95) * 1000
            print(f"   scrape: {series} containers, {len(body):,} bytes, median {median:.1f} ms")
            print(f"   scrape p95 {p95:.1f} ms over {len(timings)} scrapes")
        finally:
            proc.terminate()
            proc.wait(30)
            r.close()
    scrape_ok = verdict("scrape p95", percentile(timings, 0.95) * 1000, 100, False, "ms")
    return keeps_up and scrape_ok and series == CONTAINERS


async def _seed(url: str) -> None:
    redis = Redis.from_url(url, decode_responses=True)
    now = time.time()
    await write_snapshots(
        redis,
        [
            ContainerSnapshot(
                id=f"{i:064x}",
                name=f"svc-{i}",
                host="h1",
                state="running",
                health="healthy",
                compose_service=f"svc{i % 20}",
                compose_project="bench",
                cpu_percent=i % 100,
                cpu_cores=0.1,
                memory_percent=50.0,
                memory_working_set=10_000_000,
                memory_limit=20_000_000,
                restart_count=i % 3,
                updated_at=now,
            )
            for i in range(CONTAINERS)
        ],
        ttl_s=600,
    )
    await redis.aclose()


if __name__ == "__main__":
    sys.exit(0 if run() else 1)

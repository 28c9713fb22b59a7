"""Monitor poll cycle for 100 running containers (issue: Monitor): target <= 1 s with direct
cgroup reads. Also reported: the stats-API path with bounded concurrency, and the naive baseline
— one blocking `stats(stream=False)` per container in sequence — measured on a subset and
extrapolated, with our ratio to it."""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

import docker
from redis.asyncio import Redis

from agents.monitor.agent import MonitorAgent
from agents.monitor.cgroups import CgroupReader
from bench.common import containers, header, private_redis, verdict
from shared.docker_api import DockerGateway
from shared.settings import Settings, StatsSource
from tests.support.services import ensure_test_image

COUNT = 100
NAIVE_SUBSET = 10


async def time_polls(
    url: str, source: StatsSource, rounds: int = 5
) -> tuple[float, list[float], int]:
    settings = Settings(_env_file=None, redis_url=url, monitor_stats_source=source, webhook_port=0)  # type: ignore[call-arg]
    redis = Redis.from_url(url, decode_responses=True)
    client = docker.from_env(timeout=120)
    agent = MonitorAgent(
        settings=settings,
        redis=redis,
        docker=DockerGateway(client, concurrency=settings.monitor_stats_concurrency),
        cgroups=CgroupReader() if source is not StatsSource.API else None,
    )
    started = time.perf_counter()
    await agent.poll()  # cold: inspects every container once
    cold = time.perf_counter() - started
    warm = []
    for _ in range(rounds):
        started = time.perf_counter()
        await agent.poll()
        warm.append(time.perf_counter() - started)
    sampled = sum(1 for t in agent.tracker.tracks.values() if t.sample is not None)
    await redis.aclose()
    agent.docker.close()
    return cold, warm, sampled


def run() -> bool:
    header(f"Monitor poll cycle with {COUNT} running containers")
    client = docker.from_env(timeout=120)
    image = ensure_test_image(client)
    if not CgroupReader().available:
        print("   cgroup filesystem not visible here: the direct path cannot be measured")
        return False
    with private_redis() as server, containers(client, image, COUNT, ["sleep", "3600"]) as made:
        print(f"   {len(made)} containers running")
        cold, warm, sampled = asyncio.run(time_polls(server.url, StatsSource.CGROUP))
        ours = statistics.median(warm)
        print(
            f"   cgroup path: cold {cold:.3f}s (first poll inspects all), warm median {ours:.3f}s "
            f"(min {min(warm):.3f}, max {max(warm):.3f}), containers sampled {sampled}"
        )
        cold_api, warm_api, sampled_api = asyncio.run(
            time_polls(server.url, StatsSource.API, rounds=2)
        )
        print(
            f"   API path (one-shot stats, concurrency 16): cold {cold_api:.3f}s, "
            f"warm median {statistics.median(warm_api):.3f}s, sampled {sampled_api}"
        )
        subset = made[:NAIVE_SUBSET]
        started = time.perf_counter()
        for container in subset:
            client.api.stats(container.id, stream=False)
        naive_each = (time.perf_counter() - started) / len(subset)
        naive = naive_each * COUNT
        print(
            f"   naive sequential stats(stream=False): {naive_each:.3f}s per container, "
            f"extrapolated {naive:.1f}s for {COUNT} (measured on {len(subset)})"
        )
        print(
            f"   speed-up of the cgroup poll over naive: {naive / ours:.0f}x "
            f"(ratio {ours / naive:.4f}); API path: {naive / statistics.median(warm_api):.0f}x"
        )
    client.close()
    return verdict("poll cycle (cgroup)", ours, 1.0, False, "s")


if __name__ == "__main__":
    sys.exit(0 if run() else 1)

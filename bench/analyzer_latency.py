"""Analyzer rule-path decision latency (issue: Analyzer): alert in -> decision published.
- in-process: `handle()` on a real Redis (incident upsert, runbook match, rules, publish); target
  p99 <= 10 ms;
- end to end through Redis: the Analyzer as its own process; from the alert's stream entry to the
  decision's stream entry (both ids are Redis's clock); target p95 <= 50 ms."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import redis as sync_redis
from redis.asyncio import Redis

from agents.analyzer.agent import AnalyzerAgent
from bench.common import agent_env, header, percentile, private_redis, summary_ms, verdict
from shared import keys
from shared.bus import Bus
from shared.events import AlertKind, Channel, parse_event
from shared.runbooks import load_runbooks
from shared.settings import Settings
from tests.support import factories

KINDS = [
    AlertKind.CRASH,
    AlertKind.UNHEALTHY,
    AlertKind.OOM_KILLED,
    AlertKind.HIGH_CPU,
    AlertKind.ANOMALY,
    AlertKind.RESTART_LOOP,
]
RUNBOOKS = Path(__file__).parent.parent / "runbooks"


def alert(i: int):  # type: ignore[no-untyped-def]
    return factories.health_alert(
        f"c{i % 50}", KINDS[i % len(KINDS)], exit_code=1, thresholds={"sustained_samples": 3.0}
    )


async def in_process(url: str, n: int = 3000) -> list[float]:
    redis = Redis.from_url(url, decode_responses=True)
    settings = Settings(_env_file=None, redis_url=url, llm_provider="none")  # type: ignore[call-arg]
    agent = AnalyzerAgent(settings=settings, redis=redis, runbooks=load_runbooks(RUNBOOKS))
    for i in range(200):  # warm-up: incidents exist, code paths are hot
        await agent.handle(alert(i))
    timings = []
    for i in range(n):
        event = alert(i)
        started = time.perf_counter()
        await agent.handle(event)
        timings.append(time.perf_counter() - started)
    await redis.aclose()
    return timings


def end_to_end(url: str, n: int = 500) -> list[float]:
    r = sync_redis.Redis.from_url(url, decode_responses=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "agents.cli", "agent", "analyzer"],
        env=agent_env(url, HEMOSTAT_LLM_PROVIDER="none"),
    )
    try:
        deadline = time.monotonic() + 30
        while not list(r.scan_iter(f"{keys.HEARTBEAT}analyzer:*")):
            if time.monotonic() > deadline:
                raise TimeoutError("analyzer did not start")
            time.sleep(0.1)
        bus = Bus(Redis.from_url(url, decode_responses=True))
        sent: dict[str, int] = {}
        loop = asyncio.new_event_loop()
        last = {Channel.REMEDIATION_NEEDED.value: "$", Channel.FALSE_ALARM.value: "$"}
        latencies = []
        for i in range(n):
            event = alert(i + 10_000)
            stream_id = loop.run_until_complete(bus.publish(event))
            sent[event.id] = int(stream_id.split("-")[0])
            got = None
            while got is None:
                reply = r.xread(last, block=2000)
                if not reply:
                    raise TimeoutError("no decision")
                for stream, entries in reply:
                    for entry_id, fields in entries:
                        last[stream] = entry_id
                        decision = parse_event(fields["event"])
                        if decision.causation_id == event.id:
                            got = int(entry_id.split("-")[0]) - sent[event.id]
            latencies.append(got / 1000)
        loop.run_until_complete(bus.redis.aclose())
        loop.close()
        return latencies
    finally:
        proc.terminate()
        proc.wait(30)
        r.close()


def run() -> bool:
    header("Analyzer rule-path decision latency (alert in -> decision published)")
    with private_redis() as server:
        local = asyncio.run(in_process(server.url))
        print(f"   in-process handle(): {summary_ms(local)}")
        remote = end_to_end(server.url)
        print(f"   end to end via Redis (own process, stream id to id): {summary_ms(remote)}")
    ok = verdict("in-process p99", percentile(local, 0.99) * 1000, 10, False, "ms")
    return verdict("end-to-end p95", percentile(remote, 0.95) * 1000, 50, False, "ms") and ok


if __name__ == "__main__":
    sys.exit(0 if run() else 1)

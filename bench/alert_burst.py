"""Alert agent burst (issue: Alert): 1,000 events at once with Slack, Discord and ntfy configured
(local endpoints). Every event must be delivered or deduplicated as designed — none lost — and the
agent's throughput is reported. The agent runs as its own process. Storm bundling is off here
(HEMOSTAT_ALERT_STORM_THRESHOLD=0): this measures the per-event delivery path; 150 containers
failing at once would otherwise be one storm message per channel, which test_alert_storms proves."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter

import redis as sync_redis
from redis.asyncio import Redis

from bench.common import agent_env, header, private_redis
from shared import keys
from shared.bus import Bus
from shared.events import RemediationStatus, Severity
from tests.support import factories
from tests.support.webhooks import Receiver

EVENTS = 1000
CONTAINERS = 150  # 150 containers failing repeatedly + 100 approval requests
APPROVALS = 100


def events() -> list:  # type: ignore[type-arg]
    out = []
    for i in range(EVENTS - APPROVALS):
        out.append(
            factories.remediation_complete(
                f"c{i % CONTAINERS}", RemediationStatus.FAILED, Severity.CRITICAL
            )
        )
    for i in range(APPROVALS):
        out.append(factories.approval_request(f"a{i}", f"p-{i}"))
    return out


def run() -> bool:
    header(f"Alert agent: burst of {EVENTS} events, 3 channels (local Slack/Discord/ntfy)")
    receiver = Receiver().start()
    with private_redis() as server:
        env = agent_env(
            server.url,
            SLACK_WEBHOOK_URL=receiver.url("/slack"),
            DISCORD_WEBHOOK_URL=receiver.url("/discord"),
            NTFY_URL=receiver.url("/ntfy"),
            NTFY_TOPIC="bench",
            HEMOSTAT_ALERT_STORM_THRESHOLD="0",
        )
        proc = subprocess.Popen([sys.executable, "-m", "agents.cli", "agent", "alert"], env=env)
        r = sync_redis.Redis.from_url(server.url, decode_responses=True)
        try:
            deadline = time.monotonic() + 30
            while not list(r.scan_iter(f"{keys.HEARTBEAT}alert:*")):
                if time.monotonic() > deadline:
                    raise TimeoutError("alert agent did not start")
                time.sleep(0.1)
            batch = events()
            started = time.perf_counter()
            asyncio.run(_publish(server.url, batch))
            # 3 deliveries per delivered event, one "deduplicated" row per suppressed event
            expected_rows = 3 * (CONTAINERS + APPROVALS) + (EVENTS - CONTAINERS - APPROVALS)
            while r.xlen(keys.HISTORY) < EVENTS or r.xlen(keys.NOTIFICATIONS) < expected_rows:
                if time.perf_counter() - started > 300:
                    break
                time.sleep(0.02)
            elapsed = time.perf_counter() - started
            rows = [f for _, f in r.xrange(keys.NOTIFICATIONS)]
            history = r.xlen(keys.HISTORY)
        finally:
            proc.terminate()
            proc.wait(30)
            r.close()
    receiver.stop()
    statuses = Counter(row["status"] for row in rows)
    per_channel = Counter(row["channel"] for row in rows if row["status"] == "sent")
    delivered_events = {row["event_id"] for row in rows if row["status"] == "sent"}
    deduplicated = len({row["event_id"] for row in rows if row["status"] == "deduplicated"})
    accounted = len(delivered_events) + deduplicated
    print(f"   events in history: {history}/{EVENTS}")
    print(f"   deliveries: {dict(statuses)}; sent per channel: {dict(per_channel)}")
    print(
        f"   events delivered: {len(delivered_events)}, deduplicated: {deduplicated}, "
        f"accounted for: {accounted}/{EVENTS} (expected {CONTAINERS + APPROVALS} delivered)"
    )
    print(f"   receiver got {len(receiver.hits)} requests")
    print(
        f"   elapsed {elapsed:.2f}s -> {EVENTS / elapsed:,.0f} events/s, "
        f"{statuses['sent'] / elapsed:,.0f} deliveries/s"
    )
    ok = (
        accounted == EVENTS
        and len(delivered_events) == CONTAINERS + APPROVALS
        and statuses.get("failed", 0) == 0
        and history == EVENTS
    )
    print(f"   every event delivered or deduplicated, none lost: {'PASS' if ok else 'FAIL'}")
    return ok


async def _publish(url: str, batch: list) -> None:  # type: ignore[type-arg]
    redis = Redis.from_url(url, decode_responses=True)
    bus = Bus(redis)
    for start in range(0, len(batch), 100):
        await bus.publish_many(batch[start : start + 100])
    await redis.aclose()


if __name__ == "__main__":
    sys.exit(0 if run() else 1)

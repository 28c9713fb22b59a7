"""Redis Sentinel failover and the price of WAIT (issue: fleet mode).

- failover: a primary, a replica and three sentinels on loopback (down-after-milliseconds 1000,
  quorum 2); the Monitor's webhook and the Analyzer in-process on the Sentinel settings, WAIT
  off; a sender posts alerts continuously the way Alertmanager does (a refused alert is sent
  again). SIGKILL the primary; from then: the sentinels naming the replica primary, the first
  alert acknowledged again (sent after the kill), the first decision published (its stream id:
  Redis's clock, the same host's). Target: the next decision within 10 s of the kill.
- the price of WAIT: the webhook's publish (marker + event, one script) against a primary with
  one replica, without and with WAIT 1; target: WAIT adds <= 5 ms at p99 on loopback.
- what WAIT buys: the replica stops receiving (SIGSTOP, its link cut by the primary), alerts are
  published the webhook's way, the primary is SIGKILLed and the replica promoted: how many
  acknowledged alerts the new primary lacks. Target: none with WAIT.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import header, percentile, summary_ms, verdict
from shared.bus import Bus
from shared.errors import NotReplicated
from shared.events import Channel, parse_event
from shared.redis_client import connect
from shared.redis_server import RedisServer
from shared.replication import Replication
from shared.settings import Settings
from tests.support import factories
from tests.support.alert_flow import (
    Sender,
    all_decided,
    decided_at_least,
    decided_keys,
    decision_key,
    first_decision_after,
    running_agents,
    webhook_settings,
)
from tests.support.bus import wait_until
from tests.support.sentinel import SentinelGroup, sentinel_group

PASSWORD = "bench-data-pw-4f1e"
SENTINEL_PASSWORD = "bench-sentinel-pw-77c2"
TRIALS = 3


def _settings(group: SentinelGroup, **kw: Any) -> Settings:
    base: dict[str, Any] = {
        "instance": "bench-1",
        "host_name": "bench-host",
        "llm_provider": "none",
        "bus_block_ms": 100,
        "bus_claim_idle_ms": 1_000,
        "bus_reclaim_interval_s": 0.2,
        "heartbeat_interval_s": 0.5,
    }
    return Settings(_env_file=None, **(base | group.settings() | kw))


async def _failover_trial(group: SentinelGroup) -> dict[str, float]:
    settings = _settings(group, **webhook_settings())
    async with running_agents(settings) as (_, _, tasks):
        redis = connect(settings)
        sender = Sender(settings.webhook_port)
        sending = asyncio.create_task(sender.run())
        try:
            await wait_until(lambda: len(sender.acked) >= 50, timeout=60, what="warm-up")
            await wait_until(lambda: decided_at_least(redis, 25), timeout=60, what="decisions")
            await asyncio.to_thread(group.primary.kill)
            killed_ms, killed = int(time.time() * 1000), time.monotonic()
            await asyncio.to_thread(group.wait_promoted, group.replicas[0])
            promoted = time.monotonic()
            await wait_until(lambda: sender.acked_since(killed) >= 20, timeout=60, what="acks")
        finally:
            sender.stop.set()
            await asyncio.wait_for(sending, 60)
        acked = {decision_key(body) for body in sender.acked}
        await wait_until(lambda: all_decided(redis, acked), timeout=60, what="all decided")
        first_decision_ms = await first_decision_after(redis, killed_ms)
        lost = len(acked - await decided_keys(redis))
        alive = not any(task.done() for task in tasks)
        await redis.aclose()
    first_ack = min(acked_at for sent, acked_at in sender.acked.values() if sent > killed)
    return {
        "in": len(sender.bodies),
        "acked": len(acked),
        "lost": lost,
        "refused": sum(sender.refusals.values()),
        "promoted_s": promoted - killed,
        "acked_again_s": first_ack - killed,
        "decision_s": (first_decision_ms or 0) / 1000 - killed_ms / 1000,
        "alive": float(alive),
    }


def failover(root: Path) -> list[dict[str, float]]:
    results = []
    for trial in range(TRIALS):
        with sentinel_group(
            root / f"failover{trial}", password=PASSWORD, sentinel_password=SENTINEL_PASSWORD
        ) as group:
            results.append(asyncio.run(_failover_trial(group)))
    return results


async def _publish_timings(url: str, replication: Replication | None, n: int) -> list[float]:
    settings = Settings(_env_file=None, redis_url=url)  # type: ignore[call-arg]
    redis = connect(settings)
    bus = Bus(redis)
    timings = []
    for i in range(n + 200):
        event = factories.health_alert(f"c{i % 50}")
        started = time.perf_counter()
        await bus.publish_once(event, f"bench:marker:{event.id}", 600, replication=replication)
        if i >= 200:  # after a warm-up
            timings.append(time.perf_counter() - started)
    await redis.aclose()
    return timings


def wait_cost(root: Path, n: int = 3000) -> tuple[list[float], list[float]]:
    primary = RedisServer(root / "wait-primary").start()
    replica = RedisServer(root / "wait-replica", replica_of=primary.port).start()
    try:
        group = SentinelGroup(primary=primary, replicas=[replica], sentinels=[])
        group.wait_ready()
        plain = asyncio.run(_publish_timings(primary.url, None, n))
        waited = asyncio.run(_publish_timings(primary.url, Replication(1, 1_000), n))
        return plain, waited
    finally:
        replica.stop()
        primary.stop()


async def _lagging_trial(group: SentinelGroup, replication: Replication | None) -> tuple[int, int]:
    redis = connect(_settings(group))
    bus = Bus(redis)
    replica = group.replicas[0]
    replica.pause()
    with group.client(group.primary) as admin:
        admin.client_kill_filter(_type="replica")  # its link is gone; it cannot come back
    acked = []
    for i in range(20):
        event = factories.health_alert(f"c{i}")
        try:
            await bus.publish_once(event, f"m:{event.id}", 600, replication=replication)
            acked.append(event.id)
        except NotReplicated:
            pass  # the webhook answers 503: Alertmanager keeps the alert and sends it again
    await asyncio.to_thread(group.primary.kill)
    replica.resume()
    await asyncio.to_thread(group.wait_promoted, replica)
    await redis.aclose()
    with group.client(replica) as survivor:
        kept = {parse_event(f["event"]).id for _, f in survivor.xrange(Channel.HEALTH_ALERT)}
    return len(acked), len(set(acked) - kept)


def lagging(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for name, replication in (("WAIT off", None), ("WAIT 1", Replication(1, 200))):
        with sentinel_group(root / f"lagging-{name[-3:].strip()}") as group:
            out[name] = asyncio.run(_lagging_trial(group, replication))
    return out


def run() -> bool:
    header("Redis Sentinel failover and the price of WAIT")
    # A failover is meant to make the agents warn (Redis unavailable, retrying): not figures.
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(logging.ERROR)
    try:
        return _run()
    finally:
        root_logger.setLevel(level)


def _run() -> bool:
    with tempfile.TemporaryDirectory(prefix="hemostat-bench-") as tmp:
        root = Path(tmp)
        trials = failover(root)
        for i, t in enumerate(trials, 1):
            print(
                f"   failover {i}: alerts in {t['in']:.0f}, acknowledged {t['acked']:.0f}, "
                f"lost {t['lost']:.0f}, refused and resent {t['refused']:.0f}; SIGKILL -> "
                f"promoted {t['promoted_s']:.2f}s, acknowledging again {t['acked_again_s']:.2f}s, "
                f"next decision {t['decision_s']:.2f}s; agents alive: {bool(t['alive'])}"
            )
        plain, waited = wait_cost(root)
        print(f"   webhook publish, WAIT off: {summary_ms(plain)}")
        print(f"   webhook publish, WAIT 1:   {summary_ms(waited)}")
        added_p50 = (percentile(waited, 0.5) - percentile(plain, 0.5)) * 1000
        added_p99 = (percentile(waited, 0.99) - percentile(plain, 0.99)) * 1000
        print(f"   WAIT adds p50 {added_p50:.2f} ms, p99 {added_p99:.2f} ms (loopback)")
        losses = lagging(root)
        for name, (acked, lost) in losses.items():
            print(
                f"   replica cut off, primary killed, {name}: 20 alerts published, "
                f"{acked} acknowledged, {lost} of them lost in the failover"
            )
    slowest = max(t["decision_s"] for t in trials)
    ok = verdict("next decision after SIGKILL (slowest)", slowest, 10, False, "s")
    ok = all(t["lost"] == 0 and t["alive"] for t in trials) and ok
    ok = verdict("WAIT's added p99", added_p99, 5, False, "ms") and ok
    return (
        verdict("acknowledged and lost with WAIT", losses["WAIT 1"][1], 0, False, "alerts") and ok
    )


if __name__ == "__main__":
    sys.exit(0 if run() else 1)

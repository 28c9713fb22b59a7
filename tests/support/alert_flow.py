"""Alerts flowing through HemoStat the way production sees them: a sender that behaves like
Alertmanager (a refused alert is sent again until acknowledged) posts to the Monitor's webhook, the
Analyzer decides; and how to tell, from the streams, which acknowledged alert was decided. Used by
the failover test and the failover benchmark."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import docker as docker_sdk
import httpx
from redis.asyncio import Redis

from agents.analyzer.agent import AnalyzerAgent
from agents.monitor.agent import MonitorAgent
from agents.monitor.alertmanager import parse_payload
from shared.docker_api import DockerGateway
from shared.events import Channel
from shared.redis_client import connect
from shared.redis_server import free_port
from shared.runbooks import load_runbooks
from shared.settings import Settings
from tests.support.bus import wait_until
from tests.support.streams import events_on

__all__ = [
    "TOKEN",
    "Sender",
    "alert_body",
    "all_decided",
    "decided_at_least",
    "decided_keys",
    "decision_key",
    "first_decision_after",
    "running_agents",
    "webhook_settings",
]

RUNBOOKS = load_runbooks(Path(__file__).parent.parent.parent / "runbooks")
TOKEN = "s3cret-token"


def unreachable_docker() -> DockerGateway:
    """The Monitor's Docker side pointed at nothing: these tests need its webhook only."""
    client = docker_sdk.DockerClient(base_url="unix:///nonexistent/docker.sock", version="1.41")
    return DockerGateway(client)


@contextlib.asynccontextmanager
async def running_agents(
    settings: Settings, *, monitor: bool = True
) -> AsyncIterator[tuple[MonitorAgent | None, AnalyzerAgent, list[asyncio.Task[None]]]]:
    """The Analyzer (rules) and, with `monitor`, the Monitor (for its webhook), each with its own
    client as in their own processes."""
    analyzer_redis = connect(settings)
    analyzer = AnalyzerAgent(settings=settings, redis=analyzer_redis, runbooks=RUNBOOKS)
    agents: list[MonitorAgent | AnalyzerAgent] = [analyzer]
    clients = [analyzer_redis]
    watcher = None
    if monitor:
        clients.append(connect(settings))
        watcher = MonitorAgent(
            settings=settings, redis=clients[-1], docker=unreachable_docker(), cgroups=None
        )
        agents.append(watcher)
    tasks = [asyncio.create_task(agent.run()) for agent in agents]
    try:
        await wait_until(lambda: analyzer_redis.exists(Channel.HEALTH_ALERT), what="its group")
        if watcher is not None:
            await wait_until(lambda: watcher.intake.server is not None, what="webhook listening")
        yield watcher, analyzer, tasks
    finally:
        for agent in agents:
            agent.stop()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
        for client in clients:
            await client.aclose()


def webhook_settings(**kw: Any) -> dict[str, Any]:
    return {
        "webhook_port": free_port(),
        "webhook_host": "127.0.0.1",
        "webhook_token": TOKEN,
        "webhook_rate_per_s": 10_000.0,
        "watch_label": "hemostat.test=no-container",
        "monitor_poll_interval_s": 60.0,
    } | kw


def alert_body(i: int, container: str | None = None) -> bytes:
    return json.dumps(
        {
            "version": "4",
            "status": "firing",
            "receiver": "hemostat",
            "alerts": [
                {
                    "status": "firing",
                    "labels": {
                        "alertname": f"Probe{i}",
                        "severity": "warning",
                        "container": container or f"web-{i % 8}",
                    },
                    "annotations": {"summary": f"probe alert {i}"},
                    "startsAt": "2026-11-21T10:00:00.000Z",
                    "fingerprint": f"fp{i:08d}",
                }
            ],
        }
    ).encode()


def decision_key(body: bytes) -> str:
    """The idempotency key of the Analyzer's decision on the alert in `body`."""
    [alert] = parse_payload(body).alerts
    return f"decision:alertmanager:{alert.dedup_key()}"


async def decided_keys(redis: Redis) -> set[str]:
    decisions = await events_on(redis, Channel.REMEDIATION_NEEDED)
    decisions += await events_on(redis, Channel.FALSE_ALARM)
    return {d.idempotency_key for d in decisions}


async def first_decision_after(redis: Redis, at_ms: int) -> int | None:
    """Redis's time (ms) of the first decision published after `at_ms`."""
    stamps = []
    for channel in (Channel.REMEDIATION_NEEDED, Channel.FALSE_ALARM):
        entries = await redis.xrange(channel, min=f"{at_ms + 1}-0", count=1)
        stamps += [int(entry_id.split("-")[0]) for entry_id, _ in entries]
    return min(stamps, default=None)


class Sender:
    """Posts one alert after another the way Alertmanager does: a refused alert (an error status
    or no answer) is sent again until it is acknowledged with a 200."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/webhook/alertmanager"
        self.bodies: list[bytes] = []  # every alert sent at least once
        self.acked: dict[bytes, tuple[float, float]] = {}  # alert -> (sent, 200) monotonic
        self.refusals: Counter[str] = Counter()
        self.stop = asyncio.Event()

    async def run(self) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(headers=headers, timeout=30) as http:
            while not self.stop.is_set():
                body = alert_body(len(self.bodies))
                self.bodies.append(body)
                while not self.stop.is_set():
                    sent = time.monotonic()
                    try:
                        answer = await http.post(self.url, content=body)
                    except httpx.TransportError as exc:
                        self.refusals[f"transport: {type(exc).__name__}"] += 1
                    else:
                        if answer.status_code == 200:
                            self.acked[body] = (sent, time.monotonic())
                            break
                        why = str(answer.json().get("error", "")).split(":", 1)[0]
                        self.refusals[f"{answer.status_code} {why}"] += 1
                    await asyncio.sleep(0.05)  # Alertmanager backs off too
                await asyncio.sleep(0.005)

    def acked_since(self, t: float) -> int:
        """Alerts sent after `t` and acknowledged."""
        return sum(1 for sent, _ in self.acked.values() if sent > t)


async def decided_at_least(redis: Redis, count: int) -> bool:
    return len(await decided_keys(redis)) >= count


async def all_decided(redis: Redis, keys: set[str]) -> bool:
    return keys <= await decided_keys(redis)

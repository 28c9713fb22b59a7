"""The Metrics exporter agent: consumes every channel (its own consumer group), tails the
notification log and the dead-letter stream, and serves `/metrics` on HEMOSTAT_METRICS_PORT
(9090) from an explicit registry: pipeline counters and latency histograms fed by events, plus
custom collectors that read containers, agents and streams from Redis at scrape time."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from agents.base import BaseAgent, background
from agents.metrics.collectors import (
    AgentCollector,
    ContainerCollector,
    HostCollector,
    StreamCollector,
)
from agents.metrics.instruments import PipelineMetrics
from shared import keys
from shared.events import Channel, Envelope, Event
from shared.redis_client import CONNECTION_ERRORS, connect_sync
from shared.settings import Settings

__all__ = ["MetricsAgent", "build", "build_registry"]


def build_registry(
    sync_redis: SyncRedis, settings: Settings
) -> tuple[CollectorRegistry, PipelineMetrics]:
    registry = CollectorRegistry(auto_describe=True)
    metrics = PipelineMetrics(registry)
    metrics.initialise(settings.host_name)
    max_age = max(3 * settings.monitor_poll_interval_s, 60.0)
    registry.register(ContainerCollector(sync_redis, max_age))
    registry.register(AgentCollector(sync_redis))
    registry.register(StreamCollector(sync_redis))
    registry.register(HostCollector(sync_redis))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry, metrics


class MetricsAgent(BaseAgent):
    name = "metrics"
    consumes = tuple(Channel)

    def __init__(
        self,
        *,
        registry: CollectorRegistry,
        metrics: PipelineMetrics,
        port: int | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.registry = registry
        self.metrics = metrics
        self.port = self.settings.metrics_port if port is None else port
        self._server: Any = None

    async def on_start(self) -> None:
        if self.port:
            self._server, _ = start_http_server(
                self.port, addr=self.settings.metrics_host, registry=self.registry
            )
            self.port = self._server.server_address[1]
            self.log.info("metrics.listening", port=self.port)

    async def on_stop(self) -> None:
        if self._server is not None:
            await asyncio.to_thread(self._server.shutdown)
            self._server.server_close()

    async def handle(self, event: Event) -> None:
        self.metrics.observe(event)

    def observe(self, event: Envelope) -> None:
        self.metrics.observe(event)

    @background
    async def tail_side_streams(self) -> None:
        """Notification deliveries and dead letters are Redis streams outside the bus."""
        last: dict[Any, Any] = {keys.NOTIFICATIONS: "$", keys.DEAD_LETTER: "$"}
        while not self.stopping:
            try:
                reply: Any = await self.redis.xread(last, count=500, block=1000)
            except CONNECTION_ERRORS as exc:
                self.log.warning("metrics.tail_failed", error=str(exc))
                await self.sleep(1.0)
                continue
            for stream, entries in reply or []:
                for entry_id, fields in entries:
                    last[stream] = entry_id
                    if stream == keys.NOTIFICATIONS:
                        self.metrics.delivery(
                            fields.get("channel", "?"),
                            fields.get("status", "?"),
                            float(fields.get("latency_ms") or 0),
                        )
                    else:
                        self.metrics.dead_letters.labels(fields.get("channel", "?")).inc()


def build(settings: Settings, redis: Redis) -> MetricsAgent:
    registry, metrics = build_registry(connect_sync(settings), settings)
    return MetricsAgent(settings=settings, redis=redis, registry=registry, metrics=metrics)

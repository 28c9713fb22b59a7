"""Custom collectors that read Redis state at scrape time, so what they export is always the
current truth: containers whose snapshot expired simply disappear, an agent with no fresh
heartbeat reads 0."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from redis import Redis
from redis.exceptions import RedisError

from shared import keys
from shared.approvals import PENDING
from shared.events import Channel
from shared.heartbeat import AgentStatus, read_heartbeats
from shared.hosts import HostRecord, HostState
from shared.log import get_logger

__all__ = [
    "AGENTS",
    "GROUPS",
    "AgentCollector",
    "ContainerCollector",
    "HostCollector",
    "StreamCollector",
]

log = get_logger(__name__)
AGENTS = ("monitor", "analyzer", "responder", "alert", "metrics")
GROUPS: dict[str, tuple[str, ...]] = {
    Channel.HEALTH_ALERT: ("analyzer", "metrics"),
    Channel.REMEDIATION_NEEDED: ("responder", "metrics"),
    Channel.REMEDIATION_COMPLETE: ("alert", "metrics"),
    Channel.FALSE_ALARM: ("alert", "metrics"),
    Channel.APPROVAL_REQUEST: ("alert", "metrics"),
    Channel.APPROVAL_DECISION: ("responder", "metrics"),
    Channel.ESCALATION: ("alert", "metrics"),
    Channel.INCIDENT_RESOLVED: ("responder", "metrics"),
}


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


class ContainerCollector(Collector):
    """Per-container state from the Monitor's snapshots (read raw: this runs on every scrape)."""

    LABELS = ["container", "service", "project", "host"]
    FIELDS = (
        "name",
        "compose_service",
        "compose_project",
        "host",
        "state",
        "health",
        "monitored",
        "cpu_percent",
        "memory_percent",
        "memory_limit_is_host",
        "memory_working_set",
        "memory_limit",
        "restart_count",
        "active_alerts",
    )

    def __init__(self, redis: Redis, max_age_s: float) -> None:
        self.redis = redis
        self.max_age_s = max_age_s

    def _rows(self) -> list[list[Any]]:
        ids = self.redis.zrangebyscore(keys.CONTAINERS, time.time() - self.max_age_s, "+inf")
        pipe = self.redis.pipeline(transaction=False)
        for container_id in ids:
            pipe.hmget(keys.CONTAINER + str(container_id), self.FIELDS)
        return [row for row in pipe.execute() if row and row[0]]

    def collect(self) -> Iterator[Any]:
        cpu = _gauge(
            "hemostat_container_cpu_percent", "CPU % of the container's allowance.", self.LABELS
        )
        mem_pct = _gauge(
            "hemostat_container_memory_percent",
            "Working set % of the memory limit (limit=container) or of host memory (limit=host).",
            [*self.LABELS, "limit"],
        )
        mem = _gauge("hemostat_container_memory_bytes", "Memory working set.", self.LABELS)
        mem_limit = _gauge(
            "hemostat_container_memory_limit_bytes", "The container's memory limit.", self.LABELS
        )
        running = _gauge("hemostat_container_running", "1 while the container runs.", self.LABELS)
        health = _gauge(
            "hemostat_container_health",
            "1 for the container's current health check state (none: no check).",
            [*self.LABELS, "state"],
        )
        monitored = _gauge(
            "hemostat_container_monitored", "1 when the Monitor watches it.", self.LABELS
        )
        alerts = _gauge(
            "hemostat_container_open_alerts", "Alert kinds open on the container.", self.LABELS
        )
        restarts = CounterMetricFamily(
            "hemostat_container_restarts", "Restarts counted by Docker.", labels=self.LABELS
        )
        try:
            rows = self._rows()
        except RedisError as exc:
            log.warning("metrics.snapshots_unavailable", error=str(exc))
            rows = []
        for (
            name,
            service,
            project,
            host,
            state,
            health_state,
            is_monitored,
            cpu_v,
            mem_pct_v,
            is_host,
            working_set,
            limit,
            restart_count,
            open_alerts,
        ) in rows:
            labels = [name, service or "", project or "", host or ""]
            if cpu_v is not None:
                cpu.add_metric(labels, float(cpu_v))
            if mem_pct_v is not None:
                where = "host" if is_host == "true" else "container"
                mem_pct.add_metric([*labels, where], float(mem_pct_v))
            if working_set is not None:
                mem.add_metric(labels, float(working_set))
            if limit is not None and is_host != "true":
                mem_limit.add_metric(labels, float(limit))
            running.add_metric(labels, 1.0 if state == "running" else 0.0)
            health.add_metric([*labels, health_state or "none"], 1.0)
            monitored.add_metric(labels, 0.0 if is_monitored == "false" else 1.0)
            alerts.add_metric(labels, float(len(json.loads(open_alerts))) if open_alerts else 0.0)
            restarts.add_metric(labels, float(restart_count or 0))
        yield from (cpu, mem_pct, mem, mem_limit, running, health, monitored, alerts, restarts)


class AgentCollector(Collector):
    """Liveness and counters of every agent from their heartbeats."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def collect(self) -> Iterator[Any]:
        up = _gauge("hemostat_agent_up", "Fresh heartbeats per agent type (0: none).", ["agent"])
        degraded = _gauge(
            "hemostat_agent_degraded",
            "1 while an instance reports degraded.",
            ["agent", "instance"],
        )
        age = _gauge(
            "hemostat_agent_heartbeat_age_seconds",
            "Seconds since the last heartbeat.",
            ["agent", "instance"],
        )
        handled = CounterMetricFamily(
            "hemostat_agent_events_handled",
            "Events an instance handled.",
            labels=["agent", "instance"],
        )
        errors = CounterMetricFamily(
            "hemostat_agent_handler_errors",
            "Handler failures of an instance.",
            labels=["agent", "instance"],
        )
        try:
            beats = read_heartbeats(self.redis)
        except RedisError as exc:
            log.warning("metrics.heartbeats_unavailable", error=str(exc))
            beats = []
        now = datetime.now(UTC)
        fresh: dict[str, int] = dict.fromkeys(AGENTS, 0)
        for beat in beats:
            alive = beat.is_fresh(now) and beat.status is not AgentStatus.STOPPING
            fresh[beat.agent] = fresh.get(beat.agent, 0) + int(alive)
            labels = [beat.agent, beat.instance]
            age.add_metric(labels, max(0.0, (now - beat.beat_at).total_seconds()))
            degraded.add_metric(labels, 1.0 if beat.status is AgentStatus.DEGRADED else 0.0)
            consumer = beat.details.get("consumer") or {}
            if consumer:
                handled.add_metric(labels, float(consumer.get("handled", 0)))
                errors.add_metric(labels, float(consumer.get("failed", 0)))
        for agent, count in fresh.items():
            up.add_metric([agent], float(count))
        yield from (up, degraded, age, handled, errors)


class StreamCollector(Collector):
    """Stream lengths, consumer-group lag and pending counts, dead letters, pending approvals."""

    def __init__(self, redis: Redis, channels: Iterable[str] = tuple(GROUPS)) -> None:
        self.redis = redis
        self.channels = list(channels)

    def collect(self) -> Iterator[Any]:
        length = _gauge("hemostat_stream_length", "Entries retained in the stream.", ["channel"])
        lag = _gauge(
            "hemostat_consumer_lag", "Entries not yet read by the group.", ["channel", "group"]
        )
        pending = _gauge(
            "hemostat_consumer_pending", "Entries read but not acknowledged.", ["channel", "group"]
        )
        dead = _gauge("hemostat_dead_letter_length", "Entries in the dead-letter stream.", [])
        approvals = _gauge("hemostat_approvals_pending", "Proposals waiting for a decision.", [])
        try:
            for channel in self.channels:
                length.add_metric([channel], float(self.redis.xlen(channel)))
                try:
                    groups: Any = self.redis.xinfo_groups(channel)
                except RedisError:
                    groups = []  # the stream does not exist yet
                for group in groups:
                    lag.add_metric([channel, group["name"]], float(group.get("lag") or 0))
                    pending.add_metric([channel, group["name"]], float(group.get("pending") or 0))
            dead.add_metric([], float(self.redis.xlen(keys.DEAD_LETTER)))
            approvals.add_metric([], float(self.redis.zcard(PENDING)))
        except RedisError as exc:
            log.warning("metrics.streams_unavailable", error=str(exc))
        yield from (length, lag, pending, dead, approvals)


class HostCollector(Collector):
    """The fleet's hosts as the Analyzer's host watch last recorded them."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def collect(self) -> Iterator[Any]:
        state = _gauge(
            "hemostat_host_state",
            "1 for the host's current state (watched, not_healed, unwatched).",
            ["host", "state"],
        )
        agents = _gauge(
            "hemostat_host_edge_agents", "Live edge agents of the host.", ["host", "agent"]
        )
        try:
            values: Any = self.redis.hvals(keys.HOSTS)
        except RedisError as exc:
            log.warning("metrics.hosts_unavailable", error=str(exc))
            values = []
        for value in values:
            try:
                record = HostRecord.model_validate_json(value)
            except ValueError:
                continue
            for each in HostState:
                state.add_metric([record.host, each.value], float(record.state is each))
            agents.add_metric([record.host, "monitor"], float(record.monitors))
            agents.add_metric([record.host, "responder"], float(record.responders))
        yield from (state, agents)

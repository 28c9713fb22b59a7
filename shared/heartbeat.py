"""Agent liveness in Redis: one key per agent instance, refreshed on an interval, with a TTL so a
dead process disappears by itself (arq's health-check key, per instance)."""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import AwareDatetime, Field
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from shared import keys
from shared.model import Model

__all__ = [
    "AgentStatus",
    "Heartbeat",
    "clear_heartbeat",
    "heartbeat_key",
    "live_heartbeats",
    "read_heartbeats",
    "write_heartbeat",
]


class AgentStatus(StrEnum):
    OK = "ok"
    DEGRADED = "degraded"  # running, but a dependency (Redis, Docker, an endpoint) is failing
    STOPPING = "stopping"


class Heartbeat(Model):
    agent: str
    instance: str
    host: str
    pid: int
    version: str
    status: AgentStatus
    started_at: AwareDatetime
    beat_at: AwareDatetime
    ttl_s: float
    details: dict[str, Any] = Field(default_factory=dict)

    def is_fresh(self, now: datetime) -> bool:
        return (now - self.beat_at).total_seconds() <= self.ttl_s


def heartbeat_key(agent: str, instance: str) -> str:
    return f"{keys.HEARTBEAT}{agent}:{instance}"


async def write_heartbeat(redis: Redis, beat: Heartbeat) -> None:
    await redis.set(
        heartbeat_key(beat.agent, beat.instance), beat.model_dump_json(), px=int(beat.ttl_s * 1000)
    )


async def clear_heartbeat(redis: Redis, agent: str, instance: str) -> None:
    await redis.delete(heartbeat_key(agent, instance))


def read_heartbeats(redis: SyncRedis, agent: str | None = None) -> list[Heartbeat]:
    """Every live heartbeat (optionally of one agent type), for `hemostat check/status`."""
    pattern = f"{keys.HEARTBEAT}{agent}:*" if agent else f"{keys.HEARTBEAT}*"
    names = sorted(redis.scan_iter(match=pattern, count=200))
    if not names:
        return []
    beats = []
    for raw in redis.mget(names):
        if raw:
            try:
                beats.append(Heartbeat.model_validate(json.loads(raw)))
            except ValueError:
                continue  # a half-written or foreign key is not a live agent
    return beats


async def live_heartbeats(redis: Redis, agent: str | None = None) -> list[Heartbeat]:
    """`read_heartbeats` for an agent's event loop."""
    pattern = f"{keys.HEARTBEAT}{agent}:*" if agent else f"{keys.HEARTBEAT}*"
    names = sorted([k async for k in redis.scan_iter(match=pattern, count=200)])
    if not names:
        return []
    beats = []
    for raw in await redis.mget(names):
        if raw:
            try:
                beats.append(Heartbeat.model_validate(json.loads(raw)))
            except ValueError:
                continue
    return beats

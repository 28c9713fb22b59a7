"""The fleet's hosts: which Docker hosts are watched (a live Monitor) and healed (a live
Responder), from the agents' heartbeats, and when people must hear that this changed.

A host is known once an edge agent (Monitor or Responder) of it has beaten; it stays known until
someone forgets it (`hemostat hosts forget NAME`), so a host whose agents all stopped — their
heartbeats expire with them — is reported, not silently dropped. `observe()` and `transition()` are
pure; `HostStore` keeps one JSON record per host in `hemostat:hosts` and changes it only by
compare-and-set, so several central replicas tell each change once.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum
from typing import Any

from redis.asyncio import Redis

from shared import keys
from shared.heartbeat import Heartbeat
from shared.model import Model

__all__ = [
    "EDGE_AGENTS",
    "HostRecord",
    "HostState",
    "HostStore",
    "Observed",
    "describe",
    "observe",
    "read_hosts",
    "transition",
]

EDGE_AGENTS = ("monitor", "responder")


class HostState(StrEnum):
    WATCHED = "watched"  # a Monitor and a Responder are alive
    NOT_HEALED = "not_healed"  # watched, but no Responder: failures are told, not repaired
    UNWATCHED = "unwatched"  # no Monitor: nothing on this host is seen


class Observed(Model):
    host: str
    monitors: int
    responders: int

    @property
    def state(self) -> HostState:
        if not self.monitors:
            return HostState.UNWATCHED
        return HostState.WATCHED if self.responders else HostState.NOT_HEALED


class HostRecord(Model):
    host: str
    state: HostState
    since: float  # when it entered `state`
    told: HostState = HostState.WATCHED  # the state people last heard (a new host is fine)
    last_seen: float  # the last time an edge agent of it was alive
    monitors: int = 0
    responders: int = 0


def observe(beats: Iterable[Heartbeat], now: datetime) -> dict[str, Observed]:
    """Live edge agents per host (only hosts with at least one)."""
    counts: dict[str, list[int]] = {}
    for beat in beats:
        # A stopping agent watches nothing any more: it counts as gone at once.
        if beat.agent in EDGE_AGENTS and beat.is_fresh(now) and beat.status != "stopping":
            c = counts.setdefault(beat.host, [0, 0])
            c[EDGE_AGENTS.index(beat.agent)] += 1
    return {host: Observed(host=host, monitors=m, responders=r) for host, (m, r) in counts.items()}


def transition(
    record: HostRecord | None, seen: Observed | None, host: str, now: float, grace_s: float
) -> tuple[HostRecord | None, HostState | None]:
    """The host's new record and what to tell people (None: nothing). A worse state is told once
    it has lasted `grace_s` (an agent restarting is not news); being watched again is told at
    once, and only if people heard otherwise."""
    if record is None:
        if seen is None:
            return None, None
        record = HostRecord(
            host=host, state=seen.state, since=now, last_seen=now, monitors=0, responders=0
        )
    observed = seen.state if seen else HostState.UNWATCHED
    updates: dict[str, Any] = {
        "monitors": seen.monitors if seen else 0,
        "responders": seen.responders if seen else 0,
    }
    if seen is not None:
        updates["last_seen"] = now
    if observed is not record.state:
        updates |= {"state": observed, "since": now}
    record = record.model_copy(update=updates)
    due = record.state is HostState.WATCHED or now - record.since >= grace_s
    if record.state is record.told or not due:
        return record, None
    return record.model_copy(update={"told": record.state}), record.state


# KEYS[1] the hash; ARGV: host, the record as read ('' when absent), the new record.
_CAS = """
local now = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if now ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""


def read_hosts(redis: Any) -> list[HostRecord]:
    """Every known host, by name, from a blocking client (`hemostat status`, the dashboard)."""
    out = []
    for value in redis.hvals(keys.HOSTS):
        try:
            out.append(HostRecord.model_validate_json(value))
        except ValueError:
            continue  # written by something else: left alone
    return sorted(out, key=lambda r: r.host)


class HostStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._cas = redis.register_script(_CAS)

    async def read(self) -> dict[str, tuple[str, HostRecord]]:
        """host -> (the raw value, for compare-and-set; the record)."""
        raw: dict[Any, Any] = await self.redis.hgetall(keys.HOSTS)
        out = {}
        for host, value in raw.items():
            try:
                out[str(host)] = (str(value), HostRecord.model_validate_json(value))
            except ValueError:
                continue  # written by something else: left alone
        return out

    async def replace(self, host: str, was: str, record: HostRecord) -> bool:
        """Write `record` if the stored value is still `was`; False when another replica won."""
        return bool(await self._cas(keys=[keys.HOSTS], args=[host, was, record.model_dump_json()]))

    async def forget(self, host: str) -> bool:
        return bool(await self.redis.hdel(keys.HOSTS, host))


def describe(record: HostRecord) -> str:
    """One line for people."""
    if record.state is HostState.WATCHED:
        return (
            f"host {record.host} is watched again ({record.monitors} Monitor(s), "
            f"{record.responders} Responder(s) alive)"
        )
    if record.state is HostState.NOT_HEALED:
        return (
            f"host {record.host} has no live Responder: its failures are reported but not "
            "repaired (is its Responder running?)"
        )
    return (
        f"host {record.host} is no longer watched: none of its edge agents (Monitor, Responder) "
        "is alive — nothing on it is seen or repaired until they are back"
    )

"""Container state the Monitor keeps in Redis for everyone else (dashboard, `hemostat status`,
metrics exporter, the Responder's crash-loop guard):

- `hemostat:container:<id>`   one hash per container: the latest snapshot (TTL)
- `hemostat:containers`       sorted set index: container id -> last update (unix seconds)
- `hemostat:samples:<id>`     stream of recent samples for charts (bounded, TTL)
- `hemostat:deaths:<host>/<id>`  sorted set of unplanned deaths (unix seconds), for crash-loop
  guards (per host: the Responder of that host reads it)
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from shared import keys
from shared.model import Model

__all__ = [
    "DEATHS_PREFIX",
    "DEATHS_TTL_S",
    "SAMPLES_MAXLEN",
    "ContainerSnapshot",
    "prune_index",
    "read_snapshots",
    "record_death",
    "write_snapshots",
]

DEATHS_PREFIX = keys.DEATHS
SAMPLES_MAXLEN = 240  # two hours at the default 30 s poll
DEATHS_TTL_S = 86_400


class ContainerSnapshot(Model):
    id: str
    name: str
    image: str = ""
    host: str = ""
    state: str = "unknown"
    health: str | None = None
    monitored: bool = True
    restart_count: int = 0
    exit_code: int | None = None
    oom_killed: bool = False
    started_at: float | None = None
    compose_project: str | None = None
    compose_service: str | None = None
    cpu_percent: float | None = None
    cpu_cores: float | None = None
    memory_percent: float | None = None
    memory_working_set: int | None = None
    memory_limit: int | None = None
    memory_limit_is_host: bool = False
    net_rx_bps: float | None = None
    net_tx_bps: float | None = None
    blk_read_bps: float | None = None
    blk_write_bps: float | None = None
    stats_source: str | None = None
    active_alerts: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    updated_at: float

    def to_hash(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, value in self.model_dump().items():
            if value is None:
                continue
            out[key] = json.dumps(value) if isinstance(value, list | dict | bool) else str(value)
        return out

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> ContainerSnapshot:
        parsed: dict[str, Any] = {}
        for key, value in data.items():
            field = cls.model_fields.get(key)
            if field is None:
                continue  # written by a newer Monitor: ignore, do not fail the reader
            if value.startswith(("[", "{")) or value in ("true", "false"):
                parsed[key] = json.loads(value)
            else:
                parsed[key] = value
        return cls.model_validate(parsed)


async def write_snapshots(redis: Redis, snapshots: list[ContainerSnapshot], ttl_s: float) -> None:
    if not snapshots:
        return
    pipe = redis.pipeline(transaction=False)
    for snap in snapshots:
        key = keys.CONTAINER + snap.id
        pipe.delete(key)  # fields that became empty must not linger
        pipe.hset(key, mapping=snap.to_hash())  # type: ignore[arg-type]
        pipe.expire(key, int(ttl_s))
        pipe.zadd(keys.CONTAINERS, {snap.id: snap.updated_at})
        if snap.monitored and snap.state == "running":
            sample = {
                k: str(v)
                for k, v in (
                    ("t", snap.updated_at),
                    ("cpu", snap.cpu_percent),
                    ("mem", snap.memory_percent),
                    ("mem_bytes", snap.memory_working_set),
                )
                if v is not None
            }
            pipe.xadd(keys.SAMPLES + snap.id, sample, maxlen=SAMPLES_MAXLEN, approximate=True)  # type: ignore[arg-type]
            pipe.expire(keys.SAMPLES + snap.id, int(max(ttl_s, 3600)))
    await pipe.execute()


async def prune_index(redis: Redis, older_than: float) -> None:
    await redis.zremrangebyscore(keys.CONTAINERS, "-inf", older_than)


def read_snapshots(redis: SyncRedis, now: float, max_age_s: float) -> list[ContainerSnapshot]:
    """Snapshots updated within `max_age_s` (a stopped Monitor's data ages out)."""
    ids = redis.zrangebyscore(keys.CONTAINERS, now - max_age_s, "+inf")
    if not ids:
        return []
    pipe = redis.pipeline(transaction=False)
    for container_id in ids:
        pipe.hgetall(keys.CONTAINER + str(container_id))
    out = []
    for data in pipe.execute():
        if data:
            try:
                out.append(ContainerSnapshot.from_hash(data))
            except ValueError:
                continue
    return out


async def record_death(redis: Redis, host: str, container_id: str, at: float) -> None:
    key = DEATHS_PREFIX + keys.on_host(host, container_id)
    pipe = redis.pipeline(transaction=False)
    pipe.zadd(key, {f"{at:.6f}": at})
    pipe.zremrangebyscore(key, "-inf", at - DEATHS_TTL_S)
    pipe.expire(key, DEATHS_TTL_S)
    await pipe.execute()

"""Incidents in Redis: repeated alerts for one subject join one open incident.

- `hemostat:incident:open:<subject>`  -> id of the subject's open incident (TTL refreshed by alerts)
- `hemostat:incident:<id>`             hash: subject, times, counts, status, cached analyses
- `hemostat:incident:<id>:kinds`       set of alert kinds still firing
- `hemostat:incidents`                 index: id -> opened_at

Attaching and resolving are single Lua scripts, so several Analyzer replicas agree on which
incident an alert belongs to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from agents.analyzer.rules import History
from shared import keys
from shared.events import Analysis, HealthAlertEvent
from shared.ids import new_id

__all__ = ["CLOSED_TTL_S", "Attached", "IncidentStore", "subject_key"]

CLOSED_TTL_S = 7 * 86_400

# The scripts name the incident keys of shared/keys.py (`@INCIDENT@`, `@INCIDENTS@`).
_ATTACH = """
local id = redis.call('GET', KEYS[1])
local new = 0
if not id then
  id = ARGV[1]
  new = 1
  redis.call('HSET', '@INCIDENT@' .. id, 'id', id, 'opened_at', ARGV[2], 'status', 'open',
             'subject', ARGV[6], 'subject_key', ARGV[9], 'alert_count', 0, 'decisions', 0)
  redis.call('ZADD', '@INCIDENTS@', ARGV[2], id)
end
redis.call('SET', KEYS[1], id, 'EX', ARGV[8])
local h = '@INCIDENT@' .. id
local total = redis.call('HINCRBY', h, 'alert_count', 1)
local same = redis.call('HINCRBY', h, 'count:' .. ARGV[3], 1)
redis.call('HSET', h, 'updated_at', ARGV[2], 'last_alert_id', ARGV[4], 'last_summary', ARGV[5],
           'severity', ARGV[7], 'last_kind', ARGV[3])
redis.call('SADD', h .. ':kinds', ARGV[3])
local decisions = tonumber(redis.call('HGET', h, 'decisions') or '0')
return {id, new, total, same, decisions}
""".replace("@INCIDENTS@", keys.INCIDENTS).replace("@INCIDENT@", keys.INCIDENT)

_RESOLVE = """
local id = redis.call('GET', KEYS[1])
if not id then return {false, 0} end
local h = '@INCIDENT@' .. id
if ARGV[1] == 'removed' then
  redis.call('DEL', h .. ':kinds')  -- the container is gone: nothing of it fires any more
else
  redis.call('SREM', h .. ':kinds', ARGV[1])
end
redis.call('HSET', h, 'updated_at', ARGV[2])
if redis.call('SCARD', h .. ':kinds') > 0 then return {id, 0} end
redis.call('HSET', h, 'status', 'resolved', 'closed_at', ARGV[2], 'close_reason', ARGV[3])
redis.call('DEL', KEYS[1])
redis.call('EXPIRE', h, ARGV[4])
return {id, 1}
""".replace("@INCIDENT@", keys.INCIDENT)


def subject_key(alert: HealthAlertEvent) -> str:
    """What makes two alerts "the same subject": the container, or the external alert."""
    s = alert.subject
    if s.container_id:
        return f"{s.host}:{s.container_id}"
    if s.container_name:
        return f"{s.host}:name:{s.container_name}"
    p = alert.payload
    return f"{s.host}:alert:{p.alertname or p.kind}:{p.fingerprint or ''}"


@dataclass(frozen=True)
class Attached:
    incident_id: str
    new: bool
    history: History


class IncidentStore:
    def __init__(self, redis: Redis, idle_ttl_s: float = 86_400.0) -> None:
        self.redis = redis
        self.idle_ttl_s = int(idle_ttl_s)
        self._attach = redis.register_script(_ATTACH)
        self._resolve = redis.register_script(_RESOLVE)

    async def attach(self, alert: HealthAlertEvent, now: float) -> Attached:
        key = subject_key(alert)
        result: list[Any] = await self._attach(
            keys=[keys.INCIDENT_OPEN + key],
            args=[
                new_id(),
                f"{now:.3f}",
                alert.payload.kind.value,
                alert.id,
                alert.payload.summary[:300],
                alert.subject.model_dump_json(),
                alert.severity.value,
                self.idle_ttl_s,
                key,
            ],
        )
        incident_id, new, total, same, decisions = result
        return Attached(
            str(incident_id),
            bool(int(new)),
            History(alerts=int(total), same_kind=int(same), decisions=int(decisions)),
        )

    async def resolve(self, alert: HealthAlertEvent, now: float) -> tuple[str | None, bool]:
        """Mark the alert's kind as no longer firing; close the incident when nothing fires."""
        result: list[Any] = await self._resolve(
            keys=[keys.INCIDENT_OPEN + subject_key(alert)],
            args=[
                alert.payload.kind.value,
                f"{now:.3f}",
                alert.payload.summary[:300],
                CLOSED_TTL_S,
            ],
        )
        incident_id, closed = result
        return (str(incident_id) if incident_id else None), bool(int(closed))

    async def cached_analysis(self, incident_id: str, runbook_id: str) -> Analysis | None:
        raw = await self.redis.hget(keys.INCIDENT + incident_id, f"analysis:{runbook_id}")
        if not raw:
            return None
        try:
            return Analysis.model_validate_json(raw)
        except ValueError:
            return None

    async def record_decision(
        self,
        incident_id: str,
        analysis: Analysis,
        runbook_id: str,
        summary: str,
        *,
        cache: bool,
        action_id: str | None = None,
        false_alarm: bool = False,
    ) -> None:
        """Remember the decision; with `cache`, repeats in this incident reuse the analysis."""
        key = keys.INCIDENT + incident_id
        fields = {
            "runbook_id": runbook_id,
            "root_cause": analysis.root_cause[:500],
            "analysis_method": analysis.method.value,
            "confidence": f"{analysis.confidence:.3f}",
            "last_decision": summary[:300],
        }
        if cache:
            fields[f"analysis:{runbook_id}"] = analysis.model_dump_json()
            fields[f"action:{runbook_id}"] = action_id or ""
            fields[f"false_alarm:{runbook_id}"] = "1" if false_alarm else "0"
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
        pipe.hincrby(key, "decisions", 1)
        await pipe.execute()

    async def get(self, incident_id: str) -> dict[str, str]:
        data: dict[Any, Any] = await self.redis.hgetall(keys.INCIDENT + incident_id)
        return {str(k): str(v) for k, v in data.items()}

    async def kinds(self, incident_id: str) -> set[str]:
        members: set[Any] = await self.redis.smembers(keys.INCIDENT + incident_id + ":kinds")
        return {str(m) for m in members}

    async def prune(self, older_than: float) -> int:
        """Drop index entries of incidents whose hash has expired."""
        stale: list[Any] = await self.redis.zrangebyscore(keys.INCIDENTS, "-inf", older_than)
        gone = [i for i in stale if not await self.redis.exists(keys.INCIDENT + i)]
        if gone:
            await self.redis.zrem(keys.INCIDENTS, *gone)
        return len(gone)

"""Storms: many failures at once become one message per channel, then one when it is over.

Alertmanager's grouping, for failures: each failure message waits `hold_s` (group_wait) in an
outbox. A scope — one host, or one alert kind across hosts — that sees `threshold` failures within
`window_s` starts a storm: the failures still waiting join it, and so does every failure in that
scope until `quiet_s` pass without one. The storm is told twice per channel: when it starts
(what failed, what HemoStat did about each so far) and when it ends (every member and how it
ended). Each failure is still in the history, the dashboard and the audit; the notification log
marks it `bundled`.

Everything is in Redis and every step is one script, so Alert replicas agree on what is a storm
and a message in the outbox is sent by one of them (leased; a replica that dies mid-send leaves
it to another).

- `hemostat:alert:storm:recent:<scope>`   zset: failure key -> when it arrived (the window)
- `hemostat:alert:storm:active:<scope>`   string: the scope's open storm
- `hemostat:alert:storm:<id>`             hash: scope, started, last, told_alone, ended
- `hemostat:alert:storm:<id>:members`     hash: failure key -> member (JSON)
- `hemostat:alert:storm:<id>:channels`    set: every channel a member was routed to
- `hemostat:alert:storms`                 zset: open storm -> its last failure (for the end)
- `hemostat:alert:outbox`                 zset: item -> when it is due
- `hemostat:alert:outbox:data`            hash: item -> JSON
- `hemostat:alert:outbox:leased`          zset: item -> when its sender's lease ends

Outbox items are `single:<key>` (a held failure), `start:<id>` and `end:<id>` (a storm's two
messages).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import Field
from redis.asyncio import Redis

from shared import keys
from shared.events import (
    Envelope,
    EscalationEvent,
    FalseAlarmEvent,
    RemediationCompleteEvent,
    RemediationStatus,
    Severity,
)
from shared.model import Model
from shared.settings import Settings

__all__ = [
    "Member",
    "Noted",
    "StormPolicy",
    "StormStore",
    "StormView",
    "bundles",
    "member_of",
    "scopes_of",
]

LEASE_S = 60.0
ENDED_TTL_S = 86_400


class StormPolicy(Model):
    threshold: int = Field(default=5, ge=0)  # 0: never bundle
    window_s: float = 60.0
    hold_s: float = 3.0
    quiet_s: float = 60.0

    @classmethod
    def from_settings(cls, s: Settings) -> StormPolicy:
        return cls(
            threshold=s.alert_storm_threshold,
            window_s=s.alert_storm_window_s,
            hold_s=s.alert_storm_hold_s,
            quiet_s=s.alert_storm_quiet_s,
        )

    @property
    def enabled(self) -> bool:
        return self.threshold > 0


class Member(Model):
    """One failure in a storm, as the storm's messages list it."""

    key: str
    container: str
    host: str
    kind: str
    outcome: str  # what HemoStat did: "restart succeeded", "escalated: crash_loop", ...
    state: str  # healed | failed | needs_person | nothing_done
    severity: Severity
    at: float


def bundles(event: Envelope) -> bool:
    """Failures are bundled; a question to people (an approval request, and how its proposal
    ended) and a host's liveness are always their own message."""
    if isinstance(event, RemediationCompleteEvent):
        return event.payload.proposal_id is None
    if isinstance(event, EscalationEvent):
        # A host no longer watched is news of its own, never one line of a storm.
        return not (event.payload.guard or "").startswith("host_")
    return isinstance(event, FalseAlarmEvent)


def scopes_of(event: Envelope) -> list[str]:
    kind = _kind(event)
    return [f"host:{event.subject.host}", *([f"kind:{kind}"] if kind else [])]


def _kind(event: Envelope) -> str:
    payload: Any = getattr(event, "payload", None)
    kind = getattr(payload, "alert_kind", None)
    if kind is not None:
        return str(kind)
    if isinstance(event, EscalationEvent):
        return f"escalation:{event.payload.guard or 'none'}"
    return ""


_STATE = {
    RemediationStatus.SUCCEEDED: "healed",
    RemediationStatus.FAILED: "failed",
    RemediationStatus.PENDING_APPROVAL: "needs_person",
}


def member_of(event: Envelope, at: float) -> Member:
    outcome, state = "", "nothing_done"
    if isinstance(event, RemediationCompleteEvent):
        p = event.payload
        what = f"would {p.action_type}" if p.dry_run else p.action_type
        outcome = f"{what} {p.status.value}" + (f" ({p.guard})" if p.guard else "")
        state = _STATE.get(p.status, "nothing_done")
        if p.status is RemediationStatus.REJECTED and p.guard in ("crash_loop", "circuit_breaker"):
            state = "needs_person"
    elif isinstance(event, EscalationEvent):
        outcome, state = f"escalated: {event.payload.guard or 'needs a person'}", "needs_person"
    elif isinstance(event, FalseAlarmEvent):
        outcome = "false alarm"
    return Member(
        key=event.idempotency_key,
        container=event.subject.display,
        host=event.subject.host,
        kind=_kind(event) or "-",
        outcome=outcome,
        state=state,
        severity=event.severity,
        at=at,
    )


class Noted(StrEnum):
    ALONE = "alone"  # no storm and no hold: send it now, on its own
    HELD = "held"  # waits in the outbox for a storm to form
    STARTED = "started"  # it started a storm (told at once)
    ABSORBED = "absorbed"  # an open storm took it


@dataclass(frozen=True)
class StormView:
    """A storm as its messages tell it."""

    id: str
    scope: str
    started: float
    last: float
    told_alone: int
    ended: bool
    members: list[Member]
    channels: frozenset[str]


# KEYS: outbox, outbox data, open storms, then (recent, active) per scope.
# ARGV: now, window, threshold, hold, member key, member JSON, item JSON, new storm id,
#       storm prefix, channels (comma separated).
_NOTE = """
local now, window, threshold, hold = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4])
local mkey, member, prefix = ARGV[5], ARGV[6], ARGV[9]
local nscopes = (#KEYS - 3) / 2
local function join(id)
  local s = prefix .. id
  if redis.call('HSETNX', s .. ':members', mkey, member) == 1 then
    redis.call('HINCRBY', s, 'count', 1)
  end
  for ch in string.gmatch(ARGV[10], '[^,]+') do redis.call('SADD', s .. ':channels', ch) end
  redis.call('HSET', s, 'last', ARGV[1])
  redis.call('ZADD', KEYS[3], now, id)
end
for i = 1, nscopes do
  local active = redis.call('GET', KEYS[3 + 2 * i])
  if active then
    join(active)
    return {'absorbed', active}
  end
end
for i = 1, nscopes do
  local recent = KEYS[2 + 2 * i]
  redis.call('ZADD', recent, now, mkey)
  redis.call('ZREMRANGEBYSCORE', recent, '-inf', now - window)
  redis.call('EXPIRE', recent, math.ceil(window) + 60)
end
if threshold > 0 then
  for i = 1, nscopes do
    local recent = KEYS[2 + 2 * i]
    if redis.call('ZCARD', recent) >= threshold then
      local id = ARGV[8]
      local s = prefix .. id
      redis.call('SET', KEYS[3 + 2 * i], id)
      redis.call('HSET', s, 'id', id, 'scope', string.sub(recent, #ARGV[11] + 1),
                 'started', ARGV[1], 'last', ARGV[1], 'count', 0, 'told_alone', 0)
      for _, key in ipairs(redis.call('ZRANGE', recent, 0, -1)) do
        local item = 'single:' .. key
        local data = redis.call('HGET', KEYS[2], item)
        if key ~= mkey and data and redis.call('ZSCORE', KEYS[1], item) then
          -- still waiting: it joins the storm instead of going out alone
          redis.call('ZREM', KEYS[1], item)
          redis.call('HDEL', KEYS[2], item)
          local held = cjson.decode(data)
          redis.call('HSETNX', s .. ':members', key, held['member'])
          redis.call('HINCRBY', s, 'count', 1)
          for _, ch in ipairs(held['targets']) do redis.call('SADD', s .. ':channels', ch) end
        elseif key ~= mkey then
          redis.call('HINCRBY', s, 'told_alone', 1)
        end
      end
      join(id)
      redis.call('ZADD', KEYS[1], now, 'start:' .. id)
      redis.call('HSET', KEYS[2], 'start:' .. id, '{}')
      return {'started', id}
    end
  end
end
if hold <= 0 then return {'alone', ''} end
redis.call('ZADD', KEYS[1], now + hold, 'single:' .. mkey)
redis.call('HSET', KEYS[2], 'single:' .. mkey, ARGV[7])
return {'held', ''}
"""

# KEYS: outbox, outbox data, leased. ARGV: now, lease, limit.
_DUE = """
local now = tonumber(ARGV[1])
for _, item in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, ARGV[3])) do
  redis.call('ZREM', KEYS[3], item)
  redis.call('ZADD', KEYS[1], now, item)
end
local out = {}
for _, item in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[3])) do
  redis.call('ZREM', KEYS[1], item)
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[2]), item)
  table.insert(out, item)
  table.insert(out, redis.call('HGET', KEYS[2], item) or '{}')
end
return out
"""

# KEYS: open storms, outbox, outbox data.
# ARGV: now, quiet, storm prefix, active prefix, ttl, recent prefix.
_ENDS = """
local now = tonumber(ARGV[1])
local ended = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))) do
  local s = ARGV[3] .. id
  local scope = redis.call('HGET', s, 'scope')
  if scope and redis.call('GET', ARGV[4] .. scope) == id then
    redis.call('DEL', ARGV[4] .. scope)
    -- the count starts again: the storm's failures do not make the next one a storm
    redis.call('DEL', ARGV[6] .. scope)
  end
  redis.call('ZREM', KEYS[1], id)
  redis.call('HSET', s, 'ended', ARGV[1])
  for _, k in ipairs({s, s .. ':members', s .. ':channels'}) do
    redis.call('EXPIRE', k, ARGV[5])
  end
  redis.call('ZADD', KEYS[2], now, 'end:' .. id)
  redis.call('HSET', KEYS[3], 'end:' .. id, '{}')
  table.insert(ended, id)
end
return ended
"""


class StormStore:
    def __init__(self, redis: Redis, policy: StormPolicy) -> None:
        self.redis = redis
        self.policy = policy
        self._note = redis.register_script(_NOTE)
        self._due = redis.register_script(_DUE)
        self._ends = redis.register_script(_ENDS)

    async def note(
        self, event: Envelope, member: Member, targets: frozenset[str], now: float
    ) -> tuple[Noted, str]:
        """Count the failure in its scopes; say what happens to its message."""
        names = [keys.ALERT_OUTBOX, keys.ALERT_OUTBOX_DATA, keys.ALERT_STORMS_OPEN]
        for scope in scopes_of(event):
            names += [keys.ALERT_STORM_RECENT + scope, keys.ALERT_STORM_ACTIVE + scope]
        p = self.policy
        item = json.dumps(
            {
                "event": event.model_dump_json(),
                "member": member.model_dump_json(),
                "targets": sorted(targets),
            }
        )
        result: list[Any] = await self._note(
            keys=names,
            args=[
                f"{now:.6f}",
                p.window_s,
                p.threshold,
                p.hold_s,
                member.key,
                member.model_dump_json(),
                item,
                f"s-{secrets.token_hex(5)}",
                keys.ALERT_STORM,
                ",".join(sorted(targets)),
                keys.ALERT_STORM_RECENT,
            ],
        )
        return Noted(str(result[0])), str(result[1])

    async def due(self, now: float, limit: int = 100) -> list[tuple[str, dict[str, Any]]]:
        """Outbox items due now, each leased to this caller for LEASE_S."""
        flat: list[Any] = await self._due(
            keys=[keys.ALERT_OUTBOX, keys.ALERT_OUTBOX_DATA, keys.ALERT_OUTBOX_LEASED],
            args=[f"{now:.6f}", LEASE_S, limit],
        )
        return [(str(flat[i]), json.loads(flat[i + 1])) for i in range(0, len(flat), 2)]

    async def sent(self, item: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(keys.ALERT_OUTBOX_LEASED, item)
        pipe.hdel(keys.ALERT_OUTBOX_DATA, item)
        await pipe.execute()

    async def end_quiet(self, now: float) -> list[str]:
        """Storms with no new failure for `quiet_s` end; their last message is queued."""
        ended: list[Any] = await self._ends(
            keys=[keys.ALERT_STORMS_OPEN, keys.ALERT_OUTBOX, keys.ALERT_OUTBOX_DATA],
            args=[
                f"{now:.6f}",
                self.policy.quiet_s,
                keys.ALERT_STORM,
                keys.ALERT_STORM_ACTIVE,
                ENDED_TTL_S,
                keys.ALERT_STORM_RECENT,
            ],
        )
        return [str(i) for i in ended]

    async def view(self, storm_id: str) -> StormView | None:
        base = keys.ALERT_STORM + storm_id
        data: dict[Any, Any] = await self.redis.hgetall(base)
        if not data:
            return None
        raw: dict[Any, Any] = await self.redis.hgetall(base + ":members")
        members = sorted(
            (Member.model_validate_json(v) for v in raw.values()), key=lambda m: (m.at, m.container)
        )
        channels: set[Any] = await self.redis.smembers(base + ":channels")
        return StormView(
            id=storm_id,
            scope=str(data.get("scope", "")),
            started=float(data.get("started") or 0),
            last=float(data.get("last") or 0),
            told_alone=int(data.get("told_alone") or 0),
            ended=bool(data.get("ended")),
            members=members,
            channels=frozenset(str(c) for c in channels),
        )

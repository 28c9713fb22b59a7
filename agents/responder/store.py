"""The Responder's state in Redis. Every write that must be atomic across replicas is one Lua
script; everything else is a plain read. Keys are in `shared.keys`.

- a **request record** (`REQUEST<key>`) per idempotency key: `received → executing → done`, who
  holds it, which stream entry delivered it, the verification plan, the outcome and whether its
  side effects (audit, publish) went out;
- the **lease** per container (SET NX PX): held while deciding, renewed by a keeper; at the gate it
  is extended to the action's verification deadline, so it never lapses while the action is in
  flight and needs no renewal then;
- **guard state** per container as values compared with `now` (cooldown_until, failures,
  escalated_until) plus the action, restart and death histories;
- **scheduled verifications** (`VERIFY_DUE<host>`): a sorted set any replica of the host claims
  from.

Guard keys and queues belong to one host (`HEMOSTAT_HOST_NAME`): in a fleet, a container on
another host is never looked at, and the same container name on two hosts shares nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis

from agents.responder.core import Claim, ClaimStatus, GuardFacts, VerifyPlan
from shared import keys
from shared.errors import ActionRejected
from shared.log import Logger, get_logger
from shared.redis_client import CONNECTION_ERRORS

__all__ = ["LeaseKeeper", "RequestStore", "ResponderState", "StoredRequest"]

HISTORY_TTL_S = 7 * 86_400

_CLAIM = """
local phase = redis.call('HGET', KEYS[1], 'phase')
if not phase then
  redis.call('HSET', KEYS[1], 'phase', 'received', 'entry', ARGV[1], 'holder', ARGV[2],
             'received_at', ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  return {'new', 'received', ARGV[2]}
end
local holder = redis.call('HGET', KEYS[1], 'holder') or ''
if phase == 'done' then return {'done', phase, holder} end
if redis.call('HGET', KEYS[1], 'entry') == ARGV[1] then
  if phase == 'received' then redis.call('HSET', KEYS[1], 'holder', ARGV[2]) end
  return {'redelivered', phase, holder}
end
return {'twin', phase, holder}
"""

# The one step between deciding and acting: only the lease's and the record's holder passes, and
# it books the action before Docker hears of it, so nothing can slip in while it is in flight.
_GATE = """
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 'lease_lost' end
local phase = redis.call('HGET', KEYS[1], 'phase')
if phase ~= 'received' then return 'phase_' .. tostring(phase) end
if redis.call('HGET', KEYS[1], 'holder') ~= ARGV[1] then return 'claim_lost' end
local now = tonumber(ARGV[3])
local deadline = tonumber(ARGV[4])
local ttl = tonumber(ARGV[11])
redis.call('HSET', KEYS[1], 'phase', 'executing', 'issued', '0', 'issued_at', ARGV[3],
           'deadline', ARGV[4], 'action_type', ARGV[5], 'plan', ARGV[6], 'context', ARGV[7],
           'lease', ARGV[2], 'container', ARGV[12])
redis.call('PEXPIRE', KEYS[2], math.floor((deadline - now) * 1000) + 5000)
local member = ARGV[3] .. ':' .. ARGV[5]
redis.call('ZADD', KEYS[4], now, member)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - ttl)
redis.call('EXPIRE', KEYS[4], ttl)
if ARGV[10] == '1' then
  redis.call('ZADD', KEYS[5], now, member)
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - ttl)
  redis.call('EXPIRE', KEYS[5], ttl)
end
local field = 'cooldown_until:' .. ARGV[5]
if deadline > tonumber(redis.call('HGET', KEYS[6], field) or '0') then
  redis.call('HSET', KEYS[6], field, ARGV[4])
end
redis.call('EXPIRE', KEYS[6], ttl)
redis.call('ZADD', KEYS[3], ARGV[8], ARGV[9])
return 'ok'
"""

_FINISH = """
local phase = redis.call('HGET', KEYS[1], 'phase')
if phase == 'done' then return 'already' end
if not phase then return 'missing' end
if ARGV[3] ~= '' and phase == 'received' and redis.call('HGET', KEYS[1], 'holder') ~= ARGV[3] then
  return 'claim_lost'
end
redis.call('HSET', KEYS[1], 'phase', 'done', 'outcome', ARGV[1], 'audit', ARGV[2],
           'published', '0', 'audited', '0', 'proposal_closed', '0')
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[4], 'failures:' .. ARGV[5], ARGV[6],
             'cooldown_until:' .. ARGV[5], ARGV[7])
  redis.call('EXPIRE', KEYS[4], ARGV[8])
end
if ARGV[4] ~= '' and redis.call('GET', KEYS[2]) == ARGV[4] then redis.call('DEL', KEYS[2]) end
return 'ok'
"""

_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], member) end
return due
"""

# GT: a renewal never shortens the lease the gate extended to the action's deadline.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2], 'GT')
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_ESCALATE_ONCE = """
if tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') <= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
return 0
"""


class StoredRequest:
    """One request record as read from Redis."""

    def __init__(self, key: str, data: dict[str, str]) -> None:
        self.key = key
        self.data = data

    @property
    def exists(self) -> bool:
        return bool(self.data)

    @property
    def phase(self) -> str:
        return self.data.get("phase", "")

    @property
    def plan(self) -> VerifyPlan | None:
        raw = self.data.get("plan")
        return VerifyPlan.model_validate_json(raw) if raw else None

    @property
    def context(self) -> dict[str, Any]:
        raw = self.data.get("context")
        return dict(json.loads(raw)) if raw else {}

    def flag(self, name: str) -> bool:
        return self.data.get(name) == "1"

    def number(self, name: str) -> float | None:
        raw = self.data.get(name)
        return float(raw) if raw else None


class RequestStore:
    """Request records (any host's, keyed by idempotency key) and this host's queues."""

    def __init__(self, redis: Redis, host: str) -> None:
        self.redis = redis
        self.host = host
        self.verify_key = keys.VERIFY_DUE + host
        self.deferred_key = keys.DEFERRED + host
        self._claim = redis.register_script(_CLAIM)
        self._gate = redis.register_script(_GATE)
        self._finish = redis.register_script(_FINISH)
        self._due = redis.register_script(_DUE)

    @staticmethod
    def key(idempotency_key: str) -> str:
        return keys.REQUEST + idempotency_key

    async def claim(self, record_key: str, entry: str, holder: str, now: float) -> Claim:
        status, phase, who = await self._claim(
            keys=[record_key], args=[entry, holder, f"{now:.6f}", HISTORY_TTL_S]
        )
        return Claim(status=ClaimStatus(str(status)), phase=str(phase), holder=str(who))

    async def load(self, record_key: str) -> StoredRequest:
        data: dict[Any, Any] = await self.redis.hgetall(record_key)
        return StoredRequest(record_key, {str(k): str(v) for k, v in data.items()})

    async def gate(
        self,
        record_key: str,
        *,
        holder: str,
        lease_token: str,
        container_id: str,
        action_type: str,
        now: float,
        plan: VerifyPlan,
        context: dict[str, Any],
        first_check_at: float,
        restarting: bool,
    ) -> None:
        """Book the action and schedule its verification, atomically; raises ActionRejected."""
        result = await self._gate(
            keys=[
                record_key,
                keys.LEASE + self._on(container_id),
                self.verify_key,
                keys.ACTIONS + self._on(container_id),
                keys.RESTARTS + self._on(container_id),
                keys.GUARD + self._on(container_id),
            ],
            args=[
                holder,
                lease_token,
                f"{now:.6f}",
                f"{plan.deadline:.6f}",
                action_type,
                plan.model_dump_json(),
                json.dumps(context),
                f"{first_check_at:.6f}",
                record_key,
                "1" if restarting else "0",
                HISTORY_TTL_S,
                container_id,
            ],
        )
        if str(result) != "ok":
            raise ActionRejected("gate", str(result))

    async def mark(self, record_key: str, **fields: str) -> None:
        await self.redis.hset(record_key, mapping=fields)  # type: ignore[arg-type]

    async def finish(
        self,
        record_key: str,
        *,
        outcome_json: str,
        audit_json: str,
        holder: str = "",
        lease: tuple[str, str] | None = None,  # (container id, token) to release
        booking: tuple[str, str, int, float] | None = None,  # container, type, failures, until
    ) -> str:
        """Store the outcome once (`ok`; `already` when someone else did, `claim_lost` when the
        record was taken over) and book the result; side effects follow in `deliver`."""
        container = (lease[0] if lease else None) or (booking[0] if booking else "")
        args: list[Any] = [
            outcome_json,
            audit_json,
            holder,
            lease[1] if lease else "",
            booking[1] if booking else "",
            str(booking[2]) if booking else "",
            f"{booking[3]:.6f}" if booking else "",
            HISTORY_TTL_S,
        ]
        result = await self._finish(
            keys=[
                record_key,
                keys.LEASE + self._on(container),
                self.verify_key,
                keys.GUARD + self._on(container),
            ],
            args=args,
        )
        return str(result)

    def _on(self, container_id: str) -> str:
        return keys.on_host(self.host, container_id)

    async def due(
        self, now: float, hold_until: float, limit: int, *, deferred: bool = False
    ) -> list[str]:
        """This host's verifications (or deferred requests) due now; each is held until
        `hold_until` so one replica takes it."""
        queue = self.deferred_key if deferred else self.verify_key
        members: list[Any] = await self._due(
            keys=[queue], args=[f"{now:.6f}", f"{hold_until:.6f}", limit]
        )
        return [str(m) for m in members]

    async def watch_orphan(
        self, record_key: str, request_json: str, due: float, *, again: bool = False
    ) -> None:
        """Check at `due` that another host's request was taken (the first watcher sets the
        time; `again` moves it)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.zadd(keys.ORPHANS, {record_key: due}, nx=not again)
        pipe.hsetnx(keys.ORPHAN_DATA, record_key, request_json)
        await pipe.execute()

    async def due_orphans(self, now: float, hold_until: float) -> list[tuple[str, str]]:
        """Watched requests due now (held until `hold_until` so one replica looks at each)."""
        members = await self._due(keys=[keys.ORPHANS], args=[f"{now:.6f}", f"{hold_until:.6f}", 64])
        out = []
        for member in members:
            raw = await self.redis.hget(keys.ORPHAN_DATA, member)
            if raw:
                out.append((str(member), str(raw)))
            else:
                await self.redis.zrem(keys.ORPHANS, member)
        return out

    async def forget_orphan(self, record_key: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(keys.ORPHANS, record_key)
        pipe.hdel(keys.ORPHAN_DATA, record_key)
        await pipe.execute()

    async def defer(self, record_key: str, context: dict[str, Any], until: float) -> None:
        """Keep a request (still `received`) to decide again at `until`."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(record_key, mapping={"deferred": json.dumps(context)})
        pipe.zadd(self.deferred_key, {record_key: until})
        await pipe.execute()

    async def undefer(self, record_key: str) -> None:
        await self.redis.zrem(self.deferred_key, record_key)

    async def schedule(self, record_key: str, at: float) -> None:
        await self.redis.zadd(self.verify_key, {record_key: at})

    async def unschedule(self, record_key: str) -> None:
        await self.redis.zrem(self.verify_key, record_key)

    async def is_scheduled(self, record_key: str) -> bool:
        return await self.redis.zscore(self.verify_key, record_key) is not None


class ResponderState:
    """Leases and guard state per container on this host."""

    def __init__(self, redis: Redis, lease_ttl_s: float, host: str) -> None:
        self.redis = redis
        self.host = host
        self.lease_ttl_ms = int(lease_ttl_s * 1000)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._escalate = redis.register_script(_ESCALATE_ONCE)

    def _on(self, container_id: str) -> str:
        return keys.on_host(self.host, container_id)

    @staticmethod
    def new_token(owner: str) -> str:
        return f"{owner}:{secrets.token_hex(4)}"

    async def acquire(self, container_id: str, token: str) -> bool:
        return bool(
            await self.redis.set(
                keys.LEASE + self._on(container_id), token, nx=True, px=self.lease_ttl_ms
            )
        )

    async def release(self, container_id: str, token: str) -> None:
        await self._release(keys=[keys.LEASE + self._on(container_id)], args=[token])

    async def lease_holder(self, container_id: str) -> str | None:
        value = await self.redis.get(keys.LEASE + self._on(container_id))
        return str(value) if value else None

    @contextlib.asynccontextmanager
    async def keeper(
        self, container_id: str, token: str, log: Logger | None = None
    ) -> AsyncIterator[LeaseKeeper]:
        """Renews a held lease until the block ends (or the gate takes it over)."""
        keeper = LeaseKeeper(self, container_id, token, log or get_logger(__name__))
        task = asyncio.create_task(keeper.run())
        try:
            yield keeper
        finally:
            keeper.stopped = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def read(
        self, container_id: str, action_type: str, since: float, lease_acquired: bool
    ) -> GuardFacts:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(keys.GUARD + self._on(container_id))
        pipe.zrangebyscore(keys.ACTIONS + self._on(container_id), since, "+inf", withscores=True)
        pipe.zrangebyscore(keys.RESTARTS + self._on(container_id), since, "+inf", withscores=True)
        pipe.zrangebyscore(keys.DEATHS + self._on(container_id), since, "+inf", withscores=True)
        pipe.get(keys.LEASE + self._on(container_id))
        guard, actions, restarts, deaths, holder = await pipe.execute()
        guard = {str(k): str(v) for k, v in (guard or {}).items()}
        escalated = {
            k.removeprefix("escalated_until:"): float(v)
            for k, v in guard.items()
            if k.startswith("escalated_until:")
        }
        return GuardFacts(
            lease_acquired=lease_acquired,
            lease_holder=None if lease_acquired else (str(holder) if holder else "nobody"),
            cooldown_until=float(guard.get(f"cooldown_until:{action_type}", 0.0)),
            failures=int(guard.get(f"failures:{action_type}", 0)),
            action_times=tuple(float(s) for _, s in actions),
            restart_times=tuple(float(s) for _, s in restarts),
            death_times=tuple(float(s) for _, s in deaths),
            escalated_until=escalated,
        )

    async def failures(self, container_id: str, action_type: str) -> int:
        raw = await self.redis.hget(keys.GUARD + self._on(container_id), f"failures:{action_type}")
        return int(raw or 0)

    async def claim_escalation(
        self, container_id: str, guard: str, now: float, until: float
    ) -> bool:
        """True for exactly one replica per container, guard and window."""
        won = await self._escalate(
            keys=[keys.GUARD + self._on(container_id)],
            args=[f"escalated_until:{guard}", f"{now:.6f}", f"{until:.6f}"],
        )
        return bool(won)


class LeaseKeeper:
    """Renews a lease every third of its TTL. Errors are logged and retried, never the end of
    renewal; a renewal that finds the lease gone marks it lost, and the gate then refuses."""

    def __init__(self, state: ResponderState, container_id: str, token: str, log: Logger) -> None:
        self.state = state
        self.container_id = container_id
        self.token = token
        self.log = log
        self.lost = False
        self.stopped = False

    async def run(self) -> None:
        interval = self.state.lease_ttl_ms / 3000
        while not self.stopped:
            await asyncio.sleep(interval)
            try:
                renewed = await self.state._renew(
                    keys=[keys.LEASE + self.state._on(self.container_id)],
                    args=[self.token, self.state.lease_ttl_ms],
                )
            except CONNECTION_ERRORS as exc:
                self.log.warning(
                    "responder.lease_renewal_failed",
                    container=self.container_id[:12],
                    error=str(exc),
                )
                interval = max(0.1, self.state.lease_ttl_ms / 10_000)  # retry sooner
                continue
            if not renewed:
                self.lost = True
                self.log.error("responder.lease_lost", container=self.container_id[:12])
                return
            interval = self.state.lease_ttl_ms / 3000

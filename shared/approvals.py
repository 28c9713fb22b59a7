"""Approval proposals:

    PENDING → APPROVED | DENIED | EXPIRED | CANCELLED (the incident resolved by itself)
    APPROVED → EXECUTING | FAILED (not run in time)
    EXECUTING → SUCCEEDED | FAILED | DRY_RUN | BLOCKED (what was approved changed since)

Every transition is one compare-and-set (a Lua script), so the first decision wins and a decision
on an expired or already-decided proposal is refused with the reason. Every time in a proposal is
Redis's own clock (`TIME` inside the script), never the deciding client's: a CLI on a laptop whose
clock is an hour slow cannot approve what already expired. The CLI and the dashboard decide
through `decide()` (`decide_sync()` from their blocking code): the same CAS, then an
`approval_decision` event for the Responder; they list proposals with `read_recent()` and
`read_pending()`; the Responder and the chat go through `ApprovalStore`. With
HEMOSTAT_REDIS_WAIT_REPLICAS, a decision is reported done only once that many replicas confirmed
it (WAIT after the event, which covers the CAS before it); otherwise `NotReplicated` says so.

- `hemostat:proposal:<id>`       hash: state, times, the request, who decided and why
- `hemostat:proposals`           index: id -> created_at
- `hemostat:proposals:pending`   id -> expires_at (what the Responder's expiry loop watches)
- `hemostat:proposal:req:<key>`  the proposal made for a request, so a retry never makes two
- `hemostat:proposals:incident:<id>`  the proposals made in an incident (withdrawn when it resolves)

A proposal binds to what was proposed: `binding` is a hash of the runbook id and version, the
action with its parameters and the target container. An approval is for that, nothing else.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from redis import Redis as SyncRedis
from redis.asyncio import Redis

from shared import __version__, keys
from shared.bus import Bus
from shared.clock import to_datetime
from shared.errors import ApprovalError, NotReplicated
from shared.events import (
    ApprovalDecision,
    ApprovalDecisionEvent,
    Decision,
    RemediationNeededEvent,
    Severity,
    Source,
    make_event,
    parse_event,
)
from shared.model import Model
from shared.redis_client import connect
from shared.replication import Replication

if TYPE_CHECKING:
    from shared.settings import Settings

__all__ = [
    "DECIDED_TTL_S",
    "INDEX",
    "PENDING",
    "PROPOSAL_PREFIX",
    "TERMINAL",
    "ApprovalStore",
    "Proposal",
    "ProposalState",
    "decide",
    "decide_sync",
    "read_pending",
    "read_recent",
]

PROPOSAL_PREFIX = keys.PROPOSAL
INDEX = keys.PROPOSALS
PENDING = keys.PROPOSALS_PENDING
DECIDED_TTL_S = 30 * 86_400


class ProposalState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    EXECUTING = "executing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DRY_RUN = "dry_run"  # approved and run while dry-run was on: nothing was changed
    CANCELLED = "cancelled"  # withdrawn while pending: the incident resolved by itself
    BLOCKED = "blocked"  # approved, not run: the runbook, action or target changed since


TERMINAL = {
    ProposalState.DENIED,
    ProposalState.EXPIRED,
    ProposalState.SUCCEEDED,
    ProposalState.FAILED,
    ProposalState.DRY_RUN,
    ProposalState.CANCELLED,
    ProposalState.BLOCKED,
}

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

_TRANSITION = (
    _NOW
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'refused', 'missing'} end
local to = ARGV[1]
local deadline = tonumber(redis.call('HGET', KEYS[1], 'expires_at'))
if state == 'pending' and to ~= 'expired' and deadline <= now then
  return {'refused', 'expired'}
end
if state == 'pending' and to == 'expired' and deadline > now then
  return {'refused', 'not_due'}
end
local allowed = false
for i = 4, #ARGV do
  if state == ARGV[i] then allowed = true end
end
if not allowed then return {'refused', state} end
local stamp = string.format('%.6f', now)
redis.call('HSET', KEYS[1], 'state', to, 'updated_at', stamp)
if to == 'approved' or to == 'denied' or to == 'expired' or to == 'cancelled' then
  redis.call('HSET', KEYS[1], 'decided_by', ARGV[2], 'decided_at', stamp,
             'decision_reason', ARGV[3])
end
if to == 'executing' then
  redis.call('HSET', KEYS[1], 'executing_at', stamp, 'executing_by', ARGV[2])
end
if to == 'succeeded' or to == 'failed' or to == 'dry_run' or to == 'blocked' then
  redis.call('HSET', KEYS[1], 'outcome', ARGV[3])
end
if to ~= 'pending' then redis.call('ZREM', KEYS[2], KEYS[3]) end
if to ~= 'approved' and to ~= 'executing' then
  local ttl = tonumber(redis.call('HGET', KEYS[1], 'ttl_s') or '0')
  if ttl and ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl) end
end
return {'ok', state}
"""
)

# One proposal per request, however often its creation is retried.
_CREATE = (
    _NOW
    + """
local existing = redis.call('GET', KEYS[4])
if existing then return {existing, 0} end
local id = ARGV[1]
local stamp = string.format('%.6f', now)
local expires = string.format('%.6f', now + tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'id', id, 'state', 'pending', 'created_at', stamp,
           'expires_at', expires, 'updated_at', stamp, 'ttl_s', ARGV[3])
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZADD', KEYS[2], now, id)
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[2]), id)
redis.call('SET', KEYS[4], id, 'EX', ARGV[3])
if KEYS[5] then
  redis.call('SADD', KEYS[5], id)
  redis.call('EXPIRE', KEYS[5], ARGV[3])
end
return {id, 1}
"""
)


class Proposal(Model):
    id: str
    state: ProposalState
    created_at: float
    expires_at: float
    updated_at: float
    request: str  # the remediation_needed event (JSON) this proposal would execute
    container_id: str = ""
    container_name: str = ""
    runbook_id: str = ""
    action_id: str = ""
    action_type: str = ""
    why: str = ""  # why a human must decide
    incident_id: str = ""
    severity: str = ""
    binding: str = ""  # what the approval is for (see `binding()`)
    decided_by: str = ""
    decided_at: float | None = None
    decision_reason: str = ""
    executing_at: float | None = None
    executing_by: str = ""
    outcome: str = ""

    def request_event(self) -> RemediationNeededEvent:
        event = parse_event(self.request)
        assert isinstance(event, RemediationNeededEvent)
        return event

    @property
    def approve_command(self) -> str:
        return f"hemostat approve {self.id}"

    @property
    def deny_command(self) -> str:
        return f'hemostat deny {self.id} --reason "..."'


def _refusal(proposal_id: str, state: str, proposal: Proposal | None) -> str:
    if state == "missing":
        return f"no proposal {proposal_id!r}"
    if state == "not_due":
        return f"proposal {proposal_id} has not reached its deadline"
    if state == "expired":
        return f"proposal {proposal_id} expired (silence means no action)"
    by = f" by {proposal.decided_by}" if proposal and proposal.decided_by else ""
    return f"proposal {proposal_id} is already {state}{by}"


class ApprovalStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._transition = redis.register_script(_TRANSITION)
        self._create = redis.register_script(_CREATE)

    async def server_time(self) -> float:
        seconds, micros = await self.redis.time()
        return float(seconds) + float(micros) / 1e6

    async def create(
        self,
        request: RemediationNeededEvent,
        timeout_s: float,
        why: str,
        *,
        binding: str = "",
        key: str | None = None,
    ) -> Proposal:
        """The proposal for `request` (keyed by `key`, default its idempotency key): made once,
        returned as it is on every later call. It expires `timeout_s` after creation."""
        fields = {
            "incident_id": request.incident_id or "",
            "severity": request.severity.value,
            "binding": binding,
            "request": request.model_dump_json(),
            "container_id": request.subject.container_id or "",
            "container_name": request.subject.container_name or "",
            "runbook_id": request.payload.runbook_id,
            "action_id": request.payload.action.id,
            "action_type": request.payload.action.type,
            "why": why[:500],
        }
        request_key = key or request.idempotency_key
        new_id = f"p-{secrets.token_hex(5)}"
        names = [PROPOSAL_PREFIX + new_id, INDEX, PENDING, keys.PROPOSAL_BY_REQUEST + request_key]
        if request.incident_id:
            names.append(keys.PROPOSALS_BY_INCIDENT + request.incident_id)
        proposal_id, _ = await self._create(
            keys=names,
            args=[new_id, f"{timeout_s:.3f}", DECIDED_TTL_S, *_flatten(fields)],
        )
        proposal = await self.get(str(proposal_id))
        assert proposal is not None
        return proposal

    async def get(self, proposal_id: str) -> Proposal | None:
        data: dict[Any, Any] = await self.redis.hgetall(PROPOSAL_PREFIX + proposal_id)
        return _from_hash(data)

    async def transition(
        self,
        proposal_id: str,
        to: ProposalState,
        allowed_from: set[ProposalState],
        *,
        actor: str = "",
        reason: str = "",
    ) -> ProposalState:
        """Atomically move to `to` if the state is one of `allowed_from` (on Redis's clock);
        returns the previous state, or raises ApprovalError saying why not."""
        result: list[Any] = await self._transition(
            keys=[PROPOSAL_PREFIX + proposal_id, PENDING, proposal_id],
            args=[to.value, actor, reason[:500], *sorted(s.value for s in allowed_from)],
        )
        status, state = str(result[0]), str(result[1])
        if status != "ok":
            raise ApprovalError(_refusal(proposal_id, state, await self.get(proposal_id)))
        return ProposalState(state)

    async def approve(self, proposal_id: str, actor: str) -> None:
        await self.transition(
            proposal_id, ProposalState.APPROVED, {ProposalState.PENDING}, actor=actor
        )

    async def deny(self, proposal_id: str, actor: str, reason: str) -> None:
        await self.transition(
            proposal_id, ProposalState.DENIED, {ProposalState.PENDING}, actor=actor, reason=reason
        )

    async def in_incident(self, incident_id: str) -> list[Proposal]:
        ids: set[Any] = await self.redis.smembers(keys.PROPOSALS_BY_INCIDENT + incident_id)
        found = [await self.get(str(i)) for i in sorted(ids)]
        return [p for p in found if p is not None]

    async def due_for_expiry(self) -> list[str]:
        """Pending proposals past their deadline on Redis's clock."""
        ids: list[Any] = await self.redis.zrangebyscore(PENDING, "-inf", await self.server_time())
        return [str(i) for i in ids]

    async def in_state(self, state: ProposalState, limit: int = 200) -> list[Proposal]:
        ids: list[Any] = await self.redis.zrevrange(INDEX, 0, 2000)
        out = []
        for proposal_id in ids:
            proposal = await self.get(str(proposal_id))
            if proposal is not None and proposal.state is state:
                out.append(proposal)
                if len(out) >= limit:
                    break
        return out

    async def recent(self, limit: int = 100) -> list[Proposal]:
        ids: list[Any] = await self.redis.zrevrange(INDEX, 0, limit - 1)
        proposals = [await self.get(str(i)) for i in ids]
        return [p for p in proposals if p is not None]


def _flatten(fields: dict[str, str]) -> list[str]:
    return [part for item in fields.items() for part in item]


def _from_hash(data: dict[Any, Any]) -> Proposal | None:
    """The stored hash as a Proposal; None once it expired (an empty hash)."""
    if not data:
        return None
    data.pop("ttl_s", None)
    return Proposal.model_validate(data)


def _read_many(redis: SyncRedis, ids: list[Any]) -> list[Proposal]:
    """The proposals of `ids` that still exist, in order, in one round trip."""
    pipe = redis.pipeline(transaction=False)
    for proposal_id in ids:
        pipe.hgetall(PROPOSAL_PREFIX + proposal_id)
    found = [_from_hash(data) for data in pipe.execute()]
    return [p for p in found if p is not None]


def read_recent(redis: SyncRedis, limit: int = 200) -> list[Proposal]:
    """The newest proposals, newest first, whatever their state, from a blocking client (the
    dashboard)."""
    ids: Any = redis.zrevrange(INDEX, 0, limit - 1)
    return _read_many(redis, ids)


def read_pending(redis: SyncRedis, limit: int = 100) -> list[Proposal]:
    """Proposals waiting for a decision, nearest deadline first, from a blocking client
    (`hemostat status`)."""
    ids: Any = redis.zrange(PENDING, 0, limit - 1)
    return [p for p in _read_many(redis, ids) if p.state is ProposalState.PENDING]


async def decide(
    redis: Redis,
    proposal_id: str,
    decision: Decision,
    actor: str,
    reason: str = "",
    via: str = "cli",
    replication: Replication | None = None,
) -> Proposal:
    """Approve or deny (first decision wins), then tell the Responder. Raises ApprovalError when
    refused, and NotReplicated when `replication` asks for replicas that did not confirm it."""
    store = ApprovalStore(redis)
    if decision is Decision.APPROVED:
        await store.approve(proposal_id, actor)
    else:
        await store.deny(proposal_id, actor, reason)
    proposal = await store.get(proposal_id)
    assert proposal is not None
    request = proposal.request_event()
    now = proposal.decided_at or time.time()
    event = make_event(
        ApprovalDecisionEvent,
        source=Source(agent=via, instance=actor, version=__version__),
        subject=request.subject,
        severity=Severity.INFO,
        payload=ApprovalDecision(
            proposal_id=proposal_id, decision=decision, actor=actor, reason=reason
        ),
        occurred_at=to_datetime(now),
        emitted_at=to_datetime(now),
        incident_id=request.incident_id,
        causation_id=request.id,
        idempotency_key=f"decision:{proposal_id}",
    )
    # If this publish fails, the Responder's sweep still finds the approved proposal.
    try:
        await Bus(redis).publish(event, replication=replication)
    except NotReplicated as exc:
        raise NotReplicated(
            f"{decision.value} {proposal_id} is recorded on the Redis primary but {exc}: a "
            "failover now could lose it; look at the proposal again before deciding anew",
            confirmed=exc.confirmed,
            wanted=exc.wanted,
        ) from exc
    return proposal


def decide_sync(
    settings: Settings,
    proposal_id: str,
    decision: Decision,
    actor: str,
    reason: str = "",
    via: str = "cli",
) -> Proposal:
    """`decide` for blocking code (the CLI, the dashboard): on a connection of its own, with the
    replication the settings ask for. Raises as `decide` does."""

    async def run() -> Proposal:
        redis = connect(settings)
        try:
            replication = Replication.from_settings(settings)
            return await decide(redis, proposal_id, decision, actor, reason, via, replication)
        finally:
            await redis.aclose()

    return asyncio.run(run())

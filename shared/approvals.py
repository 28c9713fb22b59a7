"""Approval proposals: PENDING → APPROVED | DENIED | EXPIRED → EXECUTING → SUCCEEDED | FAILED.

Every transition is one compare-and-set (a Lua script), so the first decision wins and a decision
on an expired or already-decided proposal is refused with the reason. The CLI and the dashboard
decide through `decide()`: the same CAS, then an `approval_decision` event for the Responder.

- `hemostat:proposal:<id>`      hash: state, times, the request, who decided and why
- `hemostat:proposals`          index: id -> created_at
- `hemostat:proposals:pending`  id -> expires_at (what the Responder's expiry loop watches)
"""

from __future__ import annotations

import secrets
import time
from enum import StrEnum
from typing import Any

from redis.asyncio import Redis

from shared import __version__
from shared.bus import Bus
from shared.clock import to_datetime
from shared.errors import ApprovalError
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

PROPOSAL_PREFIX = "hemostat:proposal:"
INDEX = "hemostat:proposals"
PENDING = "hemostat:proposals:pending"
DECIDED_TTL_S = 30 * 86_400


class ProposalState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    EXECUTING = "executing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


TERMINAL = {
    ProposalState.DENIED,
    ProposalState.EXPIRED,
    ProposalState.SUCCEEDED,
    ProposalState.FAILED,
}

_TRANSITION = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing', ''} end
local now = tonumber(ARGV[1])
local to = ARGV[2]
local deadline = tonumber(redis.call('HGET', KEYS[1], 'expires_at'))
if state == 'pending' and to ~= 'expired' and deadline <= now then
  return {'refused', 'expired'}
end
local allowed = false
for i = 5, #ARGV do
  if state == ARGV[i] then allowed = true end
end
if not allowed then return {'refused', state} end
redis.call('HSET', KEYS[1], 'state', to, 'updated_at', ARGV[1])
if to == 'approved' or to == 'denied' or to == 'expired' then
  redis.call('HSET', KEYS[1], 'decided_by', ARGV[3], 'decided_at', ARGV[1],
             'decision_reason', ARGV[4])
end
if to == 'succeeded' or to == 'failed' then
  redis.call('HSET', KEYS[1], 'outcome', ARGV[4])
end
if to ~= 'pending' then redis.call('ZREM', KEYS[2], KEYS[3]) end
if to == 'denied' or to == 'expired' or to == 'succeeded' or to == 'failed' then
  local ttl = tonumber(redis.call('HGET', KEYS[1], 'ttl_s') or '0')
  if ttl and ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl) end
end
return {'ok', state}
"""


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
    decided_by: str = ""
    decided_at: float | None = None
    decision_reason: str = ""
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
        return f"no proposal {proposal_id}"
    if state == "expired":
        return f"proposal {proposal_id} expired (silence means no action)"
    by = f" by {proposal.decided_by}" if proposal and proposal.decided_by else ""
    return f"proposal {proposal_id} is already {state}{by}"


class ApprovalStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._transition = redis.register_script(_TRANSITION)

    async def create(
        self, request: RemediationNeededEvent, timeout_s: float, now: float, why: str
    ) -> Proposal:
        proposal = Proposal(
            id=f"p-{secrets.token_hex(5)}",
            state=ProposalState.PENDING,
            created_at=now,
            expires_at=now + timeout_s,
            updated_at=now,
            request=request.model_dump_json(),
            container_id=request.subject.container_id or "",
            container_name=request.subject.container_name or "",
            runbook_id=request.payload.runbook_id,
            action_id=request.payload.action.id,
            action_type=request.payload.action.type,
            why=why[:500],
        )
        fields = {k: str(v) for k, v in proposal.model_dump(mode="json").items() if v is not None}
        fields["ttl_s"] = str(DECIDED_TTL_S)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(PROPOSAL_PREFIX + proposal.id, mapping=fields)  # type: ignore[arg-type]
        pipe.zadd(INDEX, {proposal.id: now})
        pipe.zadd(PENDING, {proposal.id: proposal.expires_at})
        await pipe.execute()
        return proposal

    async def get(self, proposal_id: str) -> Proposal | None:
        data: dict[Any, Any] = await self.redis.hgetall(PROPOSAL_PREFIX + proposal_id)
        if not data:
            return None
        data.pop("ttl_s", None)
        return Proposal.model_validate(data)

    async def transition(
        self,
        proposal_id: str,
        to: ProposalState,
        allowed_from: set[ProposalState],
        *,
        now: float | None = None,
        actor: str = "",
        reason: str = "",
    ) -> ProposalState:
        """Atomically move to `to` if the state is one of `allowed_from`; returns the previous
        state, or raises ApprovalError saying why not."""
        result: list[Any] = await self._transition(
            keys=[PROPOSAL_PREFIX + proposal_id, PENDING, proposal_id],
            args=[
                f"{now or time.time():.3f}",
                to.value,
                actor,
                reason[:500],
                *sorted(s.value for s in allowed_from),
            ],
        )
        status, state = str(result[0]), str(result[1])
        if status != "ok":
            raise ApprovalError(_refusal(proposal_id, state, await self.get(proposal_id)))
        return ProposalState(state)

    async def approve(self, proposal_id: str, actor: str, now: float | None = None) -> None:
        await self.transition(
            proposal_id, ProposalState.APPROVED, {ProposalState.PENDING}, now=now, actor=actor
        )

    async def deny(
        self, proposal_id: str, actor: str, reason: str, now: float | None = None
    ) -> None:
        await self.transition(
            proposal_id,
            ProposalState.DENIED,
            {ProposalState.PENDING},
            now=now,
            actor=actor,
            reason=reason,
        )

    async def due_for_expiry(self, now: float) -> list[str]:
        ids: list[Any] = await self.redis.zrangebyscore(PENDING, "-inf", now)
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


async def decide(
    redis: Redis,
    proposal_id: str,
    decision: Decision,
    actor: str,
    reason: str = "",
    via: str = "cli",
) -> Proposal:
    """Approve or deny (first decision wins), then tell the Responder. Raises ApprovalError."""
    store = ApprovalStore(redis)
    if decision is Decision.APPROVED:
        await store.approve(proposal_id, actor)
    else:
        await store.deny(proposal_id, actor, reason)
    proposal = await store.get(proposal_id)
    assert proposal is not None
    request = proposal.request_event()
    now = time.time()
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
    await Bus(redis).publish(event)
    return proposal

"""What people already answered about proposals, per (container, action): the facts behind the
approval fatigue rules (`core.fatigue()`).

`hemostat:approval:fatigue:<host>/<container>:<action>` is one hash:

- `pending`               the proposal still waiting for an answer (one question at a time)
- `last_unanswered_at`    when the last proposal expired unanswered or was denied (any incident)
- `denied:<incident>`     who denied it in that incident
- `expired:<incident>`    how many proposals expired unanswered in that incident

and `<that key>:counted` is the set of expiries already counted.

Every write is one script, so replicas closing proposals at once count each expiry once.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from redis.asyncio import Redis

from agents.responder.core import FatigueFacts
from shared import keys
from shared.approvals import ApprovalStore, ProposalState

__all__ = ["Answer", "FatigueStore"]

TTL_S = 8 * 86_400


class Answer(StrEnum):
    """How a proposal ended, as far as asking again is concerned."""

    DENIED = "denied"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"  # cancelled (resolved by itself) or taken up (approved)


# KEYS[1] the hash; ARGV: proposal id, answer, incident, actor, now, ttl.
# Returns the expiries in the incident after this one.
_CLOSE = """
if redis.call('HGET', KEYS[1], 'pending') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'pending')
end
local expired = tonumber(redis.call('HGET', KEYS[1], 'expired:' .. ARGV[3]) or '0')
if ARGV[2] == 'expired' then
  if redis.call('SADD', KEYS[1] .. ':counted', ARGV[1]) == 1 then
    expired = redis.call('HINCRBY', KEYS[1], 'expired:' .. ARGV[3], 1)
  end
  redis.call('EXPIRE', KEYS[1] .. ':counted', ARGV[6])
  redis.call('HSET', KEYS[1], 'last_unanswered_at', ARGV[5])
elseif ARGV[2] == 'denied' then
  redis.call('HSET', KEYS[1], 'denied:' .. ARGV[3], ARGV[4], 'last_unanswered_at', ARGV[5])
end
redis.call('EXPIRE', KEYS[1], ARGV[6])
return expired
"""


class FatigueStore:
    def __init__(self, redis: Redis, approvals: ApprovalStore) -> None:
        self.redis = redis
        self.approvals = approvals
        self._close = redis.register_script(_CLOSE)

    @staticmethod
    def key(host: str, container: str, action_id: str) -> str:
        return f"{keys.APPROVAL_FATIGUE}{keys.on_host(host, container)}:{action_id}"

    async def read(
        self, host: str, container: str, action_id: str, incident: str, request_key: str
    ) -> FatigueFacts:
        """The facts for a request (`request_key`: its idempotency key)."""
        data: dict[Any, Any] = await self.redis.hgetall(self.key(host, container, action_id))
        pending = data.get("pending") or None
        if pending:
            # Trust the proposal, not the note: a crash between closing it and this hash.
            proposal = await self.approvals.get(pending)
            if proposal is None or proposal.state is not ProposalState.PENDING:
                pending = None
            elif await self.redis.get(keys.PROPOSAL_BY_REQUEST + request_key) == pending:
                pending = None  # this request's own proposal: a retry finishes asking
        last = data.get("last_unanswered_at")
        return FatigueFacts(
            pending=pending,
            denied_by=data.get(f"denied:{incident}") or None,
            expired=int(data.get(f"expired:{incident}") or 0),
            last_unanswered_at=float(last) if last else None,
        )

    async def proposed(self, host: str, container: str, action_id: str, proposal_id: str) -> None:
        key = self.key(host, container, action_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, "pending", proposal_id)
        pipe.expire(key, TTL_S)
        await pipe.execute()

    async def answered(
        self,
        host: str,
        container: str,
        action_id: str,
        proposal_id: str,
        answer: Answer,
        *,
        incident: str,
        actor: str = "",
        now: float,
    ) -> int:
        """Record how the proposal ended; returns its incident's expiries so far (each counted
        once however often this is called)."""
        result = await self._close(
            keys=[self.key(host, container, action_id)],
            args=[proposal_id, answer.value, incident, actor[:200], f"{now:.3f}", TTL_S],
        )
        return int(result)

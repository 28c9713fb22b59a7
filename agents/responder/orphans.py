"""Other hosts' requests: one whose host has no live Responder (or whose Responders did not
take it in time) is finished as failed by a live Responder elsewhere, and people are told,
instead of waiting forever. It claims the same request record the host's own Responder would,
so at most one of them finishes it (see docs/architecture.md, "Fleet").
"""

from __future__ import annotations

from redis.asyncio import Redis

from agents.base import AgentContext
from agents.responder.core import ClaimStatus, ResponderLimits, Verdict, VerdictKind
from agents.responder.outcomes import Outcomes
from agents.responder.store import RequestStore, ResponderState
from agents.responder.work import Work
from shared.events import RemediationNeededEvent, RemediationStatus, parse_event
from shared.heartbeat import live_heartbeats

__all__ = ["Orphans"]


class Orphans:
    """Watching other hosts' requests to a deadline, and failing those no one took."""

    def __init__(
        self,
        *,
        agent: AgentContext,
        redis: Redis,
        requests: RequestStore,
        state: ResponderState,
        outcomes: Outcomes,
        limits: ResponderLimits,
        actor: str,
        deadline_s: float,
    ) -> None:
        self.agent = agent
        self.redis = redis
        self.clock = agent.clock
        self.log = agent.log
        self.requests = requests
        self.state = state
        self.outcomes = outcomes
        self.limits = limits
        self.actor = actor
        self.deadline_s = deadline_s

    async def watch(self, request: RemediationNeededEvent) -> None:
        """Another host's request: checked at a deadline, in case no Responder of it takes it."""
        age = self.clock.time() - request.emitted_at.timestamp()
        if age > self.limits.max_request_age_s:
            return  # its host would only report it stale
        due = self.clock.time() + self.deadline_s
        await self.requests.watch_orphan(
            RequestStore.key(request.idempotency_key), request.model_dump_json(), due
        )

    async def sweep(self) -> None:
        """A request whose host has no live Responder is finished as failed, and people are
        told, instead of waiting forever."""
        now = self.clock.time()
        due = await self.requests.due_orphans(now, now + 30.0)
        if not due:
            return
        alive = await self._responder_hosts()
        for record_key, raw in due:
            request = parse_event(raw)
            assert isinstance(request, RemediationNeededEvent)
            host = request.subject.host
            age = now - request.emitted_at.timestamp()
            if host in alive and age <= self.limits.max_request_age_s:
                # Alive, and it has time: its Responders take it (or report it stale).
                await self.requests.watch_orphan(record_key, raw, now + self.deadline_s, again=True)
                continue
            holder = self.state.new_token(f"{self.agent.instance}:orphan")
            claim = await self.requests.claim(record_key, "orphan", holder, now)
            if claim.status is ClaimStatus.NEW:
                why = "has no live Responder" if host not in alive else "did not take it"
                work = Work(request, self.actor, record_key, holder, causation_id=request.id)
                await self.outcomes.finish(
                    work,
                    Verdict(kind=VerdictKind.REJECT),
                    RemediationStatus.FAILED,
                    guard="host",
                    reason=f"host {host} {why} within {age:.0f}s of the request; nothing "
                    f"was done — is HemoStat running there? (`hemostat status` lists hosts)",
                    action=request.payload.action,
                )
                self.log.warning("responder.orphan_failed", host=host, request=request.id)
            await self.requests.forget_orphan(record_key)

    async def _responder_hosts(self) -> set[str]:
        beats = await live_heartbeats(self.redis, "responder")
        now = self.clock.now()
        return {b.host for b in beats if b.is_fresh(now)}

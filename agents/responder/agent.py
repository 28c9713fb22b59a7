"""The Responder agent: executes `hemostat:remediation_needed` requests under hard guardrails and
publishes one `hemostat:remediation_complete` per request.

Each request goes: claim (idempotency) → gather facts (runbook action, target, lease, guard
state) → `core.evaluate()` → act, book and publish. An action is booked at the gate before Docker
hears of it and verified later by a scheduled follow-up any replica can finish, so a verification
never holds an event handler and a replica that stops mid-action leaves nothing half done.
Actions that need a human become proposals and run only after an approval, every guard checked
again right before executing.

The agent owns the lifecycle, the entry points and the loops; it composes one component per job:
`Decider` (deciding.py: facts, the verdict, deferral), `Issuer` (issuing.py: the gate and the
Docker call), `Verification` (verification.py: the verification schedule), `Proposals`
(proposals.py: approvals from the ask to the end), `Orphans` (orphans.py: other hosts' requests
no one takes) and `Outcomes` (outcomes.py: storing and delivering how a request ends).
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from agents.base import BaseAgent, periodic
from agents.responder.core import Claim, ResponderLimits, Verdict, VerdictKind
from agents.responder.deciding import Decider
from agents.responder.executor import Executor
from agents.responder.fatigue import FatigueStore
from agents.responder.issuing import Issuer
from agents.responder.orphans import Orphans
from agents.responder.outcomes import Outcomes
from agents.responder.proposals import Proposals
from agents.responder.store import RequestStore, ResponderState
from agents.responder.verification import Verification
from agents.responder.work import Work
from shared import audit
from shared.approvals import ApprovalStore
from shared.containers import own_container_id
from shared.docker_api import DockerGateway, connect_docker
from shared.errors import DockerUnavailable
from shared.eventbus import current_delivery
from shared.events import (
    ApprovalDecisionEvent,
    Channel,
    Event,
    IncidentResolvedEvent,
    RemediationNeededEvent,
    RemediationStatus,
)
from shared.redaction import Redactor
from shared.runbooks import Runbooks, load_runbooks
from shared.settings import Settings

__all__ = ["ResponderAgent", "build"]


class ResponderAgent(BaseAgent):
    name = "responder"
    consumes = (Channel.REMEDIATION_NEEDED, Channel.APPROVAL_DECISION, Channel.INCIDENT_RESOLVED)

    def __init__(
        self,
        *,
        docker: DockerGateway,
        runbooks: Runbooks,
        redactor: Redactor | None = None,
        own_id: str | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        s = self.settings
        self.limits = ResponderLimits.from_settings(s)
        self.docker = docker
        self.runbooks = runbooks
        self.redactor = redactor or Redactor(s.secret_values())
        self.own_id = own_id
        self.executor = Executor(docker, self.redactor, output_limit=s.responder_exec_output_limit)
        self.host = s.host_name
        self.requests = RequestStore(self.redis, self.host)
        self.state = ResponderState(self.redis, s.responder_lease_ttl_s, self.host)
        self.approvals = ApprovalStore(self.redis)
        self.fatigue = FatigueStore(self.redis, self.approvals)
        self.actor = f"responder:{self.instance}"
        self.outcomes = Outcomes(
            agent=self,
            redis=self.redis,
            bus=self.bus,
            requests=self.requests,
            state=self.state,
            approvals=self.approvals,
            redactor=self.redactor,
            actor=self.actor,
        )
        self.verification = Verification(
            agent=self,
            executor=self.executor,
            requests=self.requests,
            state=self.state,
            approvals=self.approvals,
            outcomes=self.outcomes,
            limits=self.limits,
            poll_s=s.responder_verify_poll_s,
        )
        self.issuer = Issuer(
            agent=self,
            executor=self.executor,
            requests=self.requests,
            outcomes=self.outcomes,
            verification=self.verification,
            limits=self.limits,
        )
        self.proposals = Proposals(
            agent=self,
            runbooks=runbooks,
            requests=self.requests,
            state=self.state,
            approvals=self.approvals,
            fatigue=self.fatigue,
            redactor=self.redactor,
            outcomes=self.outcomes,
            limits=self.limits,
            host=self.host,
            actor=self.actor,
            decide=self._decide_approved,
        )
        self.decider = Decider(
            agent=self,
            docker=docker,
            runbooks=runbooks,
            own_id=own_id,
            requests=self.requests,
            state=self.state,
            approvals=self.approvals,
            fatigue=self.fatigue,
            issuer=self.issuer,
            proposals=self.proposals,
            outcomes=self.outcomes,
            limits=self.limits,
            host=self.host,
            defer_poll_s=s.responder_defer_poll_s,
        )
        self.orphans = Orphans(
            agent=self,
            redis=self.redis,
            requests=self.requests,
            state=self.state,
            outcomes=self.outcomes,
            limits=self.limits,
            actor=self.actor,
            deadline_s=s.responder_orphan_deadline_s,
        )

    @property
    def group(self) -> str:
        # One group per host: every host's Responders read every request, and act only on
        # their own host's (see docs/architecture.md, "Fleet").
        return f"responder:{self.host}"

    async def on_start(self) -> None:
        # A new group starts where a request could still be acted on: an older one would only
        # be reported stale, and a host joining a fleet must not replay its history.
        start = f"{int((self.clock.time() - self.limits.max_request_age_s) * 1000)}-0"
        for channel in self.consumes:
            await self.bus.create_group(str(channel), self.group, start)

    def partition_key(self, event: Event) -> str | None:
        if isinstance(event, RemediationNeededEvent):
            return event.subject.container_id or event.subject.container_name
        return None

    def health_details(self) -> dict[str, Any]:
        return super().health_details() | {
            "host": self.host,
            "dry_run": self.limits.dry_run,
            "scope": self.limits.scope.value,
            "outcomes": dict(self.outcomes.counts),
            "issuing": len(self.issuer.issuing),
        }

    async def on_stop(self) -> None:
        # Calls already sent to Docker finish; their verification is scheduled in Redis.
        await self.issuer.drain(self.settings.shutdown_grace_s)
        self.docker.close()

    # ------------------------------------------------------------------ entry points

    async def handle(self, event: Event) -> None:
        if event.subject.host != self.host:
            if isinstance(event, RemediationNeededEvent):
                await self.orphans.watch(event)
            return  # another host's Responders act on it
        if isinstance(event, RemediationNeededEvent):
            await self._on_request(event)
        elif isinstance(event, ApprovalDecisionEvent):
            await self.proposals.on_decision(event)
        elif isinstance(event, IncidentResolvedEvent):
            await self.proposals.withdraw(event)

    async def _on_request(self, request: RemediationNeededEvent) -> None:
        delivery = current_delivery()
        # A redelivery of the same stream entry takes over; another entry with the same key is
        # a twin (the Analyzer published twice) and leaves the work to the first.
        entry = f"{delivery.channel}/{delivery.message_id}" if delivery else f"event/{request.id}"
        record_key = RequestStore.key(request.idempotency_key)
        holder = self.state.new_token(self.instance)
        claim = await self.requests.claim(record_key, entry, holder, self.clock.time())
        work = Work(request, self.actor, record_key, holder, causation_id=request.id)
        try:
            await self.decider.decide(work, claim)
        except DockerUnavailable as exc:
            if delivery is None or delivery.attempt < self.settings.bus_max_deliveries:
                raise  # retried with backoff: the daemon may be back in a moment
            # The last delivery: say so instead of leaving the request to the dead letters.
            await self.outcomes.finish(
                work,
                Verdict(kind=VerdictKind.REJECT),
                RemediationStatus.FAILED,
                reason=f"Docker was unreachable for every attempt ({exc}); nothing was done",
                action=request.payload.action,
            )

    async def _decide_approved(self, work: Work, claim: Claim) -> None:
        """An approved proposal is decided again, every guard checked right before executing."""
        await self.decider.decide(work, claim, approved=True)

    # ------------------------------------------------------------------ loops

    @periodic(lambda self: min(5.0, self.settings.responder_orphan_deadline_s / 4))
    async def sweep_orphans(self) -> None:
        await self.orphans.sweep()

    @periodic(lambda self: self.settings.responder_verify_poll_s)
    async def verify_due(self) -> None:
        """Due verifications, then deferred requests decided again."""
        now = self.clock.time()
        hold = now + max(5.0, 4 * self.settings.responder_verify_poll_s)
        await self.verification.serve(now, hold)
        await self.decider.redecide_due(now, hold)

    @periodic(2.0)
    async def expire_proposals(self) -> None:
        await self.proposals.expire_due()

    @periodic(lambda self: self.settings.responder_sweep_interval_s)
    async def sweep_proposals(self) -> None:
        await self.proposals.sweep()

    @periodic(3600.0)
    async def trim_audit(self) -> None:
        await audit.trim(self.redis, self.settings.audit_retention_days)


def build(settings: Settings, redis: Redis) -> ResponderAgent:
    return ResponderAgent(
        settings=settings,
        redis=redis,
        # Restarts block a thread for the container's stop time; they never hold a handler.
        docker=DockerGateway(
            connect_docker(settings), concurrency=settings.responder_action_concurrency
        ),
        runbooks=load_runbooks(settings.runbooks_dir),
        own_id=own_container_id(),
    )

"""How a request ends: its one `hemostat:remediation_complete`, its audit record, and the
escalations people must hear about.

`finish()` stores the outcome and its audit record on the request record once, atomically with
booking the action's result (`RequestStore.finish`); `deliver()` then performs each side effect
at most once, marked on the record — audit append, publish, the proposal's final state,
unscheduling — so a crash between them is repaired by the next `deliver()` (a redelivered entry,
the verification loop, or the sweep).
"""

from __future__ import annotations

import time

from redis.asyncio import Redis

from agents.base import AgentContext
from agents.responder.core import Verdict
from agents.responder.store import RequestStore, ResponderState
from agents.responder.work import Work
from shared import audit, keys
from shared.actions import Action
from shared.approvals import ApprovalStore, ProposalState
from shared.containers import ContainerInfo
from shared.errors import ApprovalError
from shared.eventbus import EventBus
from shared.events import (
    Escalation,
    EscalationEvent,
    RemediationComplete,
    RemediationCompleteEvent,
    RemediationStatus,
    Severity,
    parse_event,
)
from shared.redaction import Redactor

__all__ = ["Outcomes"]

# What a proposal becomes once its execution ends.
_PROPOSAL_FINAL = {
    RemediationStatus.SUCCEEDED: ProposalState.SUCCEEDED,
    RemediationStatus.DRY_RUN: ProposalState.DRY_RUN,
    RemediationStatus.FAILED: ProposalState.FAILED,
    RemediationStatus.REJECTED: ProposalState.FAILED,
    RemediationStatus.BLOCKED: ProposalState.BLOCKED,
}
_AUDIT_EVENT = {
    RemediationStatus.SUCCEEDED: "executed",
    RemediationStatus.FAILED: "executed",
    RemediationStatus.REJECTED: "rejected",
    RemediationStatus.DRY_RUN: "dry_run",
    RemediationStatus.PENDING_APPROVAL: "proposed",
    RemediationStatus.EXPIRED: "expired",
    RemediationStatus.DENIED: "denied",
    RemediationStatus.NOTIFIED: "notified",
    RemediationStatus.SUPPRESSED: "suppressed",
    RemediationStatus.CANCELLED: "cancelled",
    RemediationStatus.BLOCKED: "blocked",
}
_SEVERITY = {
    RemediationStatus.FAILED: Severity.CRITICAL,
    RemediationStatus.REJECTED: Severity.WARNING,
    RemediationStatus.PENDING_APPROVAL: Severity.WARNING,
    RemediationStatus.EXPIRED: Severity.WARNING,
    RemediationStatus.BLOCKED: Severity.WARNING,
}


class Outcomes:
    """Finishing requests and delivering their outcomes, for the agent it works for."""

    def __init__(
        self,
        *,
        agent: AgentContext,
        redis: Redis,
        bus: EventBus,
        requests: RequestStore,
        state: ResponderState,
        approvals: ApprovalStore,
        redactor: Redactor,
        actor: str,
    ) -> None:
        self.agent = agent
        self.redis = redis
        self.bus = bus
        self.clock = agent.clock
        self.log = agent.log
        self.requests = requests
        self.state = state
        self.approvals = approvals
        self.redactor = redactor
        self.actor = actor
        self.counts: dict[str, int] = {}  # outcomes stored by this replica, by status

    async def escalate(self, work: Work, info: ContainerInfo, verdict: Verdict) -> None:
        guard, until = verdict.guard, verdict.escalate_until
        assert guard is not None
        assert until is not None
        if not await self.state.claim_escalation(info.id, guard, self.clock.time(), until):
            return
        request = work.request
        await self.agent.emit(
            EscalationEvent,
            Escalation(
                reason=self.redactor.text(verdict.reason),
                guard=verdict.guard,
                action_type=request.payload.action.type,
                request_id=request.id,
                details={"runbook": request.payload.runbook_id, "container": info.name},
            ),
            subject=request.subject,
            severity=Severity.CRITICAL,
            caused_by=request,
            idempotency_key=f"escalation:{info.id}:{verdict.guard}:{verdict.escalate_until:.0f}",
        )
        self.log.warning("responder.escalated", guard=verdict.guard, container=info.name)

    async def finish(
        self,
        work: Work,
        verdict: Verdict,
        status: RemediationStatus,
        *,
        guard: str | None = None,
        reason: str = "",
        verified: bool | None = None,
        output: str | None = None,
        dry_run: bool = False,
        audit_event: str | None = None,
        info: ContainerInfo | None = None,
        action: Action | None = None,
        container: tuple[str, str] | None = None,
        lease: tuple[str, str] | None = None,
        booking: tuple[str, str, int, float] | None = None,
    ) -> None:
        """Store the outcome once (atomically with booking it), then deliver its side effects."""
        request = work.request
        p = request.payload
        action = action or p.action
        if info is not None:
            container = (info.id, info.name)
        container_id, container_name = container or (
            request.subject.container_id or "",
            request.subject.container_name or "",
        )
        duration_ms = round(max(0.0, time.time() - work.received_at) * 1000, 1)
        reason = self.redactor.clip(reason, 2000)
        proposal_id = work.proposal.id if work.proposal else None
        complete = self.agent.event(
            RemediationCompleteEvent,
            RemediationComplete(
                request_id=request.id,
                alert_kind=p.alert_kind,
                alert_occurred_at=p.alert_occurred_at,
                runbook_id=p.runbook_id,
                action_id=action.id,
                action_type=action.type,
                status=status,
                guard=guard,
                reason=reason,
                dry_run=dry_run,
                actor=work.actor,
                proposal_id=proposal_id,
                duration_ms=duration_ms,
                verified=verified,
                output=output,
                analysis=p.analysis,
            ),
            subject=request.subject,
            severity=_SEVERITY.get(
                status, request.severity if status is RemediationStatus.NOTIFIED else Severity.INFO
            ),
            # Caused by what decided it (an approval, a resolution) when kept, else the request.
            caused_by=work.causation_id or request.id,
            incident_id=request.incident_id,
            idempotency_key=(
                f"complete:{proposal_id}:{status}"
                if proposal_id
                else f"complete:{request.idempotency_key}"
            ),
        )
        record = audit.AuditRecord(
            at=self.clock.time(),
            actor=work.actor,
            event=audit_event or _AUDIT_EVENT[status],
            outcome=status.value if guard is None else f"{status.value}:{guard}",
            request_id=request.id,
            incident_id=request.incident_id,
            proposal_id=proposal_id,
            host=request.subject.host or None,
            container_id=container_id or None,
            container_name=container_name or None,
            runbook_id=p.runbook_id,
            action_id=action.id,
            action_type=action.type,
            params=action.params.model_dump(mode="json"),
            guards=list(verdict.guards),
            dry_run=dry_run,
            reason=reason,
            durations_ms={"total": duration_ms, **work.timings},
        )
        # Guard details and reasons may quote the container: mask its environment values too.
        redactor = self.redactor.scoped(info.secret_values) if info else self.redactor
        record = audit.redact(record, redactor)
        result = await self.requests.finish(
            work.record_key,
            outcome_json=complete.model_dump_json(),
            audit_json=record.model_dump_json(),
            holder=work.holder,
            lease=lease,
            booking=booking,
        )
        if result == "claim_lost":
            self.log.warning("responder.claim_lost", request=request.id)
            return
        await self.deliver(work.record_key)
        if result == "ok":
            self.counts[status.value] = self.counts.get(status.value, 0) + 1
            self.log.info(
                "responder.outcome",
                status=status,
                guard=guard,
                container=request.subject.display,
                action=action.id,
                dry_run=dry_run,
                reason=self.redactor.clip(reason, 200),
                proposal=proposal_id,
            )

    async def deliver(self, record_key: str) -> None:
        """The side effects of a stored outcome, each at most once: audit, publish, proposal
        state, and the verification schedule. Safe to call again after a crash."""
        record = await self.requests.load(record_key)
        if record.phase != "done" or not record.data.get("outcome"):
            return
        if not record.flag("audited") and record.data.get("audit"):
            pipe = self.redis.pipeline(transaction=True)
            pipe.xadd(keys.AUDIT, {"record": record.data["audit"]})
            pipe.hset(record_key, "audited", "1")
            await pipe.execute()
        event = parse_event(record.data["outcome"])
        assert isinstance(event, RemediationCompleteEvent)
        if not record.flag("published"):
            await self.bus.publish(event)
            await self.requests.mark(record_key, published="1")
        final = _PROPOSAL_FINAL.get(event.payload.status)
        proposal_id = event.payload.proposal_id
        if proposal_id and final is not None and not record.flag("proposal_closed"):
            try:
                await self.approvals.transition(
                    proposal_id,
                    final,
                    {ProposalState.EXECUTING},
                    actor=self.actor,
                    reason=f"{event.payload.status}: {event.payload.reason}",
                )
            except ApprovalError as exc:
                self.log.info("responder.proposal_state", proposal=proposal_id, error=str(exc))
            await self.requests.mark(record_key, proposal_closed="1")
        await self.requests.unschedule(record_key)
        await self.requests.undefer(record_key)

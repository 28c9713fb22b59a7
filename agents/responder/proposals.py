"""Approval proposals: actions that need a person, from the ask to the end.

A verdict that needs a person becomes a proposal (`shared/approvals.py`) and an
`approval_request`; an approval runs it through the decision again, every guard checked right
before executing (`decide`, given by the agent); a denial, an expiry or the incident resolving by
itself closes it with nothing done. The sweep runs approved proposals whose decision event was
lost and fails those that cannot run by their deadline. What people answered feeds approval
fatigue (`fatigue.py`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from agents.base import AgentContext
from agents.responder.core import (
    Binding,
    Claim,
    ClaimStatus,
    ResponderLimits,
    Verdict,
    VerdictKind,
)
from agents.responder.fatigue import Answer, FatigueStore
from agents.responder.outcomes import Outcomes
from agents.responder.store import RequestStore, ResponderState
from agents.responder.work import Work
from shared.actions import Action
from shared.approvals import ApprovalStore, Proposal, ProposalState
from shared.clock import to_datetime
from shared.containers import ContainerInfo
from shared.errors import ApprovalError, DockerError
from shared.events import (
    ApprovalDecisionEvent,
    ApprovalRequest,
    ApprovalRequestEvent,
    Decision,
    Escalation,
    EscalationEvent,
    IncidentResolvedEvent,
    RemediationStatus,
    Severity,
)
from shared.redaction import Redactor
from shared.runbooks import Runbooks

__all__ = ["Proposals", "binding_of"]


def binding_of(proposal: Proposal | None) -> Binding | None:
    """What the person approved; None for a proposal made before bindings existed."""
    if proposal is None or not proposal.binding:
        return None
    return Binding.model_validate_json(proposal.binding)


class Proposals:
    """Proposing, running approved, closing and sweeping proposals of this host."""

    def __init__(
        self,
        *,
        agent: AgentContext,
        runbooks: Runbooks,
        requests: RequestStore,
        state: ResponderState,
        approvals: ApprovalStore,
        fatigue: FatigueStore,
        redactor: Redactor,
        outcomes: Outcomes,
        limits: ResponderLimits,
        host: str,
        actor: str,
        decide: Callable[[Work, Claim], Awaitable[None]],
    ) -> None:
        self.agent = agent
        self.clock = agent.clock
        self.log = agent.log
        self.runbooks = runbooks
        self.requests = requests
        self.state = state
        self.approvals = approvals
        self.fatigue = fatigue
        self.redactor = redactor
        self.outcomes = outcomes
        self.limits = limits
        self.host = host
        self.actor = actor
        self.decide = decide  # the agent's decision, for an approved proposal

    async def propose(
        self, work: Work, verdict: Verdict, info: ContainerInfo | None, action: Action
    ) -> None:
        request = work.request
        p = request.payload
        why = self.redactor.clip(verdict.reason, 500)
        target_id = info.id if info else None
        runbook = self.runbooks.get(p.runbook_id)
        version = runbook.version if runbook else p.runbook_version
        bound = Binding.of(p.runbook_id, version, action, target_id)
        proposal = await self.approvals.create(
            request, action.approval.timeout_s, why, binding=bound.model_dump_json()
        )
        if target_id:
            await self.fatigue.proposed(self.host, target_id, action.id, proposal.id)
        work.proposal = proposal
        await self.agent.emit(
            ApprovalRequestEvent,
            ApprovalRequest(
                proposal_id=proposal.id,
                request_id=request.id,
                runbook_id=p.runbook_id,
                action=action,
                alert_kind=p.alert_kind,
                expires_at=to_datetime(proposal.expires_at),
                analysis=p.analysis,
                evidence=self.redactor.clip(f"{why}. Root cause: {p.analysis.root_cause}", 2000),
                approve_command=proposal.approve_command,
                deny_command=proposal.deny_command,
            ),
            subject=request.subject,
            severity=Severity.WARNING if request.severity is Severity.INFO else request.severity,
            caused_by=request,
            idempotency_key=f"approval:{proposal.id}",
        )
        await self.outcomes.finish(
            work,
            verdict,
            RemediationStatus.PENDING_APPROVAL,
            reason=f"{why}; approve with `{proposal.approve_command}` before it expires",
            info=info,
            action=action,
            audit_event="proposed",
        )

    async def on_decision(self, event: ApprovalDecisionEvent) -> None:
        # (Its subject is the request's: only this host's Responders get here.)
        decision = event.payload
        proposal = await self.approvals.get(decision.proposal_id)
        if proposal is None:
            self.log.warning("responder.unknown_proposal", proposal=decision.proposal_id)
            return
        if decision.decision is Decision.DENIED:
            await self._answered(proposal, Answer.DENIED, decision.actor)
            await self.close(
                proposal,
                RemediationStatus.DENIED,
                actor=decision.actor,
                reason=f"denied by {decision.actor}: {decision.reason or 'no reason given'}",
                causation_id=event.id,
            )
        else:
            await self.run(proposal, decision.actor, event.id)

    async def run(self, proposal: Proposal, decided_by: str, causation: str | None) -> None:
        try:
            await self.approvals.transition(
                proposal.id, ProposalState.EXECUTING, {ProposalState.APPROVED}, actor=self.actor
            )
        except ApprovalError as exc:
            self.log.info("responder.proposal_skipped", proposal=proposal.id, reason=str(exc))
            return  # another replica took it, or it was never approved
        await self._answered(proposal, Answer.WITHDRAWN, decided_by)
        record_key = RequestStore.key(f"proposal:{proposal.id}")
        holder = self.state.new_token(self.agent.instance)
        claim = await self.requests.claim(record_key, "execute", holder, self.clock.time())
        work = Work(
            proposal.request_event(),
            f"{decided_by} (approved) via {self.actor}",
            record_key,
            holder,
            proposal,
            causation,
        )
        try:
            await self.decide(work, claim)
        except DockerError as exc:
            # Kept for the sweep, which finishes it as failed at the execution deadline.
            await self.requests.mark(record_key, last_error=str(exc)[:500])
            raise

    async def close(
        self,
        proposal: Proposal,
        status: RemediationStatus,
        *,
        actor: str,
        reason: str,
        causation_id: str | None = None,
        require_holder: bool = True,
    ) -> None:
        """Finish a proposal that will not run (denied, expired, not executed in time)."""
        record_key = RequestStore.key(f"proposal:{proposal.id}")
        holder = self.state.new_token(self.agent.instance)
        claim = await self.requests.claim(record_key, f"close-{status}", holder, self.clock.time())
        if claim.status is ClaimStatus.DONE:
            await self.outcomes.deliver(record_key)
            return
        work = Work(
            proposal.request_event(),
            actor,
            record_key,
            holder if require_holder and claim.status is ClaimStatus.NEW else "",
            proposal,
            causation_id,
        )
        audit_event = {
            RemediationStatus.DENIED: "denied",
            RemediationStatus.EXPIRED: "expired",
            RemediationStatus.CANCELLED: "cancelled",
        }
        await self.outcomes.finish(
            work,
            Verdict(kind=VerdictKind.REJECT),
            status,
            reason=reason,
            action=work.request.payload.action,
            audit_event=audit_event.get(status),
        )

    async def expire_due(self) -> None:
        """Silence means no action: pending proposals past their deadline expire."""
        for proposal_id in await self.approvals.due_for_expiry():
            try:
                await self.approvals.transition(
                    proposal_id,
                    ProposalState.EXPIRED,
                    {ProposalState.PENDING},
                    actor="timeout",
                    reason="no decision before the deadline",
                )
            except ApprovalError:
                continue  # decided meanwhile, or another replica expired it
            proposal = await self.approvals.get(proposal_id)
            if proposal is not None:
                expiries = await self._answered(proposal, Answer.EXPIRED, "timeout")
                await self.close(
                    proposal,
                    RemediationStatus.EXPIRED,
                    actor="timeout",
                    reason="no one decided before the deadline; nothing was done",
                )
                if expiries == self.limits.approval_max_expiries:
                    await self._escalate_unanswered(proposal, expiries)

    async def _answered(self, proposal: Proposal, answer: Answer, actor: str) -> int:
        bound = binding_of(proposal)
        return await self.fatigue.answered(
            proposal.request_event().subject.host,
            (bound.target_id if bound else None) or proposal.container_id,
            proposal.action_id,
            proposal.id,
            answer,
            incident=proposal.incident_id or "-",
            actor=actor,
            now=self.clock.time(),
        )

    async def _escalate_unanswered(self, proposal: Proposal, expiries: int) -> None:
        """Asked `expiries` times, never answered: stop asking in this incident, say so once."""
        request = proposal.request_event()
        name = proposal.container_name or proposal.container_id[:12]
        await self.agent.emit(
            EscalationEvent,
            Escalation(
                reason=f"{expiries} proposals to {proposal.action_type} {name} "
                f"({proposal.action_id}) expired with no answer; it will not be proposed again "
                "in this incident — a person must look",
                guard="approval_expired",
                action_type=request.payload.action.type,
                request_id=request.id,
                details={"runbook": proposal.runbook_id, "container": name},
            ),
            subject=request.subject,
            severity=Severity.CRITICAL,
            caused_by=request,
            idempotency_key=f"escalation:unanswered:{proposal.container_id}:"
            f"{proposal.action_id}:{proposal.incident_id}",
        )
        self.log.warning("responder.escalated", guard="approval_expired", container=name)

    async def withdraw(self, event: IncidentResolvedEvent) -> None:
        """The incident resolved by itself: what still waits for a decision is withdrawn."""
        if not event.incident_id:
            return
        reason = (
            f"withdrawn: the incident resolved by itself ({event.payload.reason}); nothing was done"
        )
        for proposal in await self.approvals.in_incident(event.incident_id):
            if proposal.state is ProposalState.PENDING:
                try:
                    await self.approvals.transition(
                        proposal.id,
                        ProposalState.CANCELLED,
                        {ProposalState.PENDING},
                        actor="hemostat",
                        reason=reason,
                    )
                except ApprovalError:
                    continue  # decided or expired meanwhile: that outcome stands
            elif proposal.state is not ProposalState.CANCELLED:
                continue
            await self._answered(proposal, Answer.WITHDRAWN, "hemostat")
            # Closing again after a crash is safe: the outcome is stored once.
            await self.close(
                proposal,
                RemediationStatus.CANCELLED,
                actor="hemostat",
                reason=reason,
                causation_id=event.id,
            )

    async def sweep(self) -> None:
        """Approved proposals whose decision event was lost still run; approved or executing
        ones that cannot run by their deadline are finished as failed, and people are told."""
        now = await self.approvals.server_time()
        deadline_s = self.limits.approval_execution_deadline_s
        for proposal in await self.approvals.in_state(ProposalState.APPROVED):
            decided = proposal.decided_at or proposal.updated_at
            if now - decided > deadline_s:
                try:
                    await self.approvals.transition(
                        proposal.id,
                        ProposalState.FAILED,
                        {ProposalState.APPROVED},
                        actor=self.actor,
                        reason="not executed in time",
                    )
                except ApprovalError:
                    continue
                await self.close(
                    proposal,
                    RemediationStatus.FAILED,
                    actor=f"{proposal.decided_by} (approved)",
                    reason=f"approved by {proposal.decided_by} but not executed within "
                    f"{deadline_s:.0f}s (no Responder could run it); nothing was done",
                    require_holder=False,
                )
            elif now - decided > min(10.0, deadline_s / 2) and self._ours(proposal):
                await self.run(proposal, proposal.decided_by, None)
        for proposal in await self.approvals.in_state(ProposalState.EXECUTING):
            if self._ours(proposal):  # its verification is in its own host's queue
                await self._sweep_executing(proposal, now, deadline_s)

    def _ours(self, proposal: Proposal) -> bool:
        return proposal.request_event().subject.host == self.host

    async def _sweep_executing(self, proposal: Proposal, now: float, deadline_s: float) -> None:
        record_key = RequestStore.key(f"proposal:{proposal.id}")
        record = await self.requests.load(record_key)
        if record.phase == "done":
            await self.outcomes.deliver(record_key)  # the final transition was not applied yet
            return
        if record.phase == "executing":
            if not await self.requests.is_scheduled(record_key):
                await self.requests.schedule(record_key, self.clock.time())
            return
        started = proposal.executing_at or proposal.updated_at
        if now - started <= deadline_s:
            return
        why = record.data.get("last_error") or "the Responder executing it stopped"
        await self.close(
            proposal,
            RemediationStatus.FAILED,
            actor=f"{proposal.decided_by} (approved)",
            reason=f"approved by {proposal.decided_by} but not executed within {deadline_s:.0f}s: "
            f"{why}; nothing was done",
            require_holder=False,
        )

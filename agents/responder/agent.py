"""The Responder agent: executes `hemostat:remediation_needed` requests under hard guardrails and
publishes one `hemostat:remediation_complete` per request.

Guards, in order (all state in Redis, so several replicas are correct):
idempotency → (stale / action policy) → target policy → per-container lease → cooldown →
circuit breaker → crash-loop guard → approval → dry-run. The first guard that refuses ends the
request with status `rejected` and names itself. Actions that need a human become proposals and
run only after an approval, with every guard checked again right before executing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from agents.base import BaseAgent, periodic
from agents.responder.executor import Executor
from agents.responder.guards import (
    GuardState,
    Leases,
    RequestRecord,
    circuit_open,
    quick_deaths_after_restarts,
    target_policy,
)
from shared import audit
from shared.actions import Action
from shared.approvals import ApprovalStore, Proposal, ProposalState
from shared.clock import to_datetime
from shared.container_state import deaths_since
from shared.containers import ContainerInfo, own_container_id
from shared.docker_api import DockerGateway, connect_docker
from shared.errors import ApprovalError, ContainerNotFound
from shared.events import (
    ApprovalDecisionEvent,
    ApprovalRequest,
    ApprovalRequestEvent,
    Channel,
    Decision,
    Escalation,
    EscalationEvent,
    Event,
    RemediationComplete,
    RemediationCompleteEvent,
    RemediationNeededEvent,
    RemediationStatus,
    Severity,
    make_event,
    parse_event,
)
from shared.redaction import Redactor
from shared.runbooks import Runbooks, load_runbooks
from shared.settings import Settings

RESTARTING_ACTIONS = ("restart", "start")
# What an approved proposal becomes once its execution ends (the outcome text says dry-run).
_PROPOSAL_FINAL = {
    RemediationStatus.SUCCEEDED: ProposalState.SUCCEEDED,
    RemediationStatus.DRY_RUN: ProposalState.SUCCEEDED,
    RemediationStatus.FAILED: ProposalState.FAILED,
    RemediationStatus.REJECTED: ProposalState.FAILED,
}


@dataclass
class Work:
    """One request (or one approved proposal) going through the guards."""

    request: RemediationNeededEvent
    actor: str
    record: RequestRecord
    proposal: Proposal | None = None
    causation_id: str | None = None
    guards: list[audit.GuardResult] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    timings: dict[str, float] = field(default_factory=dict)
    action: Action | None = None
    container: ContainerInfo | None = None

    def check(self, guard: str, passed: bool, detail: str) -> bool:
        self.guards.append(audit.GuardResult(guard=guard, passed=passed, detail=detail))
        return passed

    @property
    def target(self) -> str:
        s = self.request.subject
        return s.container_id or s.container_name or ""


class ResponderAgent(BaseAgent):
    name = "responder"
    consumes = (Channel.REMEDIATION_NEEDED, Channel.APPROVAL_DECISION)

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
        self.docker = docker
        self.runbooks = runbooks
        self.redactor = redactor or Redactor(s.secret_values())
        self.own_id = own_id
        self.executor = Executor(
            docker,
            self.redactor,
            stable_s=s.responder_verify_stable_s,
            output_limit=s.responder_exec_output_limit,
        )
        self.leases = Leases(self.redis, s.responder_lease_ttl_s)
        self.state = GuardState(self.redis)
        self.approvals = ApprovalStore(self.redis)
        self.actor = f"responder:{self.instance}"
        self.counts: dict[str, int] = {}

    def partition_key(self, event: Event) -> str | None:
        if isinstance(event, RemediationNeededEvent):
            return event.subject.container_id or event.subject.container_name
        return None

    def health_details(self) -> dict[str, Any]:
        return super().health_details() | {
            "dry_run": self.settings.dry_run,
            "scope": self.settings.remediation_scope.value,
            "outcomes": dict(self.counts),
        }

    async def on_stop(self) -> None:
        self.docker.close()

    # ------------------------------------------------------------------ entry points

    async def handle(self, event: Event) -> None:
        if isinstance(event, RemediationNeededEvent):
            await self._on_request(event)
        elif isinstance(event, ApprovalDecisionEvent):
            await self._on_decision(event)

    async def _on_request(self, request: RemediationNeededEvent) -> None:
        record = RequestRecord(self.redis, request.idempotency_key)
        work = Work(request, self.actor, record, causation_id=request.id)
        prior = await record.begin(self.instance, self.clock.time())
        if prior.get("phase") == "done":
            # Idempotency holds: this request was already acted on (a redelivery).
            await self._republish_if_needed(record, prior)
            self.log.info("responder.duplicate", request=request.id, key=request.idempotency_key)
            return
        resumed = prior.get("phase") == "executing"
        work.check(
            "idempotency",
            True,
            "resuming an action a stopped replica had started" if resumed else "first delivery",
        )
        await self._process(work, resumed=resumed, approved=False)

    async def _on_decision(self, event: ApprovalDecisionEvent) -> None:
        decision = event.payload
        proposal = await self.approvals.get(decision.proposal_id)
        if proposal is None:
            self.log.warning("responder.unknown_proposal", proposal=decision.proposal_id)
            return
        if decision.decision is Decision.DENIED:
            await self._close_denied(proposal, event)
        else:
            await self._run_proposal(proposal, decision.actor, event.id)

    # ------------------------------------------------------------------ the guard pipeline

    async def _process(self, work: Work, *, resumed: bool, approved: bool) -> None:
        request = work.request
        p = request.payload
        now = self.clock.time()
        runbook = self.runbooks.get(p.runbook_id)
        declared = runbook.action(p.action.id) if runbook else None
        if p.action.type == "none":
            work.action = p.action
            await self._finish(work, RemediationStatus.NOTIFIED, reason=p.reason)
            return
        if not approved and not resumed:
            age = now - request.emitted_at.timestamp()
            limit = self.settings.responder_max_request_age_s
            if not work.check(
                "stale", age <= limit, f"request is {age:.0f}s old (limit {limit:.0f}s)"
            ):
                await self._reject(
                    work, "stale", f"request is {age:.0f}s old; the situation may have changed"
                )
                return
        problem = self._action_policy(request, declared)
        if not work.check("action_policy", problem is None, problem or "matches the runbook"):
            await self._reject(work, "action_policy", problem or "")
            return
        assert declared is not None
        work.action = declared  # the runbook's copy is what runs, never the request's
        if not work.target:
            await self._reject(work, "target_policy", "the request names no container")
            return
        try:
            info = await self.docker.inspect(work.target)
        except ContainerNotFound:
            work.check("target_policy", False, "container does not exist")
            await self._reject(
                work, "target_policy", f"container {work.target[:12]} does not exist"
            )
            return
        work.container = info
        verdict = target_policy(info, self.settings.remediation_scope, self.own_id)
        if not work.check("target_policy", verdict.allowed, verdict.detail):
            await self._reject(work, "target_policy", verdict.detail)
            return
        # Resuming a stopped replica's action: its lease dies with its TTL, so wait for it.
        wait = self.settings.responder_lease_ttl_s + 2 if resumed else 0.0
        async with self.leases.hold(info.id, self.instance, wait_s=wait) as held:
            if not held:
                holder = await self.leases.holder(info.id)
                detail = f"another action is in progress on {info.name} (lease held by {holder})"
                work.check("lease", False, detail)
                await self._reject(work, "lease", detail)
                return
            work.check("lease", True, "acquired")
            if resumed:
                await self._resume(work, info)
                return
            if not await self._rate_guards(work, info, declared, now):
                return
            needs_approval = declared.approval.required or p.needs_human
            if needs_approval and not approved:
                await self._propose(work, declared)
                return
            await self._execute(work, info, declared)

    def _action_policy(
        self, request: RemediationNeededEvent, declared: Action | None
    ) -> str | None:
        p = request.payload
        runbook = self.runbooks.get(p.runbook_id)
        if runbook is None:
            return f"unknown runbook {p.runbook_id!r}"
        if declared is None:
            allowed = [a.id for a in runbook.actions]
            return f"action {p.action.id!r} is not in runbook {runbook.id} (allowed: {allowed})"
        if declared.type != p.action.type:
            return (
                f"action {p.action.id!r} is a {declared.type} in the runbook, not {p.action.type}"
            )
        if declared.params != p.action.params:
            if declared.type == "exec":
                return "exec argv is not the runbook's allowlisted argv"
            return f"parameters of {p.action.id!r} differ from the runbook's"
        return None

    async def _rate_guards(
        self, work: Work, info: ContainerInfo, action: Action, now: float
    ) -> bool:
        s = self.settings
        left = await self.state.cooldown_left(info.id, action.type)
        if not work.check("cooldown", left <= 0, f"{left:.0f}s left" if left > 0 else "clear"):
            await self._reject(
                work,
                "cooldown",
                f"{action.type} of {info.name} is cooling down for {left:.0f}s more",
            )
            return False
        window = action.guards.window_s or s.responder_circuit_window_s
        limit = action.guards.max_attempts or s.responder_circuit_max_actions
        times = await self.state.action_times(info.id, now - window)
        is_open = circuit_open(times, now, window, limit)
        detail = f"{len(times)} action(s) in the last {window:.0f}s (max {limit})"
        if not work.check("circuit_breaker", not is_open, detail):
            reason = f"circuit open for {info.name}: {detail}; a person must look"
            await self._escalate(work, info, "circuit_breaker", reason, window)
            await self._reject(work, "circuit_breaker", reason)
            return False
        if action.type in RESTARTING_ACTIONS:
            horizon = now - max(window, s.responder_crash_loop_window_s * 10)
            restarts = await self.state.restart_times(info.id, horizon)
            deaths = await deaths_since(self.redis, info.id, horizon)
            quick = quick_deaths_after_restarts(restarts, deaths, s.responder_crash_loop_window_s)
            detail = (
                f"{quick} of our restart(s) were followed by a death within "
                f"{s.responder_crash_loop_window_s:.0f}s (limit {s.responder_crash_loop_limit})"
            )
            if not work.check("crash_loop", quick < s.responder_crash_loop_limit, detail):
                reason = f"{info.name} keeps dying right after restarts ({detail}); stopping here"
                await self._escalate(work, info, "crash_loop", reason, window)
                await self._reject(work, "crash_loop", reason)
                return False
        return True

    async def _execute(self, work: Work, info: ContainerInfo, action: Action) -> None:
        if self.settings.dry_run:
            work.check("dry_run", False, "dry-run is on: nothing was changed")
            await self._finish(
                work,
                RemediationStatus.DRY_RUN,
                reason=f"dry-run: would {action.type} {info.name} ({action.id})",
                dry_run=True,
            )
            return
        work.check("dry_run", True, "dry-run is off")
        issued_at = self.clock.time()
        await work.record.executing(self.instance, issued_at)
        started = time.monotonic()
        result = await self.executor.run(action, info)
        work.timings["action_ms"] = round((time.monotonic() - started) * 1000, 1)
        # Booked at the time it was issued: a death during verification comes after it.
        await self._book(info, action, result.ok, issued_at)
        status = RemediationStatus.SUCCEEDED if result.ok else RemediationStatus.FAILED
        await self._finish(
            work, status, reason=result.detail, verified=result.verified, output=result.output
        )

    async def _book(self, info: ContainerInfo, action: Action, ok: bool, at: float) -> None:
        await self.state.record_action(
            info.id,
            action.type,
            at,
            succeeded=ok,
            cooldown_base_s=(
                action.guards.cooldown_s
                if action.guards.cooldown_s is not None
                else self.settings.responder_cooldown_s
            ),
            cooldown_cap_s=self.settings.responder_cooldown_max_s,
        )

    async def _resume(self, work: Work, info: ContainerInfo) -> None:
        """A replica stopped after issuing the action: never issue it twice, verify instead."""
        action = work.action
        assert action is not None
        prior = await self.redis.hget(work.record.key, "executing_at")
        since = float(prior) if prior else None
        ok, detail = await self.executor.verify(action, info, since=since)
        if await self.state.cooldown_left(info.id, action.type) <= 0:
            # The stopped replica did not get to book it.
            await self._book(info, action, ok, since or self.clock.time())
        status = RemediationStatus.SUCCEEDED if ok else RemediationStatus.FAILED
        await self._finish(
            work,
            status,
            reason=f"resumed after a replica stopped mid-action: {detail}",
            verified=ok,
        )

    # ------------------------------------------------------------------ approvals

    async def _propose(self, work: Work, action: Action) -> None:
        request = work.request
        p = request.payload
        why = (
            f"low confidence ({p.analysis.confidence:.2f}): {p.reason}"
            if p.needs_human
            else f"runbook {p.runbook_id} requires approval for {action.id}"
        )
        proposal = await self.approvals.create(
            request, action.approval.timeout_s, self.clock.time(), why
        )
        work.proposal = proposal
        work.check("approval", False, f"waiting for a human: {proposal.approve_command}")
        ask = make_event(
            ApprovalRequestEvent,
            source=self.source,
            subject=request.subject,
            severity=Severity.WARNING if request.severity is Severity.INFO else request.severity,
            payload=ApprovalRequest(
                proposal_id=proposal.id,
                request_id=request.id,
                runbook_id=p.runbook_id,
                action=action,
                alert_kind=p.alert_kind,
                expires_at=to_datetime(proposal.expires_at),
                analysis=p.analysis,
                evidence=f"{why}. Root cause: {p.analysis.root_cause}"[:2000],
                approve_command=proposal.approve_command,
                deny_command=proposal.deny_command,
            ),
            occurred_at=self.clock.now(),
            emitted_at=self.clock.now(),
            incident_id=request.incident_id,
            causation_id=request.id,
            idempotency_key=f"approval:{proposal.id}",
        )
        await self.bus.publish(ask)
        await self._finish(
            work,
            RemediationStatus.PENDING_APPROVAL,
            reason=f"{why}; approve with `{proposal.approve_command}` before it expires",
            audit_event="proposed",
        )

    async def _run_proposal(
        self, proposal: Proposal, decided_by: str, causation: str | None
    ) -> None:
        try:
            await self.approvals.transition(
                proposal.id, ProposalState.EXECUTING, {ProposalState.APPROVED}, actor=self.actor
            )
        except ApprovalError as exc:
            self.log.info("responder.proposal_skipped", proposal=proposal.id, reason=str(exc))
            return  # another replica took it, or it was never approved
        request = proposal.request_event()
        record = RequestRecord(self.redis, f"proposal:{proposal.id}")
        await record.begin(self.instance, self.clock.time())
        work = Work(
            request, f"{decided_by} (approved) via {self.actor}", record, proposal, causation
        )
        work.check("approval", True, f"approved by {decided_by}")
        await self._process(work, resumed=False, approved=True)

    async def _close_denied(self, proposal: Proposal, event: ApprovalDecisionEvent) -> None:
        record = RequestRecord(self.redis, f"proposal:{proposal.id}")
        prior = await record.begin(self.instance, self.clock.time())
        if prior.get("phase") == "done":
            await self._republish_if_needed(record, prior)
            return
        request = proposal.request_event()
        work = Work(request, event.payload.actor, record, proposal, event.id)
        work.action = request.payload.action
        work.check("approval", False, f"denied by {event.payload.actor}: {event.payload.reason}")
        await self._finish(
            work,
            RemediationStatus.DENIED,
            reason=f"denied by {event.payload.actor}: {event.payload.reason or 'no reason given'}",
            audit_event="denied",
        )

    @periodic(2.0)
    async def expire_proposals(self) -> None:
        """Silence means no action: pending proposals past their deadline expire."""
        now = self.clock.time()
        for proposal_id in await self.approvals.due_for_expiry(now):
            try:
                await self.approvals.transition(
                    proposal_id,
                    ProposalState.EXPIRED,
                    {ProposalState.PENDING},
                    now=now,
                    actor="timeout",
                    reason="no decision before the deadline",
                )
            except ApprovalError:
                continue  # decided meanwhile, or another replica expired it
            proposal = await self.approvals.get(proposal_id)
            if proposal is None:
                continue
            record = RequestRecord(self.redis, f"proposal:{proposal.id}")
            await record.begin(self.instance, now)
            work = Work(proposal.request_event(), "timeout", record, proposal)
            work.action = work.request.payload.action
            work.check("approval", False, "expired without a decision")
            await self._finish(
                work,
                RemediationStatus.EXPIRED,
                reason="no one decided before the deadline; nothing was done",
                audit_event="expired",
            )

    @periodic(10.0)
    async def sweep_approved(self) -> None:
        """Approved proposals whose decision event was lost still run."""
        now = self.clock.time()
        for proposal in await self.approvals.in_state(ProposalState.APPROVED):
            if proposal.decided_at is not None and now - proposal.decided_at > 10:
                await self._run_proposal(proposal, proposal.decided_by, None)

    @periodic(3600.0)
    async def trim_audit(self) -> None:
        await audit.trim(self.redis, self.settings.audit_retention_days)

    # ------------------------------------------------------------------ outcomes

    async def _reject(self, work: Work, guard: str, reason: str) -> None:
        await self._finish(work, RemediationStatus.REJECTED, guard=guard, reason=reason)

    async def _escalate(
        self, work: Work, info: ContainerInfo, guard: str, reason: str, window: float
    ) -> None:
        if not await self.state.first_escalation(info.id, guard, window):
            return
        request = work.request
        event = make_event(
            EscalationEvent,
            source=self.source,
            subject=request.subject,
            severity=Severity.CRITICAL,
            payload=Escalation(
                reason=reason,
                guard=guard,
                action_type=request.payload.action.type,
                request_id=request.id,
                details={"runbook": request.payload.runbook_id, "container": info.name},
            ),
            occurred_at=self.clock.now(),
            emitted_at=self.clock.now(),
            incident_id=request.incident_id,
            causation_id=request.id,
            idempotency_key=f"escalation:{info.id}:{guard}:{int(self.clock.time())}",
        )
        await self.bus.publish(event)
        self.log.warning("responder.escalated", guard=guard, container=info.name, reason=reason)

    async def _finish(
        self,
        work: Work,
        status: RemediationStatus,
        *,
        guard: str | None = None,
        reason: str = "",
        verified: bool | None = None,
        output: str | None = None,
        dry_run: bool = False,
        audit_event: str | None = None,
    ) -> None:
        request = work.request
        p = request.payload
        action = work.action or p.action
        duration_ms = round((time.monotonic() - work.started) * 1000, 1)
        severity = {
            RemediationStatus.FAILED: Severity.CRITICAL,
            RemediationStatus.REJECTED: Severity.WARNING,
            RemediationStatus.PENDING_APPROVAL: Severity.WARNING,
            RemediationStatus.EXPIRED: Severity.WARNING,
            RemediationStatus.NOTIFIED: request.severity,
        }.get(status, Severity.INFO)
        complete = make_event(
            RemediationCompleteEvent,
            source=self.source,
            subject=request.subject,
            severity=severity,
            payload=RemediationComplete(
                request_id=request.id,
                alert_kind=p.alert_kind,
                alert_occurred_at=p.alert_occurred_at,
                runbook_id=p.runbook_id,
                action_id=action.id,
                action_type=action.type,
                status=status,
                guard=guard,
                reason=self.redactor.text(reason)[:2000],
                dry_run=dry_run,
                actor=work.actor,
                proposal_id=work.proposal.id if work.proposal else None,
                duration_ms=duration_ms,
                verified=verified,
                output=output,
                analysis=p.analysis,
            ),
            occurred_at=self.clock.now(),
            emitted_at=self.clock.now(),
            incident_id=request.incident_id,
            causation_id=work.causation_id or request.id,
            idempotency_key=(
                f"complete:{work.proposal.id}:{status}"
                if work.proposal
                else f"complete:{request.idempotency_key}"
            ),
        )
        await work.record.done(complete.model_dump_json())
        info = work.container
        await audit.append(
            self.redis,
            audit.AuditRecord(
                at=self.clock.time(),
                actor=work.actor,
                event=audit_event or _audit_event(status),
                outcome=status.value if guard is None else f"{status.value}:{guard}",
                request_id=request.id,
                incident_id=request.incident_id,
                proposal_id=work.proposal.id if work.proposal else None,
                container_id=info.id if info else request.subject.container_id,
                container_name=info.name if info else request.subject.container_name,
                runbook_id=p.runbook_id,
                action_id=action.id,
                action_type=action.type,
                params=action.params.model_dump(mode="json"),
                guards=work.guards,
                dry_run=dry_run,
                reason=self.redactor.text(reason)[:2000],
                durations_ms={"total": duration_ms, **work.timings},
            ),
        )
        await self.bus.publish(complete)
        await work.record.published()
        final = _PROPOSAL_FINAL.get(status)
        if work.proposal is not None and final is not None:
            try:
                await self.approvals.transition(
                    work.proposal.id,
                    final,
                    {ProposalState.EXECUTING},
                    actor=self.actor,
                    reason=f"{status}: {reason}",
                )
            except ApprovalError as exc:
                self.log.warning(
                    "responder.proposal_state", proposal=work.proposal.id, error=str(exc)
                )
        self.counts[status.value] = self.counts.get(status.value, 0) + 1
        self.log.info(
            "responder.outcome",
            status=status,
            guard=guard,
            container=request.subject.display,
            action=action.id,
            dry_run=dry_run,
            reason=self.redactor.clip(reason, 200),
            proposal=work.proposal.id if work.proposal else None,
        )

    async def _republish_if_needed(self, record: RequestRecord, prior: dict[str, str]) -> None:
        if prior.get("published") == "1" or not prior.get("outcome"):
            return
        event = parse_event(prior["outcome"])
        await self.bus.publish(event)
        await record.published()


def _audit_event(status: RemediationStatus) -> str:
    return {
        RemediationStatus.SUCCEEDED: "executed",
        RemediationStatus.FAILED: "executed",
        RemediationStatus.REJECTED: "rejected",
        RemediationStatus.DRY_RUN: "dry_run",
        RemediationStatus.PENDING_APPROVAL: "proposed",
        RemediationStatus.EXPIRED: "expired",
        RemediationStatus.DENIED: "denied",
        RemediationStatus.NOTIFIED: "notified",
    }[status]


def build(settings: Settings, redis: Redis) -> ResponderAgent:
    return ResponderAgent(
        settings=settings,
        redis=redis,
        # Restarts block a thread for the container's stop time; verification polls too.
        docker=DockerGateway(connect_docker(settings), concurrency=2 * settings.bus_concurrency),
        runbooks=load_runbooks(settings.runbooks_dir),
        own_id=own_container_id(),
    )

"""The Responder agent: executes `hemostat:remediation_needed` requests under hard guardrails and
publishes one `hemostat:remediation_complete` per request.

Each request goes: claim (idempotency) → gather facts (runbook action, target, lease, guard
state) → `core.evaluate()` → act, book and publish. An action is booked at the gate before Docker
hears of it and verified later by a scheduled follow-up any replica can finish, so a verification
never holds an event handler and a replica that stops mid-action leaves nothing half done.
Actions that need a human become proposals and run only after an approval, every guard checked
again right before executing.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter
from redis.asyncio import Redis

from agents.base import BaseAgent, periodic
from agents.responder.core import (
    Binding,
    Claim,
    ClaimStatus,
    Facts,
    ResponderLimits,
    TargetFacts,
    Verdict,
    VerdictKind,
    admit,
    after_outcome,
    evaluate,
    judge,
    target_policy,
    with_container_overrides,
)
from agents.responder.executor import Executor, Prepared
from agents.responder.fatigue import Answer, FatigueStore
from agents.responder.store import RequestStore, ResponderState
from shared import audit, keys
from shared.actions import Action, ActionType
from shared.approvals import ApprovalStore, Proposal, ProposalState
from shared.backoff import backoff_delay
from shared.clock import to_datetime
from shared.containers import ContainerInfo, own_container_id
from shared.docker_api import DockerGateway, connect_docker
from shared.errors import (
    ActionRejected,
    ApprovalError,
    ContainerNotFound,
    DockerError,
    DockerUnavailable,
)
from shared.eventbus import current_delivery
from shared.events import (
    ApprovalDecisionEvent,
    ApprovalRequest,
    ApprovalRequestEvent,
    Channel,
    Decision,
    Escalation,
    EscalationEvent,
    Event,
    IncidentResolvedEvent,
    RemediationComplete,
    RemediationCompleteEvent,
    RemediationNeededEvent,
    RemediationStatus,
    Severity,
    make_event,
    parse_event,
)
from shared.heartbeat import live_heartbeats
from shared.redaction import Redactor
from shared.redis_client import CONNECTION_ERRORS
from shared.runbooks import Runbooks, load_runbooks
from shared.settings import Settings

__all__ = ["ResponderAgent", "Work", "build"]

_ACTION: TypeAdapter[Action] = TypeAdapter(Action)
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


@dataclass
class Work:
    """One request (or one approved proposal) being decided by this replica."""

    request: RemediationNeededEvent
    actor: str
    record_key: str
    holder: str
    proposal: Proposal | None = None
    causation_id: str | None = None
    received_at: float = field(default_factory=time.time)
    timings: dict[str, float] = field(default_factory=dict)


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
        self.counts: dict[str, int] = {}
        self._issuing: set[asyncio.Task[None]] = set()

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
            "outcomes": dict(self.counts),
            "issuing": len(self._issuing),
        }

    async def on_stop(self) -> None:
        if self._issuing:
            # Calls already sent to Docker finish; their verification is scheduled in Redis.
            await asyncio.wait(self._issuing, timeout=self.settings.shutdown_grace_s)
        self.docker.close()

    def _allowed(self, labels: Any) -> bool:
        limits = self.limits
        return target_policy(labels, limits.scope, watch_label=limits.watch_label).allowed

    # ------------------------------------------------------------------ entry points

    async def handle(self, event: Event) -> None:
        if event.subject.host != self.host:
            if isinstance(event, RemediationNeededEvent):
                await self._watch_orphan(event)
            return  # another host's Responders act on it
        if isinstance(event, RemediationNeededEvent):
            await self._on_request(event)
        elif isinstance(event, ApprovalDecisionEvent):
            await self._on_decision(event)
        elif isinstance(event, IncidentResolvedEvent):
            await self._on_resolved(event)

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
            await self._decide(work, claim)
        except DockerUnavailable as exc:
            if delivery is None or delivery.attempt < self.settings.bus_max_deliveries:
                raise  # retried with backoff: the daemon may be back in a moment
            # The last delivery: say so instead of leaving the request to the dead letters.
            await self._finish(
                work,
                Verdict(kind=VerdictKind.REJECT),
                RemediationStatus.FAILED,
                reason=f"Docker was unreachable for every attempt ({exc}); nothing was done",
                action=request.payload.action,
            )

    # ------------------------------------------------------------------ other hosts

    async def _watch_orphan(self, request: RemediationNeededEvent) -> None:
        """Another host's request: checked at a deadline, in case no Responder of it takes it."""
        age = self.clock.time() - request.emitted_at.timestamp()
        if age > self.limits.max_request_age_s:
            return  # its host would only report it stale
        due = self.clock.time() + self.settings.responder_orphan_deadline_s
        await self.requests.watch_orphan(
            RequestStore.key(request.idempotency_key), request.model_dump_json(), due
        )

    @periodic(lambda self: min(5.0, self.settings.responder_orphan_deadline_s / 4))
    async def sweep_orphans(self) -> None:
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
                await self.requests.watch_orphan(
                    record_key, raw, now + self.settings.responder_orphan_deadline_s, again=True
                )
                continue
            holder = self.state.new_token(f"{self.instance}:orphan")
            claim = await self.requests.claim(record_key, "orphan", holder, now)
            if claim.status is ClaimStatus.NEW:
                why = "has no live Responder" if host not in alive else "did not take it"
                work = Work(request, self.actor, record_key, holder, causation_id=request.id)
                await self._finish(
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

    async def _on_decision(self, event: ApprovalDecisionEvent) -> None:
        # (Its subject is the request's: only this host's Responders get here.)
        decision = event.payload
        proposal = await self.approvals.get(decision.proposal_id)
        if proposal is None:
            self.log.warning("responder.unknown_proposal", proposal=decision.proposal_id)
            return
        if decision.decision is Decision.DENIED:
            await self._answered(proposal, Answer.DENIED, decision.actor)
            await self._close_proposal(
                proposal,
                RemediationStatus.DENIED,
                actor=decision.actor,
                reason=f"denied by {decision.actor}: {decision.reason or 'no reason given'}",
                causation_id=event.id,
            )
        else:
            await self._run_proposal(proposal, decision.actor, event.id)

    # ------------------------------------------------------------------ deciding

    async def _decide(self, work: Work, claim: Claim, *, approved: bool = False) -> None:
        early = admit(claim)
        if early is not None:
            await self._on_early(work, early)
            return
        request = work.request
        p = request.payload
        runbook = self.runbooks.get(p.runbook_id)
        declared = runbook.action(p.action.id) if runbook else None
        info: ContainerInfo | None = None
        target: TargetFacts | None = None
        name = request.subject.container_id or request.subject.container_name
        if p.action.type != "none" and name:
            try:
                info = await self.docker.inspect(name)
                own = bool(self.own_id and info.id.startswith(self.own_id))
                target = TargetFacts(id=info.id, name=info.name, labels=info.labels, is_own=own)
            except ContainerNotFound:
                info = None
        if info is None:
            facts = Facts(
                claim=claim,
                approved=approved,
                runbook_known=runbook is not None,
                target=None,
                runbook_version=runbook.version if runbook else None,
                approved_binding=_binding(work.proposal) if approved else None,
            )
            await self._conclude(
                work,
                evaluate(request, declared, facts, self.clock.time(), self.limits),
                None,
                declared,
            )
            return
        token = self.state.new_token(f"{self.instance}:{request.idempotency_key}")
        acquired = await self.state.acquire(info.id, token)
        gated = False
        try:
            async with (
                self.state.keeper(info.id, token, self.log) if acquired else _nothing() as keeper
            ):
                horizon = self.clock.time() - self.limits.history_horizon(declared or p.action)
                guard = await self.state.read(info.id, p.action.type, horizon, acquired)
                facts = Facts(
                    claim=claim,
                    approved=approved,
                    runbook_known=runbook is not None,
                    target=target,
                    guard=guard,
                    fatigue=await self.fatigue.read(
                        self.host,
                        info.id,
                        p.action.id,
                        request.incident_id or "-",
                        request.idempotency_key,
                    ),
                    runbook_version=runbook.version if runbook else None,
                    approved_binding=_binding(work.proposal) if approved else None,
                )
                verdict = evaluate(request, declared, facts, self.clock.time(), self.limits)
                if verdict.kind is VerdictKind.ACT:
                    assert declared is not None
                    declared = with_container_overrides(declared, info.labels)
                    if keeper is not None and keeper.lost:
                        await self._finish(
                            work,
                            verdict,
                            RemediationStatus.REJECTED,
                            guard="lease",
                            reason="the lease was lost before acting (Redis unreachable?); "
                            "nothing was done",
                            info=info,
                            action=declared,
                        )
                        return
                    gated = await self._act(work, verdict, info, declared, token)
                    return
                if verdict.kind is VerdictKind.DEFER:
                    await self._defer(work, verdict, approved)
                    return
                await self._conclude(work, verdict, info, declared)
        finally:
            if acquired and not gated:
                await self.state.release(info.id, token)

    async def _defer(self, work: Work, verdict: Verdict, approved: bool) -> None:
        """Decide again shortly: the action in flight on this container may change everything
        (it may have died again, which is what this request is about)."""
        context = {
            "request": work.request.model_dump_json(),
            "actor": work.actor,
            "proposal_id": work.proposal.id if work.proposal else None,
            "causation_id": work.causation_id,
            "approved": approved,
            "received_at": work.received_at,
        }
        await self.requests.defer(
            work.record_key, context, self.clock.time() + self.settings.responder_defer_poll_s
        )
        self.log.info("responder.deferred", request=work.request.id, reason=verdict.reason)

    async def _redecide(self, record_key: str) -> None:
        record = await self.requests.load(record_key)
        raw = record.data.get("deferred")
        if record.phase != "received" or not raw:
            await self.requests.undefer(record_key)
            if record.phase == "done":
                await self._deliver(record_key)
            return
        ctx = json.loads(raw)
        request = parse_event(ctx["request"])
        assert isinstance(request, RemediationNeededEvent)
        holder = self.state.new_token(self.instance)
        claim = await self.requests.claim(
            record_key, record.data.get("entry", ""), holder, self.clock.time()
        )
        proposal = await self.approvals.get(ctx["proposal_id"]) if ctx.get("proposal_id") else None
        work = Work(
            request,
            ctx["actor"],
            record_key,
            holder,
            proposal,
            ctx.get("causation_id"),
            received_at=float(ctx.get("received_at") or time.time()),
        )
        try:
            await self._decide(work, claim, approved=bool(ctx.get("approved")))
        except DockerUnavailable as exc:
            age = self.clock.time() - work.received_at
            if age <= self.limits.max_request_age_s:
                raise  # the hold lapses and it is decided again
            await self._finish(
                work,
                Verdict(kind=VerdictKind.REJECT),
                RemediationStatus.FAILED,
                reason=f"Docker stayed unreachable ({exc}); nothing was done",
                action=request.payload.action,
            )

    async def _on_early(self, work: Work, verdict: Verdict) -> None:
        if verdict.kind is VerdictKind.DUPLICATE:
            await self._deliver(work.record_key)
            self.log.info("responder.duplicate", request=work.request.id)
        elif verdict.kind is VerdictKind.TWIN:
            self.log.info("responder.twin", request=work.request.id, reason=verdict.reason)
        elif verdict.kind is VerdictKind.FOLLOW_UP:
            record = await self.requests.load(work.record_key)
            if record.phase == "executing" and not await self.requests.is_scheduled(
                work.record_key
            ):
                await self.requests.schedule(work.record_key, self.clock.time())
            self.log.info("responder.follow_up", request=work.request.id)

    async def _conclude(
        self, work: Work, verdict: Verdict, info: ContainerInfo | None, action: Action | None
    ) -> None:
        """Every verdict but ACT: refuse, notify, propose or say what a dry run would do."""
        chosen = action or work.request.payload.action
        if verdict.kind is VerdictKind.NOTIFY:
            await self._finish(
                work,
                verdict,
                RemediationStatus.NOTIFIED,
                reason=verdict.reason,
                info=info,
                action=chosen,
            )
        elif verdict.kind is VerdictKind.PROPOSE:
            await self._propose(work, verdict, info, chosen)
        elif verdict.kind in (VerdictKind.SUPPRESS, VerdictKind.BLOCK):
            status = (
                RemediationStatus.SUPPRESSED
                if verdict.kind is VerdictKind.SUPPRESS
                else RemediationStatus.BLOCKED
            )
            await self._finish(
                work,
                verdict,
                status,
                guard=verdict.guard,
                reason=verdict.reason,
                info=info,
                action=chosen,
            )
        elif verdict.kind is VerdictKind.DRY_RUN:
            await self._finish(
                work,
                verdict,
                RemediationStatus.DRY_RUN,
                reason=verdict.reason,
                info=info,
                action=chosen,
                dry_run=True,
            )
        else:
            if verdict.escalate and info is not None and verdict.guard:
                await self._escalate(work, info, verdict)
            await self._finish(
                work,
                verdict,
                RemediationStatus.REJECTED,
                guard=verdict.guard,
                reason=verdict.reason,
                info=info,
                action=chosen,
            )

    # ------------------------------------------------------------------ acting

    async def _act(
        self, work: Work, verdict: Verdict, info: ContainerInfo, action: Action, token: str
    ) -> bool:
        """Book at the gate, then issue in the background. True once the gate took the lease."""
        now = self.clock.time()
        prepared = await self.executor.prepare(action, info, now, self._allowed)
        if prepared.problem or prepared.plan is None:
            await self._finish(
                work,
                verdict,
                RemediationStatus.FAILED,
                reason=prepared.problem or "cannot be done",
                info=info,
                action=action,
            )
            return False
        context = {
            "request": work.request.model_dump_json(),
            "actor": work.actor,
            "proposal_id": work.proposal.id if work.proposal else None,
            "causation_id": work.causation_id,
            "guards": [g.model_dump(mode="json") for g in verdict.guards],
            "action": action.model_dump(mode="json"),
            "container_name": info.name,
            "received_at": work.received_at,
        }
        try:
            await self.requests.gate(
                work.record_key,
                holder=work.holder,
                lease_token=token,
                container_id=info.id,
                action_type=action.type,
                now=now,
                plan=prepared.plan,
                context=context,
                first_check_at=prepared.plan.deadline,  # issue() reschedules it sooner
                restarting=action.type in (ActionType.RESTART, ActionType.START),
            )
        except ActionRejected as refused:
            if refused.reason == "lease_lost":
                await self._finish(
                    work,
                    verdict,
                    RemediationStatus.REJECTED,
                    guard="lease",
                    reason="the lease expired before acting; nothing was done",
                    info=info,
                    action=action,
                )
                return False
            self.log.warning("responder.gate_refused", request=work.request.id, why=refused.reason)
            return False
        work.timings["decide_ms"] = round((time.time() - work.received_at) * 1000, 1)
        task = asyncio.create_task(self._issue(work.record_key, action, info, prepared))
        self._issuing.add(task)
        task.add_done_callback(self._issuing.discard)
        return True

    async def _issue(
        self, record_key: str, action: Action, info: ContainerInfo, prepared: Prepared
    ) -> None:
        started = time.monotonic()
        try:
            issued = await self.executor.issue(action, info, prepared, self._allowed)
        except Exception:  # task boundary: the verification schedule finishes it at its deadline
            self.log.exception("responder.issue_crashed", record=record_key)
            return
        took = round((time.monotonic() - started) * 1000, 1)
        self.log.info(
            "responder.issued",
            record=record_key,
            action=action.id,
            container=info.name,
            ok=issued.ok,
            detail=issued.detail,
            ms=took,
        )
        deadline = prepared.plan.deadline if prepared.plan else self.clock.time()
        attempt = 0
        while True:
            try:
                if issued.final or not issued.ok:
                    await self._finish_executed(
                        record_key,
                        ok=issued.ok,
                        detail=issued.detail,
                        output=issued.output,
                        verified=issued.verified,
                        action_ms=took,
                    )
                else:
                    await self.requests.mark(
                        record_key, issued="1", issued_detail=issued.detail, action_ms=str(took)
                    )
                    await self.requests.schedule(record_key, self.clock.time())
                return
            except CONNECTION_ERRORS as exc:
                # Redis is away: keep trying. If it stays away past the deadline (or this
                # replica stops), the verification schedule finishes it, here or elsewhere.
                attempt += 1
                self.log.warning("responder.issue_not_recorded", record=record_key, error=str(exc))
                if self.clock.time() > deadline or not await self.sleep(
                    backoff_delay(attempt, base=0.2, cap=2.0)
                ):
                    return

    # ------------------------------------------------------------------ verifying

    @periodic(lambda self: self.settings.responder_verify_poll_s)
    async def verify_due(self) -> None:
        now = self.clock.time()
        hold = now + max(5.0, 4 * self.settings.responder_verify_poll_s)
        due = await self.requests.due(now, hold, limit=128)
        if due:
            await asyncio.gather(*(self._verify(key) for key in due))
        deferred = await self.requests.due(now, hold, limit=64, deferred=True)
        for key in deferred:
            try:
                await self._redecide(key)
            except Exception:  # loop boundary per item: it is due again when its hold lapses
                self.log.exception("responder.redecide_failed", record=key)

    async def _verify(self, record_key: str) -> None:
        try:
            record = await self.requests.load(record_key)
            if record.phase == "done":
                await self._deliver(record_key)
                return
            plan = record.plan
            if record.phase != "executing" or plan is None:
                await self.requests.unschedule(record_key)
                return
            observation = await self.executor.observe(plan, issued=record.flag("issued"))
            verdict = judge(plan, observation, self.clock.time(), self.limits.verify_stable_s)
            if not verdict.done:
                poll = self.settings.responder_verify_poll_s
                await self.requests.schedule(record_key, self.clock.time() + poll)
                return
            issued = record.data.get("issued_detail")
            detail = f"{issued}; {verdict.detail}" if issued else verdict.detail
            await self._finish_executed(
                record_key, ok=verdict.ok, detail=detail, verified=verdict.ok
            )
        except Exception:  # loop boundary per item: one bad record never stops the others
            self.log.exception("responder.verify_failed", record=record_key)

    async def _finish_executed(
        self,
        record_key: str,
        *,
        ok: bool,
        detail: str,
        output: str | None = None,
        verified: bool | None = None,
        action_ms: float | None = None,
    ) -> None:
        """Finish an issued action from its record (this replica issued it, or another did)."""
        record = await self.requests.load(record_key)
        if record.phase != "executing":
            await self._deliver(record_key)
            return
        ctx = record.context
        request = parse_event(ctx["request"])
        assert isinstance(request, RemediationNeededEvent)
        action = _ACTION.validate_python(ctx["action"])
        plan = record.plan
        container_id = plan.container_id if plan else record.data.get("container", "")
        failures = await self.state.failures(container_id, action.type)
        failures, until = after_outcome(action, failures, ok, self.clock.time(), self.limits)
        proposal = await self.approvals.get(ctx["proposal_id"]) if ctx.get("proposal_id") else None
        work = Work(
            request,
            ctx["actor"],
            record_key,
            "",
            proposal,
            ctx.get("causation_id"),
            received_at=float(ctx.get("received_at") or time.time()),
        )
        if action_ms is None and record.number("action_ms") is not None:
            action_ms = record.number("action_ms")
        if action_ms is not None:
            work.timings["action_ms"] = action_ms
        guards = tuple(audit.GuardResult.model_validate(g) for g in ctx.get("guards", []))
        await self._finish(
            work,
            Verdict(kind=VerdictKind.ACT, guards=guards),
            RemediationStatus.SUCCEEDED if ok else RemediationStatus.FAILED,
            reason=detail,
            verified=verified,
            output=output,
            action=action,
            container=(container_id, str(ctx.get("container_name") or "")),
            lease=(container_id, record.data.get("lease", "")),
            booking=(container_id, action.type, failures, until),
        )

    # ------------------------------------------------------------------ approvals

    async def _propose(
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
                evidence=self.redactor.clip(f"{why}. Root cause: {p.analysis.root_cause}", 2000),
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
            verdict,
            RemediationStatus.PENDING_APPROVAL,
            reason=f"{why}; approve with `{proposal.approve_command}` before it expires",
            info=info,
            action=action,
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
        await self._answered(proposal, Answer.WITHDRAWN, decided_by)
        record_key = RequestStore.key(f"proposal:{proposal.id}")
        holder = self.state.new_token(self.instance)
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
            await self._decide(work, claim, approved=True)
        except DockerError as exc:
            # Kept for the sweep, which finishes it as failed at the execution deadline.
            await self.requests.mark(record_key, last_error=str(exc)[:500])
            raise

    async def _close_proposal(
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
        holder = self.state.new_token(self.instance)
        claim = await self.requests.claim(record_key, f"close-{status}", holder, self.clock.time())
        if claim.status is ClaimStatus.DONE:
            await self._deliver(record_key)
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
        await self._finish(
            work,
            Verdict(kind=VerdictKind.REJECT),
            status,
            reason=reason,
            action=work.request.payload.action,
            audit_event=audit_event.get(status),
        )

    @periodic(2.0)
    async def expire_proposals(self) -> None:
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
                await self._close_proposal(
                    proposal,
                    RemediationStatus.EXPIRED,
                    actor="timeout",
                    reason="no one decided before the deadline; nothing was done",
                )
                if expiries == self.limits.approval_max_expiries:
                    await self._escalate_unanswered(proposal, expiries)

    async def _answered(self, proposal: Proposal, answer: Answer, actor: str) -> int:
        bound = _binding(proposal)
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
        event = make_event(
            EscalationEvent,
            source=self.source,
            subject=request.subject,
            severity=Severity.CRITICAL,
            payload=Escalation(
                reason=f"{expiries} proposals to {proposal.action_type} {name} "
                f"({proposal.action_id}) expired with no answer; it will not be proposed again "
                "in this incident — a person must look",
                guard="approval_expired",
                action_type=request.payload.action.type,
                request_id=request.id,
                details={"runbook": proposal.runbook_id, "container": name},
            ),
            occurred_at=self.clock.now(),
            emitted_at=self.clock.now(),
            incident_id=request.incident_id,
            causation_id=request.id,
            idempotency_key=f"escalation:unanswered:{proposal.container_id}:"
            f"{proposal.action_id}:{proposal.incident_id}",
        )
        await self.bus.publish(event)
        self.log.warning("responder.escalated", guard="approval_expired", container=name)

    async def _on_resolved(self, event: IncidentResolvedEvent) -> None:
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
            await self._close_proposal(
                proposal,
                RemediationStatus.CANCELLED,
                actor="hemostat",
                reason=reason,
                causation_id=event.id,
            )

    @periodic(lambda self: self.settings.responder_sweep_interval_s)
    async def sweep_proposals(self) -> None:
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
                await self._close_proposal(
                    proposal,
                    RemediationStatus.FAILED,
                    actor=f"{proposal.decided_by} (approved)",
                    reason=f"approved by {proposal.decided_by} but not executed within "
                    f"{deadline_s:.0f}s (no Responder could run it); nothing was done",
                    require_holder=False,
                )
            elif now - decided > min(10.0, deadline_s / 2) and self._ours(proposal):
                await self._run_proposal(proposal, proposal.decided_by, None)
        for proposal in await self.approvals.in_state(ProposalState.EXECUTING):
            if self._ours(proposal):  # its verification is in its own host's queue
                await self._sweep_executing(proposal, now, deadline_s)

    def _ours(self, proposal: Proposal) -> bool:
        return proposal.request_event().subject.host == self.host

    async def _sweep_executing(self, proposal: Proposal, now: float, deadline_s: float) -> None:
        record_key = RequestStore.key(f"proposal:{proposal.id}")
        record = await self.requests.load(record_key)
        if record.phase == "done":
            await self._deliver(record_key)  # the final transition was not applied yet
            return
        if record.phase == "executing":
            if not await self.requests.is_scheduled(record_key):
                await self.requests.schedule(record_key, self.clock.time())
            return
        started = proposal.executing_at or proposal.updated_at
        if now - started <= deadline_s:
            return
        why = record.data.get("last_error") or "the Responder executing it stopped"
        await self._close_proposal(
            proposal,
            RemediationStatus.FAILED,
            actor=f"{proposal.decided_by} (approved)",
            reason=f"approved by {proposal.decided_by} but not executed within {deadline_s:.0f}s: "
            f"{why}; nothing was done",
            require_holder=False,
        )

    @periodic(3600.0)
    async def trim_audit(self) -> None:
        await audit.trim(self.redis, self.settings.audit_retention_days)

    # ------------------------------------------------------------------ outcomes

    async def _escalate(self, work: Work, info: ContainerInfo, verdict: Verdict) -> None:
        guard, until = verdict.guard, verdict.escalate_until
        assert guard is not None
        assert until is not None
        if not await self.state.claim_escalation(info.id, guard, self.clock.time(), until):
            return
        request = work.request
        event = make_event(
            EscalationEvent,
            source=self.source,
            subject=request.subject,
            severity=Severity.CRITICAL,
            payload=Escalation(
                reason=self.redactor.text(verdict.reason),
                guard=verdict.guard,
                action_type=request.payload.action.type,
                request_id=request.id,
                details={"runbook": request.payload.runbook_id, "container": info.name},
            ),
            occurred_at=self.clock.now(),
            emitted_at=self.clock.now(),
            incident_id=request.incident_id,
            causation_id=request.id,
            idempotency_key=f"escalation:{info.id}:{verdict.guard}:{verdict.escalate_until:.0f}",
        )
        await self.bus.publish(event)
        self.log.warning("responder.escalated", guard=verdict.guard, container=info.name)

    async def _finish(
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
        complete = make_event(
            RemediationCompleteEvent,
            source=self.source,
            subject=request.subject,
            severity=_SEVERITY.get(
                status, request.severity if status is RemediationStatus.NOTIFIED else Severity.INFO
            ),
            payload=RemediationComplete(
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
            occurred_at=self.clock.now(),
            emitted_at=self.clock.now(),
            incident_id=request.incident_id,
            causation_id=work.causation_id or request.id,
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
        await self._deliver(work.record_key)
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

    async def _deliver(self, record_key: str) -> None:
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


def _binding(proposal: Proposal | None) -> Binding | None:
    """What the person approved; None for a proposal made before bindings existed."""
    if proposal is None or not proposal.binding:
        return None
    return Binding.model_validate_json(proposal.binding)


class _nothing:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


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

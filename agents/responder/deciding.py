"""Deciding one request: gather the facts, `core.evaluate()`, and carry the verdict out.

The facts are the runbook's copy of the action, the target (`docker inspect`) and, while holding
the container's lease (`ResponderState.acquire`, renewed by its keeper), the guard state and what
people already answered about proposals. The verdict then acts (`Issuer.act`), proposes
(`Proposals.propose`), waits for the action in flight (deferred, decided again shortly) or ends the
request (`Outcomes.finish`).
"""

from __future__ import annotations

import contextlib
import json
import time

from agents.base import AgentContext
from agents.responder.core import (
    Claim,
    Facts,
    ResponderLimits,
    TargetFacts,
    Verdict,
    VerdictKind,
    admit,
    evaluate,
    with_container_overrides,
)
from agents.responder.fatigue import FatigueStore
from agents.responder.issuing import Issuer
from agents.responder.outcomes import Outcomes
from agents.responder.proposals import Proposals, binding_of
from agents.responder.store import RequestStore, ResponderState
from agents.responder.work import Work
from shared.actions import Action
from shared.approvals import ApprovalStore
from shared.containers import ContainerInfo
from shared.docker_api import DockerGateway
from shared.errors import ContainerNotFound, DockerUnavailable
from shared.events import RemediationNeededEvent, RemediationStatus, parse_event
from shared.runbooks import Runbooks

__all__ = ["Decider"]


class Decider:
    """From a claimed request to its verdict carried out; deferred requests decided again."""

    def __init__(
        self,
        *,
        agent: AgentContext,
        docker: DockerGateway,
        runbooks: Runbooks,
        own_id: str | None,
        requests: RequestStore,
        state: ResponderState,
        approvals: ApprovalStore,
        fatigue: FatigueStore,
        issuer: Issuer,
        proposals: Proposals,
        outcomes: Outcomes,
        limits: ResponderLimits,
        host: str,
        defer_poll_s: float,
    ) -> None:
        self.agent = agent
        self.clock = agent.clock
        self.log = agent.log
        self.docker = docker
        self.runbooks = runbooks
        self.own_id = own_id
        self.requests = requests
        self.state = state
        self.approvals = approvals
        self.fatigue = fatigue
        self.issuer = issuer
        self.proposals = proposals
        self.outcomes = outcomes
        self.limits = limits
        self.host = host
        self.defer_poll_s = defer_poll_s

    async def decide(self, work: Work, claim: Claim, *, approved: bool = False) -> None:
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
                approved_binding=binding_of(work.proposal) if approved else None,
            )
            await self._conclude(
                work,
                evaluate(request, declared, facts, self.clock.time(), self.limits),
                None,
                declared,
            )
            return
        token = self.state.new_token(f"{self.agent.instance}:{request.idempotency_key}")
        acquired = await self.state.acquire(info.id, token)
        gated = False
        try:
            # Without the lease (another action holds the container) there is none to keep.
            async with (
                self.state.keeper(info.id, token, self.log)
                if acquired
                else contextlib.nullcontext() as keeper
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
                    approved_binding=binding_of(work.proposal) if approved else None,
                )
                verdict = evaluate(request, declared, facts, self.clock.time(), self.limits)
                if verdict.kind is VerdictKind.ACT:
                    assert declared is not None
                    declared = with_container_overrides(declared, info.labels)
                    if keeper is not None and keeper.lost:
                        await self.outcomes.finish(
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
                    gated = await self.issuer.act(work, verdict, info, declared, token)
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
        await self.requests.defer(work.record_key, context, self.clock.time() + self.defer_poll_s)
        self.log.info("responder.deferred", request=work.request.id, reason=verdict.reason)

    async def redecide_due(self, now: float, hold: float) -> None:
        """Decide again every deferred request due by `now`, held from other replicas until
        `hold`."""
        deferred = await self.requests.due(now, hold, limit=64, deferred=True)
        for key in deferred:
            try:
                await self._redecide(key)
            except Exception:  # loop boundary per item: it is due again when its hold lapses
                self.log.exception("responder.redecide_failed", record=key)

    async def _redecide(self, record_key: str) -> None:
        record = await self.requests.load(record_key)
        raw = record.data.get("deferred")
        if record.phase != "received" or not raw:
            await self.requests.undefer(record_key)
            if record.phase == "done":
                await self.outcomes.deliver(record_key)
            return
        ctx = json.loads(raw)
        request = parse_event(ctx["request"])
        assert isinstance(request, RemediationNeededEvent)
        holder = self.state.new_token(self.agent.instance)
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
            await self.decide(work, claim, approved=bool(ctx.get("approved")))
        except DockerUnavailable as exc:
            age = self.clock.time() - work.received_at
            if age <= self.limits.max_request_age_s:
                raise  # the hold lapses and it is decided again
            await self.outcomes.finish(
                work,
                Verdict(kind=VerdictKind.REJECT),
                RemediationStatus.FAILED,
                reason=f"Docker stayed unreachable ({exc}); nothing was done",
                action=request.payload.action,
            )

    async def _on_early(self, work: Work, verdict: Verdict) -> None:
        if verdict.kind is VerdictKind.DUPLICATE:
            await self.outcomes.deliver(work.record_key)
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
            await self.outcomes.finish(
                work,
                verdict,
                RemediationStatus.NOTIFIED,
                reason=verdict.reason,
                info=info,
                action=chosen,
            )
        elif verdict.kind is VerdictKind.PROPOSE:
            await self.proposals.propose(work, verdict, info, chosen)
        elif verdict.kind in (VerdictKind.SUPPRESS, VerdictKind.BLOCK):
            status = (
                RemediationStatus.SUPPRESSED
                if verdict.kind is VerdictKind.SUPPRESS
                else RemediationStatus.BLOCKED
            )
            await self.outcomes.finish(
                work,
                verdict,
                status,
                guard=verdict.guard,
                reason=verdict.reason,
                info=info,
                action=chosen,
            )
        elif verdict.kind is VerdictKind.DRY_RUN:
            await self.outcomes.finish(
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
                await self.outcomes.escalate(work, info, verdict)
            await self.outcomes.finish(
                work,
                verdict,
                RemediationStatus.REJECTED,
                guard=verdict.guard,
                reason=verdict.reason,
                info=info,
                action=chosen,
            )

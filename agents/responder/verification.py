"""The verification schedule: issued actions are verified later, by whichever replica takes them.

An action booked at the gate has its verification scheduled in Redis (`RequestStore.schedule`), so
a verification never holds an event handler and a replica that stops mid-action leaves it to
another: `serve()` claims due records, `Executor.observe()`s the container, `core.judge()` decides,
and `finish_executed()` finishes the action from its record — the same whichever replica issued
it.
"""

from __future__ import annotations

import asyncio
import time

from pydantic import TypeAdapter

from agents.base import AgentContext
from agents.responder.core import ResponderLimits, Verdict, VerdictKind, after_outcome, judge
from agents.responder.executor import Executor
from agents.responder.outcomes import Outcomes
from agents.responder.store import RequestStore, ResponderState
from agents.responder.work import Work
from shared import audit
from shared.actions import Action
from shared.approvals import ApprovalStore
from shared.events import RemediationNeededEvent, RemediationStatus, parse_event

__all__ = ["Verification"]

_ACTION: TypeAdapter[Action] = TypeAdapter(Action)


class Verification:
    """Serving due verifications and finishing issued actions from their records."""

    def __init__(
        self,
        *,
        agent: AgentContext,
        executor: Executor,
        requests: RequestStore,
        state: ResponderState,
        approvals: ApprovalStore,
        outcomes: Outcomes,
        limits: ResponderLimits,
        poll_s: float,
    ) -> None:
        self.clock = agent.clock
        self.log = agent.log
        self.executor = executor
        self.requests = requests
        self.state = state
        self.approvals = approvals
        self.outcomes = outcomes
        self.limits = limits
        self.poll_s = poll_s

    async def serve(self, now: float, hold: float) -> None:
        """Verify every record due by `now`, held from other replicas until `hold`."""
        due = await self.requests.due(now, hold, limit=128)
        if due:
            await asyncio.gather(*(self.verify(key) for key in due))

    async def verify(self, record_key: str) -> None:
        try:
            record = await self.requests.load(record_key)
            if record.phase == "done":
                await self.outcomes.deliver(record_key)
                return
            plan = record.plan
            if record.phase != "executing" or plan is None:
                await self.requests.unschedule(record_key)
                return
            observation = await self.executor.observe(plan, issued=record.flag("issued"))
            verdict = judge(plan, observation, self.clock.time(), self.limits.verify_stable_s)
            if not verdict.done:
                await self.requests.schedule(record_key, self.clock.time() + self.poll_s)
                return
            issued = record.data.get("issued_detail")
            detail = f"{issued}; {verdict.detail}" if issued else verdict.detail
            await self.finish_executed(
                record_key, ok=verdict.ok, detail=detail, verified=verdict.ok
            )
        except Exception:  # loop boundary per item: one bad record never stops the others
            self.log.exception("responder.verify_failed", record=record_key)

    async def finish_executed(
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
            await self.outcomes.deliver(record_key)
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
        await self.outcomes.finish(
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

"""Acting on a decision: book the action at the gate, then issue it in the background.

The gate (`RequestStore.gate`) books the action before Docker hears of it and schedules its
verification; the Docker call then runs as a task of its own, so the event handler returns at
once. What Docker answered is recorded for the verification schedule, or finishes the action when
there is nothing to verify (exec, cleanup) or the call failed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from agents.base import AgentContext
from agents.responder.core import ResponderLimits, Verdict, target_policy
from agents.responder.executor import Executor, Prepared
from agents.responder.outcomes import Outcomes
from agents.responder.store import RequestStore
from agents.responder.verification import Verification
from agents.responder.work import Work
from shared.actions import Action, ActionType
from shared.backoff import backoff_delay
from shared.containers import ContainerInfo
from shared.errors import ActionRejected
from shared.events import RemediationStatus
from shared.redis_client import CONNECTION_ERRORS

__all__ = ["Issuer"]


class Issuer:
    """Books actions at the gate and issues them; `issuing` are the Docker calls under way."""

    def __init__(
        self,
        *,
        agent: AgentContext,
        executor: Executor,
        requests: RequestStore,
        outcomes: Outcomes,
        verification: Verification,
        limits: ResponderLimits,
    ) -> None:
        self.agent = agent
        self.clock = agent.clock
        self.log = agent.log
        self.executor = executor
        self.requests = requests
        self.outcomes = outcomes
        self.verification = verification
        self.limits = limits
        self.issuing: set[asyncio.Task[None]] = set()

    def allowed(self, labels: Any) -> bool:
        limits = self.limits
        return target_policy(labels, limits.scope, watch_label=limits.watch_label).allowed

    async def drain(self, timeout: float) -> None:
        """Let the calls already sent to Docker finish (their verification is in Redis)."""
        if self.issuing:
            await asyncio.wait(self.issuing, timeout=timeout)

    async def act(
        self, work: Work, verdict: Verdict, info: ContainerInfo, action: Action, token: str
    ) -> bool:
        """Book at the gate, then issue in the background. True once the gate took the lease."""
        now = self.clock.time()
        prepared = await self.executor.prepare(action, info, now, self.allowed)
        if prepared.problem or prepared.plan is None:
            await self.outcomes.finish(
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
                await self.outcomes.finish(
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
        self.issuing.add(task)
        task.add_done_callback(self.issuing.discard)
        return True

    async def _issue(
        self, record_key: str, action: Action, info: ContainerInfo, prepared: Prepared
    ) -> None:
        started = time.monotonic()
        try:
            issued = await self.executor.issue(action, info, prepared, self.allowed)
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
                    await self.verification.finish_executed(
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
                if self.clock.time() > deadline or not await self.agent.sleep(
                    backoff_delay(attempt, base=0.2, cap=2.0)
                ):
                    return

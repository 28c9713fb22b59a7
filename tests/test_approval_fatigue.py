"""Approval fatigue and approval binding, on a real Redis and Docker with the Responder running:
a "no" holds for the incident, two unanswered proposals end the asking (and people hear once),
one question at a time, the re-propose cooldown, a proposal withdrawn when its incident resolves
by itself, and an approval that binds to what was proposed (runbook version, target)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from shared.approvals import ApprovalStore, ProposalState, decide
from shared.bus import Bus
from shared.clock import to_datetime
from shared.errors import ApprovalError
from shared.events import (
    Channel,
    Decision,
    IncidentResolved,
    IncidentResolvedEvent,
    RemediationStatus,
    Severity,
    Source,
    Subject,
    make_event,
)
from tests.support.bus import wait_until
from tests.support.clock import OffsetClock
from tests.support.responder import (
    OPT_IN,
    RUNBOOK,
    outcome,
    request,
    restart_events,
    running_responder,
)
from tests.support.streams import events_on

pytestmark = [pytest.mark.docker, pytest.mark.redis]
NO_COOLDOWN = {
    "approval_cooldown_critical_s": 0,
    "approval_cooldown_warning_s": 0,
    "approval_cooldown_info_s": 0,
}


def ask(rbs, c, action: str, incident: str = "inc-test", **kw: Any):
    return request(rbs, c, action, **kw).model_copy(update={"incident_id": incident})


async def asks(redis) -> list[Any]:
    return await events_on(redis, Channel.APPROVAL_REQUEST)


async def test_a_denied_proposal_is_not_proposed_again_in_the_same_incident(
    redis, redis_url, docker, sleeper, runbooks
):
    folder, rbs = runbooks
    c = sleeper(**OPT_IN)
    since = time.time()
    async with running_responder(redis, redis_url, folder, **NO_COOLDOWN):
        first = ask(rbs, c, "restart-approval")
        await Bus(redis).publish(first)
        proposal = (await outcome(redis, first.id, status="pending_approval")).payload.proposal_id
        await decide(redis, proposal, Decision.DENIED, "bob", "we are migrating it")
        await outcome(redis, first.id, status="denied")
        again = ask(rbs, c, "restart-approval")  # the same incident alerts again
        await Bus(redis).publish(again)
        held = await outcome(redis, again.id)
        other = ask(rbs, c, "restart-approval", incident="inc-next")  # a new incident
        await Bus(redis).publish(other)
        asked = await outcome(redis, other.id)
    assert held.payload.status is RemediationStatus.SUPPRESSED
    assert held.payload.guard == "approval_denied"
    assert "bob denied it in this incident" in held.payload.reason
    assert asked.payload.status is RemediationStatus.PENDING_APPROVAL
    assert [a.payload.request_id for a in await asks(redis)] == [first.id, other.id]
    assert restart_events(docker, c.id, since) == 0


async def test_two_expiries_end_the_asking_for_the_incident_and_people_hear_once(
    redis, redis_url, docker, sleeper, runbooks
):
    folder, rbs = runbooks
    c = sleeper(**OPT_IN)
    async with running_responder(redis, redis_url, folder, **NO_COOLDOWN):
        for _ in range(2):
            req = ask(rbs, c, "restart-approval-short")
            await Bus(redis).publish(req)
            await outcome(redis, req.id, status="expired", timeout=20)
        await wait_until(lambda: _escalations(redis, 1), what="one escalation")
        third = ask(rbs, c, "restart-approval-short")
        await Bus(redis).publish(third)
        held = await outcome(redis, third.id)
    assert held.payload.status is RemediationStatus.SUPPRESSED
    assert held.payload.guard == "approval_expired"
    [escalation] = [
        e
        for e in await events_on(redis, Channel.ESCALATION)
        if e.payload.guard == "approval_expired"
    ]
    assert "2 proposals" in escalation.payload.reason
    assert "will not be proposed again in this incident" in escalation.payload.reason
    assert len(await asks(redis)) == 2


async def _escalations(redis, n: int) -> bool:
    found = await events_on(redis, Channel.ESCALATION)
    return len([e for e in found if e.payload.guard == "approval_expired"]) == n


async def test_one_question_at_a_time_per_container_and_action(redis, redis_url, sleeper, runbooks):
    folder, rbs = runbooks
    c = sleeper(**OPT_IN)
    async with running_responder(redis, redis_url, folder, **NO_COOLDOWN):
        first = ask(rbs, c, "restart-approval")
        await Bus(redis).publish(first)
        proposal = (await outcome(redis, first.id, status="pending_approval")).payload.proposal_id
        second = ask(rbs, c, "restart-approval", incident="inc-other")
        await Bus(redis).publish(second)
        held = await outcome(redis, second.id)
    assert held.payload.status is RemediationStatus.SUPPRESSED
    assert held.payload.guard == "approval_pending"
    assert proposal in held.payload.reason


async def test_an_unanswered_proposal_is_not_repeated_within_the_severity_cooldown(
    redis, redis_url, sleeper, runbooks
):
    folder, rbs = runbooks
    c = sleeper(**OPT_IN)
    clock = OffsetClock()
    async with running_responder(redis, redis_url, folder, clock=clock):  # defaults: 30 min
        first = ask(rbs, c, "restart-approval-short")
        await Bus(redis).publish(first)
        await outcome(redis, first.id, status="expired", timeout=20)
        soon = ask(rbs, c, "restart-approval-short", incident="inc-2", emitted_at=clock.time())
        await Bus(redis).publish(soon)
        held = await outcome(redis, soon.id)
        clock.advance(1801)  # a critical proposal may be repeated after 30 minutes
        later = ask(rbs, c, "restart-approval-short", incident="inc-3", emitted_at=clock.time())
        await Bus(redis).publish(later)
        asked = await outcome(redis, later.id)
    assert held.payload.status is RemediationStatus.SUPPRESSED
    assert held.payload.guard == "approval_cooldown"
    assert "within 30 min" in held.payload.reason
    assert asked.payload.status is RemediationStatus.PENDING_APPROVAL


async def test_a_pending_proposal_is_withdrawn_when_its_incident_resolves_by_itself(
    redis, redis_url, docker, sleeper, runbooks
):
    folder, rbs = runbooks
    c = sleeper(**OPT_IN)
    since = time.time()
    async with running_responder(redis, redis_url, folder):
        req = ask(rbs, c, "restart-approval", incident="inc-heals")
        await Bus(redis).publish(req)
        proposal_id = (await outcome(redis, req.id, status="pending_approval")).payload.proposal_id
        await Bus(redis).publish(resolved("inc-heals", c.id))
        cancelled = await outcome(redis, req.id, status="cancelled")
        with pytest.raises(ApprovalError, match="already cancelled"):
            await decide(redis, proposal_id, Decision.APPROVED, "alice")
    assert cancelled.payload.proposal_id == proposal_id
    assert "resolved by itself" in cancelled.payload.reason
    proposal = await ApprovalStore(redis).get(proposal_id)
    assert proposal.state is ProposalState.CANCELLED
    assert restart_events(docker, c.id, since) == 0


def resolved(incident: str, container_id: str) -> IncidentResolvedEvent:
    now = to_datetime(time.time())
    return make_event(
        IncidentResolvedEvent,
        source=Source(agent="analyzer", instance="test", version="0"),
        subject=Subject(host="test-host", container_id=container_id),
        severity=Severity.INFO,
        payload=IncidentResolved(reason="healthy again"),
        occurred_at=now,
        emitted_at=now,
        incident_id=incident,
    )


async def test_an_approval_does_not_run_once_the_runbook_changed_version(
    redis, redis_url, docker, sleeper, runbooks
):
    folder, rbs = runbooks
    c = sleeper(**OPT_IN)
    since = time.time()
    async with running_responder(redis, redis_url, folder):
        req = ask(rbs, c, "restart-approval")
        await Bus(redis).publish(req)
        proposal_id = (await outcome(redis, req.id, status="pending_approval")).payload.proposal_id
    # Someone edits the runbook and restarts the Responder before the approval comes in.
    (folder / "test.yaml").write_text(RUNBOOK.replace("version: 1", "version: 2", 1))
    async with running_responder(redis, redis_url, folder, instance="test-2"):
        await decide(redis, proposal_id, Decision.APPROVED, "alice")
        blocked = await outcome(redis, req.id, status="blocked")
    assert blocked.payload.guard == "approval_binding"
    assert "runbook test-actions v1 is now test-actions v2" in blocked.payload.reason
    assert (await ApprovalStore(redis).get(proposal_id)).state is ProposalState.BLOCKED
    assert restart_events(docker, c.id, since) == 0


async def test_an_approval_does_not_run_on_another_container(
    redis, redis_url, docker, sleeper, runbooks
):
    folder, rbs = runbooks
    c = sleeper(**OPT_IN)
    async with running_responder(redis, redis_url, folder):
        req = ask(rbs, c, "restart-approval")
        await Bus(redis).publish(req)
        proposal_id = (await outcome(redis, req.id, status="pending_approval")).payload.proposal_id
        c.remove(force=True)  # replaced before anyone approved
        await decide(redis, proposal_id, Decision.APPROVED, "alice")
        blocked = await outcome(redis, req.id, status="blocked")
    assert "the target is another container" in blocked.payload.reason

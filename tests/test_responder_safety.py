"""Every guard on a real Docker engine and Redis: holding, and letting the right thing through.
Plus approvals through the CLI's own mechanism."""

from __future__ import annotations

import asyncio
import time

import pytest

from agents.cli import main as cli_main
from shared import keys
from shared.approvals import ApprovalStore, ProposalState, decide
from shared.bus import Bus
from shared.container_state import record_death
from shared.errors import ApprovalError
from shared.events import Channel, Decision, RemediationStatus
from tests.support.bus import wait_until
from tests.support.clock import OffsetClock
from tests.support.responder import (
    OPT_IN,
    completions,
    outcome,
    request,
    restart_events,
    running_responder,
)
from tests.support.streams import acknowledged, events_on

pytestmark = [pytest.mark.docker, pytest.mark.redis]


async def test_idempotency_acts_once_on_a_redelivered_request(
    redis, redis_url, docker, sleeper, runbooks
):
    folder, rbs = runbooks
    c = sleeper(**OPT_IN)
    since = time.time()
    async with running_responder(redis, redis_url, folder):
        req = request(rbs, c, "restart", key="same-request")
        await Bus(redis).publish(req)
        await outcome(redis, req.id)
        twin = request(rbs, c, "restart", key="same-request")  # redelivered / duplicated
        entry = await Bus(redis).publish(twin)
        await wait_until(
            lambda: acknowledged(redis, Channel.REMEDIATION_NEEDED, "responder:test-host", entry),
            what="the Responder finished with the duplicate",
        )
    assert restart_events(docker, c.id, since) == 1
    assert len(await completions(redis)) == 1


@pytest.mark.parametrize(
    ("labels", "scope", "expected", "detail"),
    [
        ({}, "opt_in", RemediationStatus.REJECTED, "not opted in"),
        (
            {"hemostat.remediate": "true", "hemostat.protect": "true"},
            "all",
            RemediationStatus.REJECTED,
            "protected",
        ),
        (
            {"hemostat.remediate": "true", "hemostat.stack": "true"},
            "all",
            RemediationStatus.REJECTED,
            "own containers",
        ),
        ({}, "all", RemediationStatus.SUCCEEDED, "verified"),
        ({"hemostat.remediate": "true"}, "opt_in", RemediationStatus.SUCCEEDED, "verified"),
    ],
)
async def test_target_policy_holds_and_lets_through(
    redis, redis_url, docker, sleeper, runbooks, labels, scope, expected, detail
):
    folder, rbs = runbooks
    c = sleeper(**labels)
    since = time.time()
    async with running_responder(redis, redis_url, folder, remediation_scope=scope):
        req = request(rbs, c, "restart")
        await Bus(redis).publish(req)
        done = await outcome(redis, req.id)
    assert done.payload.status is expected
    assert detail in done.payload.reason
    touched = restart_events(docker, c.id, since)
    assert touched == (1 if expected is RemediationStatus.SUCCEEDED else 0)
    if expected is RemediationStatus.REJECTED:
        assert done.payload.guard == "target_policy"


async def test_a_missing_target_is_rejected(redis, redis_url, runbooks):
    folder, rbs = runbooks
    async with running_responder(redis, redis_url, folder):
        req = request(rbs, "0" * 64, "restart")
        await Bus(redis).publish(req)
        done = await outcome(redis, req.id)
    assert (done.payload.status, done.payload.guard) == (
        RemediationStatus.REJECTED,
        "target_policy",
    )
    assert "does not exist" in done.payload.reason


async def test_lease_held_by_another_replica_holds_then_lets_through(
    redis, redis_url, docker, sleeper, runbooks
):
    """Another action holds the container: the request waits (deferred, neither refused nor
    acted on) and is decided once the lease is free."""
    folder, rbs = runbooks
    c = sleeper(**OPT_IN)
    since = time.time()
    await redis.set(keys.LEASE + keys.on_host("test-host", c.id), "responder:other:abcd", px=60_000)
    async with running_responder(redis, redis_url, folder):
        blocked = request(rbs, c, "restart")
        await Bus(redis).publish(blocked)
        record = keys.REQUEST + blocked.idempotency_key

        async def deferred():
            return bool(await redis.hget(record, "deferred"))

        await wait_until(deferred, what="the request waits for the other action")
        assert restart_events(docker, c.id, since) == 0
        assert await completions(redis, blocked.id) == []
        await redis.delete(keys.LEASE + keys.on_host("test-host", c.id))  # the other action is over
        done = await outcome(redis, blocked.id)
        assert done.payload.status is RemediationStatus.SUCCEEDED
    assert restart_events(docker, c.id, since) == 1
    assert not await redis.exists(keys.LEASE + keys.on_host("test-host", c.id)), (
        "the lease was released"
    )


async def test_cooldown_holds_then_lets_through_and_backs_off_after_failures(
    redis, redis_url, docker, sleeper, runbooks
):
    folder, rbs = runbooks
    c = sleeper(**OPT_IN)
    clock = OffsetClock()
    async with running_responder(redis, redis_url, folder, clock=clock):
        first = request(rbs, c, "restart")
        await Bus(redis).publish(first)
        assert (await outcome(redis, first.id)).payload.status is RemediationStatus.SUCCEEDED
        again = request(rbs, c, "restart")
        await Bus(redis).publish(again)
        done = await outcome(redis, again.id)
        assert (done.payload.status, done.payload.guard) == (RemediationStatus.REJECTED, "cooldown")
        clock.advance(2.5)  # the runbook's cooldown is 2 s
        later = request(rbs, c, "restart", emitted_at=clock.time())
        await Bus(redis).publish(later)
        assert (await outcome(redis, later.id)).payload.status is RemediationStatus.SUCCEEDED

        broken = sleeper(**OPT_IN)
        fail = request(rbs, broken, "exec-fail", emitted_at=clock.time())
        await Bus(redis).publish(fail)
        assert (await outcome(redis, fail.id)).payload.status is RemediationStatus.FAILED
        state = await redis.hgetall(keys.GUARD + keys.on_host("test-host", broken.id))
        assert state["failures:exec"] == "1"
        clock.advance(2.5)  # past the base cooldown, not past the doubled one
        retry = request(rbs, broken, "exec-fail", emitted_at=clock.time())
        await Bus(redis).publish(retry)
        held = await outcome(redis, retry.id)
        assert (held.payload.status, held.payload.guard) == (RemediationStatus.REJECTED, "cooldown")
        clock.advance(2.0)  # 4.5 s after the failure: the doubled 4 s cooldown is over
        last = request(rbs, broken, "exec-fail", emitted_at=clock.time())
        await Bus(redis).publish(last)
        assert (await outcome(redis, last.id)).payload.status is RemediationStatus.FAILED


async def test_circuit_breaker_opens_escalates_and_closes_after_the_window(
    redis, redis_url, docker, sleeper, runbooks
):
    folder, rbs = runbooks
    c = sleeper(**OPT_IN)
    clock = OffsetClock()
    async with running_responder(redis, redis_url, folder, clock=clock):
        statuses = []
        for _ in range(3):
            req = request(rbs, c, "restart-limited")  # cooldown 0, at most 2 per 6 s
            await Bus(redis).publish(req)
            statuses.append(await outcome(redis, req.id))
        assert [d.payload.status for d in statuses] == [
            RemediationStatus.SUCCEEDED,
            RemediationStatus.SUCCEEDED,
            RemediationStatus.REJECTED,
        ]
        assert statuses[2].payload.guard == "circuit_breaker"
        [escalation] = await events_on(redis, Channel.ESCALATION)
        assert escalation.payload.guard == "circuit_breaker"
        assert escalation.subject.container_id == c.id
        clock.advance(6.5)  # both actions left the window
        after = request(rbs, c, "restart-limited", emitted_at=clock.time())
        await Bus(redis).publish(after)
        assert (await outcome(redis, after.id)).payload.status is RemediationStatus.SUCCEEDED


async def test_crash_loop_guard_stops_restarting_and_escalates(
    redis, redis_url, docker, sleeper, runbooks
):
    folder, rbs = runbooks
    looping, fine = sleeper(**OPT_IN), sleeper(**OPT_IN)
    now = time.time()
    for container, gap in ((looping, 5), (fine, 500)):
        for n, restarted in enumerate((now - 1200, now - 600)):
            await redis.zadd(
                keys.RESTARTS + keys.on_host("test-host", container.id), {f"r{n}": restarted}
            )
            # died 5 s (or 500 s) later
            await record_death(redis, "test-host", container.id, restarted + gap)
    async with running_responder(redis, redis_url, folder):
        loop_req, fine_req = request(rbs, looping, "restart"), request(rbs, fine, "restart")
        await Bus(redis).publish_many([loop_req, fine_req])
        looped, recovered = await outcome(redis, loop_req.id), await outcome(redis, fine_req.id)
    assert (looped.payload.status, looped.payload.guard) == (
        RemediationStatus.REJECTED,
        "crash_loop",
    )
    assert recovered.payload.status is RemediationStatus.SUCCEEDED, (
        "deaths long after restarts are not a loop"
    )
    [escalation] = await events_on(redis, Channel.ESCALATION)
    assert escalation.payload.guard == "crash_loop"


async def test_dry_run_changes_nothing_and_blocks_nothing(
    redis, redis_url, docker, sleeper, runbooks
):
    folder, rbs = runbooks
    c = sleeper(**OPT_IN)
    since = time.time()
    async with running_responder(redis, redis_url, folder, dry_run=True):
        req = request(rbs, c, "restart")
        await Bus(redis).publish(req)
        done = await outcome(redis, req.id)
    assert done.payload.status is RemediationStatus.DRY_RUN
    assert done.payload.dry_run is True
    assert restart_events(docker, c.id, since) == 0
    assert not await redis.exists(keys.GUARD + keys.on_host("test-host", c.id)), (
        "no cooldown from a dry run"
    )
    async with running_responder(redis, redis_url, folder, dry_run=False):
        real = request(rbs, c, "restart")
        await Bus(redis).publish(real)
        assert (await outcome(redis, real.id)).payload.status is RemediationStatus.SUCCEEDED


async def test_stale_requests_are_refused(redis, redis_url, sleeper, runbooks):
    folder, rbs = runbooks
    c = sleeper(**OPT_IN)
    async with running_responder(redis, redis_url, folder, responder_max_request_age_s=60):
        old = request(rbs, c, "restart", emitted_at=time.time() - 3600)
        await Bus(redis).publish(old)
        done = await outcome(redis, old.id)
    assert (done.payload.status, done.payload.guard) == (RemediationStatus.REJECTED, "stale")


@pytest.mark.parametrize(
    ("changes", "runbook_id", "reason"),
    [
        ({"id": "reformat-disk"}, "test-actions", "is not in runbook"),
        ({}, "no-such-runbook", "unknown runbook"),
        (
            {"params": {"argv": ["rm", "-rf", "/"], "timeout_s": 30}},
            "test-actions",
            "argv is not the runbook's",
        ),
    ],
)
async def test_action_policy_refuses_what_the_runbook_does_not_allow(
    redis, redis_url, docker, sleeper, runbooks, changes, runbook_id, reason
):
    folder, rbs = runbooks
    c = sleeper(**OPT_IN)
    req = request(rbs, c, "exec-ok")
    base = req.payload.action
    action = type(base).model_validate(base.model_dump() | changes)
    req = req.model_copy(
        update={
            "payload": req.payload.model_copy(update={"action": action, "runbook_id": runbook_id})
        }
    )
    async with running_responder(redis, redis_url, folder):
        await Bus(redis).publish(req)
        done = await outcome(redis, req.id)
    assert (done.payload.status, done.payload.guard) == (
        RemediationStatus.REJECTED,
        "action_policy",
    )
    assert reason in done.payload.reason
    c.reload()
    assert c.status == "running"


async def test_approval_approved_through_the_cli_executes(
    redis, redis_url, docker, sleeper, runbooks, monkeypatch, capsys
):
    folder, rbs = runbooks
    c = sleeper(**OPT_IN)
    since = time.time()
    monkeypatch.setenv("REDIS_URL", redis_url)
    async with running_responder(redis, redis_url, folder):
        req = request(rbs, c, "restart-approval")
        await Bus(redis).publish(req)
        pending = await outcome(redis, req.id, status="pending_approval")
        proposal_id = pending.payload.proposal_id
        [ask] = await events_on(redis, Channel.APPROVAL_REQUEST)
        assert ask.payload.approve_command == f"hemostat approve {proposal_id}"
        assert restart_events(docker, c.id, since) == 0, "nothing happens before approval"
        assert await asyncio.to_thread(cli_main, ["status"]) == 0
        assert proposal_id in capsys.readouterr().out
        assert await asyncio.to_thread(cli_main, ["approve", proposal_id, "--actor", "alice"]) == 0
        done = await outcome(redis, req.id, status="succeeded")
        assert await asyncio.to_thread(cli_main, ["deny", proposal_id, "--reason", "late"]) == 1
        assert "already" in capsys.readouterr().err
    assert done.payload.proposal_id == proposal_id
    assert "alice" in done.payload.actor
    assert restart_events(docker, c.id, since) == 1
    proposal = await ApprovalStore(redis).get(proposal_id)
    assert proposal.state is ProposalState.SUCCEEDED
    assert proposal.decided_by == "alice"


async def test_approval_denied_expired_and_double_decisions(
    redis, redis_url, docker, sleeper, runbooks
):
    folder, rbs = runbooks
    denied_c, expired_c = sleeper(**OPT_IN), sleeper(**OPT_IN)
    since = time.time()
    async with running_responder(redis, redis_url, folder):
        deny_req = request(rbs, denied_c, "restart-approval")
        expire_req = request(rbs, expired_c, "restart-approval-short")
        await Bus(redis).publish_many([deny_req, expire_req])
        p1 = (await outcome(redis, deny_req.id, status="pending_approval")).payload.proposal_id
        p2 = (await outcome(redis, expire_req.id, status="pending_approval")).payload.proposal_id
        await decide(redis, p1, Decision.DENIED, "bob", "maintenance window")
        with pytest.raises(ApprovalError, match="already denied by bob"):
            await decide(redis, p1, Decision.APPROVED, "carol")
        denied = await outcome(redis, deny_req.id, status="denied")
        expired = await outcome(redis, expire_req.id, status="expired", timeout=15)
        with pytest.raises(ApprovalError, match="expired"):
            await decide(redis, p2, Decision.APPROVED, "late-larry")
    assert "maintenance window" in denied.payload.reason
    assert "nothing was done" in expired.payload.reason
    assert restart_events(docker, denied_c.id, since) == 0
    assert restart_events(docker, expired_c.id, since) == 0


async def test_guards_are_checked_again_right_before_an_approved_action(
    redis, redis_url, docker, sleeper, runbooks
):
    folder, rbs = runbooks
    c = sleeper(**OPT_IN)
    since = time.time()
    async with running_responder(redis, redis_url, folder):
        req = request(rbs, c, "restart-approval")
        await Bus(redis).publish(req)
        proposal_id = (await outcome(redis, req.id, status="pending_approval")).payload.proposal_id
        # Meanwhile something else restarted it: the cooldown must still hold after approval.
        await redis.hset(
            keys.GUARD + keys.on_host("test-host", c.id), "cooldown_until:restart", time.time() + 60
        )
        await decide(redis, proposal_id, Decision.APPROVED, "alice")
        done = await outcome(redis, req.id, status="rejected")
    assert done.payload.guard == "cooldown"
    assert restart_events(docker, c.id, since) == 0
    assert (await ApprovalStore(redis).get(proposal_id)).state is ProposalState.FAILED


async def test_low_confidence_requests_wait_for_a_human(redis, redis_url, sleeper, runbooks):
    folder, rbs = runbooks
    c = sleeper(**OPT_IN)
    async with running_responder(redis, redis_url, folder):
        req = request(rbs, c, "restart", needs_human=True)
        await Bus(redis).publish(req)
        done = await outcome(redis, req.id)
    assert done.payload.status is RemediationStatus.PENDING_APPROVAL

"""The Responder under sequences production produces (the Responder-core issue, one test per
numbered sequence): twins racing on two replicas, a lease lost mid-action, a backlog of old
failures, an approval that cannot run, a publish that fails after a proposal was stored, target
policy on the siblings an action selects, dry-run approvals, and verification that never holds a
worker slot. Real Redis, real Docker; Docker's own event log says what really happened."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest
from redis.asyncio import Redis

from shared import keys
from shared.approvals import ApprovalStore, ProposalState, decide
from shared.bus import Bus
from shared.docker_api import DockerGateway
from shared.errors import ApprovalError, BusUnavailable, DockerUnavailable
from shared.events import Channel, Decision, RemediationStatus
from tests.support.bus import wait_until
from tests.support.docker_events import docker_events
from tests.support.responder import (
    OPT_IN,
    completions,
    outcome,
    request,
    restart_events,
    running_responder,
)
from tests.support.streams import events_on
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.docker, pytest.mark.redis]

# Stops at once on SIGTERM, so a restart is quick.
PROMPT = ["sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"]
# Healthy only once the test creates /tmp/ok: the test decides when a verification may end.
GATED = ["sh", "-c", "rm -f /tmp/ok; trap 'exit 0' TERM; sleep 600 & wait"]
GATE_CHECK = {"test": ["CMD", "test", "-f", "/tmp/ok"], "interval": 200_000_000, "retries": 1}
FINAL = {RemediationStatus.SUCCEEDED, RemediationStatus.FAILED}


@pytest.fixture
def make(docker, test_image, run_label):
    def run(gated: bool = False, **labels: str) -> Any:
        extra = {"healthcheck": GATE_CHECK} if gated else {}
        return docker.containers.run(
            test_image,
            GATED if gated else PROMPT,
            detach=True,
            labels=run_label | labels,
            **extra,
        )

    return run


async def wait_docker(docker, container_id, since, action="restart", what=""):
    log = docker_events()
    await wait_until(
        lambda: log.count(container_id, action, since),
        timeout=30,
        what=what or f"Docker {action} of {container_id[:12]}",
    )


# ---------------------------------------------------------------- 1. concurrent twins


async def test_1_twins_delivered_to_two_replicas_at_once_give_one_action_and_one_outcome(
    redis, redis_url, docker, make, runbooks
):
    """The Analyzer published one decision twice (same idempotency key, two events) and each
    copy reached another replica at the same moment."""
    folder, rbs = runbooks
    made = [make(**OPT_IN) for _ in range(3)]
    since = time.time() - 1
    async with (
        running_responder(redis, redis_url, folder, instance="replica-a") as a,
        running_responder(redis, redis_url, folder, instance="replica-b") as b,
    ):
        pairs = [
            (
                request(rbs, c, "restart", key=f"decision:{c.id}"),
                request(rbs, c, "restart", key=f"decision:{c.id}"),  # the second copy
            )
            for c in made
        ]
        await asyncio.gather(*(h for x, y in pairs for h in (a.handle(x), b.handle(y))))

        async def finished(x, y) -> bool:
            found = await completions(redis, x.id) + await completions(redis, y.id)
            return any(e.payload.status in FINAL for e in found)

        for x, y in pairs:
            await wait_until(lambda x=x, y=y: finished(x, y), timeout=60, what="the outcome")
    for c, (x, y) in zip(made, pairs, strict=True):
        found = await completions(redis, x.id) + await completions(redis, y.id)
        assert [e.payload.status for e in found] == [RemediationStatus.SUCCEEDED], [
            (e.payload.status, e.payload.guard, e.payload.reason) for e in found
        ]
        assert "resumed" not in found[0].payload.reason, "no replica stopped"
        assert restart_events(docker, c.id, since) == 1


# ---------------------------------------------------------------- 2. lease lost mid-action


async def test_2_a_lease_that_cannot_be_renewed_never_lets_a_second_action_through(
    redis, redis_url, redis_service, docker, make, runbooks
):
    folder, rbs = runbooks
    c = make(gated=True, **OPT_IN)
    since = time.time() - 1
    proxy = await TcpProxy("127.0.0.1", redis_service.port).start()
    cut_off = Redis.from_url(f"redis://{proxy.url_host}/0", decode_responses=True)
    lease_key = f"hemostat:lease:{c.id}"
    ttl_s = 2.0
    try:
        async with running_responder(
            cut_off, redis_url, folder, instance="cut-off", responder_lease_ttl_s=ttl_s
        ):
            first = request(rbs, c, "restart-slow-verify")
            await Bus(redis).publish(first)
            await wait_docker(docker, c.id, since, "restart", "the first restart")
            proxy.cut()  # the acting replica loses Redis mid-verification: no renewal reaches it

            async def lapsed_or_held_to_the_end() -> bool:
                pttl = await redis.pttl(lease_key)
                return pttl == -2 or pttl > ttl_s * 1000

            await wait_until(lapsed_or_held_to_the_end, timeout=10, what="the lease's fate")
            async with running_responder(redis, redis_url, folder, instance="other"):
                second = request(rbs, c, "restart")
                await Bus(redis).publish(second)
                record = keys.REQUEST + second.idempotency_key

                async def deferred() -> bool:
                    return bool(await redis.hget(record, "deferred"))

                await wait_until(deferred, what="the second request waits for the first")
                assert restart_events(docker, c.id, since) == 1, "no second action in flight"
                assert await completions(redis, second.id) == [], "not refused, not acted on"
                proxy.restore()
                c.exec_run(["touch", "/tmp/ok"])
                done = await outcome(redis, first.id, timeout=60)
                assert done.payload.status is RemediationStatus.SUCCEEDED, done.payload.reason
                # Decided once the first was over: the restart it booked holds it.
                later = await outcome(redis, second.id, timeout=30)
                assert (later.payload.status, later.payload.guard) == (
                    RemediationStatus.REJECTED,
                    "cooldown",
                )
    finally:
        await cut_off.aclose()
        await proxy.stop()
    assert restart_events(docker, c.id, since) == 1


# ---------------------------------------------------------------- 3. stale work


async def test_3_a_backlog_of_hour_old_failures_is_reported_stale_not_acted_on(
    redis, redis_url, docker, make, runbooks
):
    """The decision is fresh (the Analyzer caught up after an outage); the failure is not."""
    folder, rbs = runbooks
    c = make(**OPT_IN)
    since = time.time() - 1
    async with running_responder(redis, redis_url, folder, responder_max_request_age_s=600):
        old = request(rbs, c, "restart", alert_at=time.time() - 3600)
        await Bus(redis).publish(old)
        done = await outcome(redis, old.id)
    assert (done.payload.status, done.payload.guard) == (RemediationStatus.REJECTED, "stale")
    assert "stale" in done.payload.reason
    assert restart_events(docker, c.id, since) == 0


# ---------------------------------------------------------------- 4. approved, never executed


class OutageGateway(DockerGateway):
    """The real gateway, with a switch that makes the daemon unreachable."""

    outage = False

    async def call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self.outage:
            raise DockerUnavailable(f"{what}: Docker daemon unreachable (injected outage)")
        return await super().call(what, fn, *args, **kwargs)


async def test_4_an_approved_proposal_that_cannot_execute_is_finished_as_failed_and_told(
    redis, redis_url, docker, make, runbooks
):
    import docker as docker_sdk

    folder, rbs = runbooks
    c = make(**OPT_IN)
    since = time.time() - 1
    gateway = OutageGateway(docker_sdk.from_env(timeout=60))
    async with running_responder(
        redis,
        redis_url,
        folder,
        gateway=gateway,
        responder_approval_execution_deadline_s=2.0,
        responder_sweep_interval_s=0.2,
    ):
        req = request(rbs, c, "restart-approval")
        await Bus(redis).publish(req)
        pending = await outcome(redis, req.id, status="pending_approval")
        gateway.outage = True
        await decide(redis, pending.payload.proposal_id, Decision.APPROVED, "alice")
        failed = await outcome(redis, req.id, status="failed", timeout=30)
        gateway.outage = False
    assert "alice" in failed.payload.actor
    assert "not executed" in failed.payload.reason or "unreachable" in failed.payload.reason
    proposal = await ApprovalStore(redis).get(pending.payload.proposal_id)
    assert proposal.state is ProposalState.FAILED
    assert restart_events(docker, c.id, since) == 0


async def test_4_expiry_follows_the_server_clock_not_the_deciding_clients(
    redis, redis_url, make, runbooks, monkeypatch
):
    folder, rbs = runbooks
    c = make(**OPT_IN)
    async with running_responder(redis, redis_url, folder):
        req = request(rbs, c, "restart-approval-short")  # expires after 1.5 s
        await Bus(redis).publish(req)
        proposal_id = (await outcome(redis, req.id, status="pending_approval")).payload.proposal_id
    # The Responder is gone, so nothing expires the proposal for us: only the clock matters.
    store = ApprovalStore(redis)
    deadline = (await store.get(proposal_id)).expires_at

    async def past_deadline() -> bool:
        seconds, micros = await redis.time()
        return seconds + micros / 1e6 > deadline

    await wait_until(past_deadline, timeout=10, what="the deadline on Redis's clock")
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 3600)  # this client's clock is an hour slow
    with pytest.raises(ApprovalError, match="expired"):
        await decide(redis, proposal_id, Decision.APPROVED, "slow-clock-sam")
    monkeypatch.undo()
    assert (await store.get(proposal_id)).state is not ProposalState.APPROVED


# ---------------------------------------------------------------- 5. publish fails after the proposal


class AskFailsOnce(Bus):
    """Redis goes away right after the proposal was stored, before people were asked."""

    failed = False

    async def publish(self, event: Any) -> str:
        if getattr(event, "type", "") == "approval_request" and not self.failed:
            self.failed = True
            raise BusUnavailable("publish failed after 6 attempts: injected")
        return await super().publish(event)


async def test_5_a_publish_failure_after_a_proposal_was_created_creates_no_second_one(
    redis, redis_url, make, runbooks
):
    folder, rbs = runbooks
    c = make(**OPT_IN)
    flaky = AskFailsOnce(redis)
    async with running_responder(redis, redis_url, folder, bus=flaky):
        req = request(rbs, c, "restart-approval")
        await Bus(redis).publish(req)
        await outcome(redis, req.id, status="pending_approval")
    assert flaky.failed, "the failure was injected"
    proposals = [p for p in await ApprovalStore(redis).recent() if p.request_event().id == req.id]
    assert len(proposals) == 1, [p.id for p in proposals]
    asks = await events_on(redis, Channel.APPROVAL_REQUEST)
    assert [a.payload.proposal_id for a in asks] == [proposals[0].id]
    assert Counter(e.payload.status for e in await completions(redis, req.id)) == {
        RemediationStatus.PENDING_APPROVAL: 1
    }


# ---------------------------------------------------------------- 6. target policy on siblings


def _label(run_label: dict[str, str]) -> str:
    [(key, value)] = run_label.items()
    return f"{key}={value}"


def compose_labels(project: str, number: int, **extra: str) -> dict[str, str]:
    return {
        "com.docker.compose.project": project,
        "com.docker.compose.service": "web",
        "com.docker.compose.container-number": str(number),
    } | extra


async def test_6_cleanup_removes_only_siblings_the_target_policy_allows(
    redis, redis_url, docker, make, runbooks, run_label
):
    folder, rbs = runbooks
    project = f"seq6c{run_label['hemostat.test']}"
    target = make(**compose_labels(project, 1, **OPT_IN))
    kept = {
        "not opted in": make(**compose_labels(project, 2)),
        "protected": make(**compose_labels(project, 3, **OPT_IN, **{"hemostat.protect": "true"})),
        "HemoStat's own": make(
            **compose_labels(project, 4, **OPT_IN, **{"hemostat.stack": "true"})
        ),
    }
    removable = make(**compose_labels(project, 5, **OPT_IN))
    for c in [*kept.values(), removable]:
        c.kill()
    async with running_responder(redis, redis_url, folder):
        req = request(rbs, target, "cleanup")
        await Bus(redis).publish(req)
        done = await outcome(redis, req.id)
    assert done.payload.status is RemediationStatus.SUCCEEDED, done.payload.reason
    left = {c.id for c in docker.containers.list(all=True, filters={"label": _label(run_label)})}
    assert removable.id not in left
    for why, c in kept.items():
        assert c.id in left, f"a {why} sibling was removed"
    assert "volumes kept" in done.payload.reason


async def test_6_scale_down_removes_only_members_the_target_policy_allows(
    redis, redis_url, docker, make, runbooks, run_label
):
    folder, rbs = runbooks
    project = f"seq6s{run_label['hemostat.test']}"
    target = make(**compose_labels(project, 1, **OPT_IN))
    allowed = make(**compose_labels(project, 2, **OPT_IN))
    not_opted_in = make(**compose_labels(project, 3))  # the highest number, but not ours
    async with running_responder(redis, redis_url, folder):
        req = request(rbs, target, "scale-down")
        await Bus(redis).publish(req)
        done = await outcome(redis, req.id)
    assert done.payload.status is RemediationStatus.SUCCEEDED, done.payload.reason
    left = {c.id for c in docker.containers.list(all=True, filters={"label": _label(run_label)})}
    assert not_opted_in.id in left, "a member that did not opt in was removed"
    assert allowed.id not in left
    assert target.id in left


# ---------------------------------------------------------------- 7. dry-run approvals


async def test_7_an_approved_dry_run_is_recorded_as_a_dry_run(
    redis, redis_url, docker, make, runbooks
):
    folder, rbs = runbooks
    c = make(**OPT_IN)
    since = time.time() - 1
    async with running_responder(redis, redis_url, folder, dry_run=True):
        req = request(rbs, c, "restart-approval")
        await Bus(redis).publish(req)
        proposal_id = (await outcome(redis, req.id, status="pending_approval")).payload.proposal_id
        await decide(redis, proposal_id, Decision.APPROVED, "alice")
        done = await outcome(redis, req.id, status="dry_run")
    assert done.payload.dry_run is True
    proposal = await ApprovalStore(redis).get(proposal_id)
    assert proposal.state == "dry_run", proposal.state
    assert restart_events(docker, c.id, since) == 0


# ---------------------------------------------------------------- verification is a follow-up


async def test_a_verification_in_progress_holds_no_worker_slot(
    redis, redis_url, docker, make, runbooks
):
    """One handler slot: a second container's restart must not queue behind the first one's
    verification, which lasts until the test lets its health check pass."""
    folder, rbs = runbooks
    slow, quick = make(gated=True, **OPT_IN), make(**OPT_IN)
    since = time.time() - 1
    async with running_responder(redis, redis_url, folder, bus_concurrency=1):
        first = request(rbs, slow, "restart-slow-verify")
        await Bus(redis).publish(first)
        await wait_docker(docker, slow.id, since, "kill", "the first restart")
        second = request(rbs, quick, "restart")
        await Bus(redis).publish(second)
        done = await outcome(redis, second.id, timeout=30)
        assert done.payload.status is RemediationStatus.SUCCEEDED, done.payload.reason
        assert not await completions(redis, first.id), "the first is still being verified"
        slow.exec_run(["touch", "/tmp/ok"])
        verified = await outcome(redis, first.id, timeout=60)
    assert verified.payload.status is RemediationStatus.SUCCEEDED, verified.payload.reason
    assert "healthy" in verified.payload.reason


async def test_a_request_docker_never_answers_for_ends_failed_and_told_not_dead_lettered(
    redis, redis_url, make, runbooks
):
    import docker as docker_sdk

    folder, rbs = runbooks
    c = make(**OPT_IN)
    gateway = OutageGateway(docker_sdk.from_env(timeout=60))
    gateway.outage = True
    async with running_responder(redis, redis_url, folder, gateway=gateway, bus_max_deliveries=3):
        req = request(rbs, c, "restart")
        await Bus(redis).publish(req)
        done = await outcome(redis, req.id)
    assert done.payload.status is RemediationStatus.FAILED
    assert "unreachable" in done.payload.reason
    assert await redis.xlen("hemostat:dead_letter") == 0

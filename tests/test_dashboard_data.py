"""The dashboard's data access against a real Redis filled by the agents' own models."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis as sync_redis

from dashboard import data
from shared.approvals import ApprovalStore, ProposalState
from shared.bus import Bus
from shared.errors import ApprovalError
from shared.events import Channel
from tests.conftest import make_settings
from tests.support.dashboard_seed import seed

pytestmark = pytest.mark.redis


@pytest.fixture
def sync(redis_url):
    client = sync_redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


async def test_overview_numbers_come_from_redis(redis, sync):
    await seed(redis)
    o = data.overview(sync, time.time())
    assert (o.monitored, o.healthy, o.unhealthy) == (2, 1, 1)
    assert o.open_incidents == 1
    assert (o.remediations_hour, o.remediations_day) == (3, 3), "dry runs are not remediations"
    assert (o.succeeded_day, o.failed_day) == (2, 1)
    assert o.success_rate_day == pytest.approx(2 / 3)
    assert o.dry_runs_day == 1
    assert o.false_alarms_day == 1
    assert o.pending_approvals == 1
    assert o.agents_up == {"monitor": 1, "analyzer": 1, "responder": 1, "alert": 1, "metrics": 0}


async def test_an_empty_system(sync):
    o = data.overview(sync, time.time())
    assert (o.monitored, o.open_incidents, o.remediations_day, o.pending_approvals) == (0, 0, 0, 0)
    assert o.success_rate_day is None
    assert data.containers(sync, time.time()) == []
    assert data.incidents(sync) == []


async def test_container_grid_lists_healthy_ones_too_with_their_last_incident(redis, sync):
    seeded = await seed(redis)
    rows = {r["name"]: r for r in data.containers(sync, time.time())}
    assert set(rows) == {"shop-web-1", "shop-db-1", "nightly-job"}
    assert rows["shop-db-1"]["open alerts"] == "unhealthy"
    assert rows["shop-db-1"]["last incident"] == seeded.incident_id
    assert rows["shop-web-1"]["cpu %"] == 12.5
    assert rows["nightly-job"]["monitored"] is False


async def test_incident_timeline_runs_alert_decision_remediation_notification(redis, sync):
    seeded = await seed(redis)
    [incident] = data.incidents(sync)
    assert incident["id"] == seeded.incident_id
    assert incident["container"] == "shop-db-1"
    stages = [e.stage for e in data.incident_timeline(sync, seeded.incident_id)]
    assert stages == ["alert", "decision", "remediation", "notification"]
    timeline = data.incident_timeline(sync, seeded.incident_id)
    assert timeline[1].fields["method"] == "rules"
    assert timeline[1].fields["confidence"] == "0.90"


async def test_event_feed_is_newest_first_across_channels(redis, sync):
    await seed(redis)
    feed = data.event_feed(sync, limit=20)
    assert {r["type"] for r in feed} >= {
        "health_alert",
        "remediation_needed",
        "remediation_complete",
        "false_alarm",
    }
    assert feed == sorted(feed, key=lambda r: r["time"], reverse=True)


async def test_proposals_and_the_shared_decision_mechanism(redis, redis_url, sync):
    seeded = await seed(redis)
    pending, decided = data.proposals(sync)
    assert [p.id for p in pending] == [seeded.pending_proposal]
    assert [(p.id, p.state, p.decided_by) for p in decided] == [
        (seeded.decided_proposal, ProposalState.DENIED, "bob")
    ]
    settings = make_settings(redis_url)
    await asyncio.to_thread(data.submit_decision, settings, seeded.pending_proposal, True, "carol")
    assert (await ApprovalStore(redis).get(seeded.pending_proposal)).state is ProposalState.APPROVED
    assert await redis.xlen("hemostat:approval_decision") == 1
    with pytest.raises(ApprovalError, match="already approved by carol"):
        await asyncio.to_thread(
            data.submit_decision, settings, seeded.pending_proposal, False, "dave", "x"
        )


def test_sign_in_access_and_password_hashes(redis_url, sync):
    from dashboard import auth

    local = make_settings(redis_url)
    exposed = make_settings(redis_url, dashboard_host="0.0.0.0")
    closed = make_settings(redis_url, dashboard_password="s3cret-pass", dashboard_host="0.0.0.0")
    assert auth.access(local) == auth.Access(can_decide=True, needs_sign_in=False)
    assert not auth.access(exposed).can_decide
    assert auth.access(closed) == auth.Access(can_decide=True, needs_sign_in=True)
    assert auth.sign_in(sync, closed, "operator", "s3cret-pass") == "operator"
    assert auth.sign_in(sync, closed, "operator", "wrong") is None
    assert auth.sign_in(sync, closed, "mallory", "s3cret-pass") is None, "another name"
    hashed = auth.hash_password("correct horse battery")
    assert auth.verify_hash("correct horse battery", hashed)
    assert not auth.verify_hash("correct horse batterY", hashed)
    assert not auth.verify_hash("x", "md5$1$aa$bb")


async def test_audit_filters_and_agent_health(redis, sync):
    await seed(redis)
    await Bus(redis).ensure_group(Channel.HEALTH_ALERT, "analyzer")
    assert {r["event"] for r in data.audit_log(sync)} == {"rejected", "dry_run"}
    [rejected] = data.audit_log(sync, event="rejected")
    assert rejected["failed guards"] == "cooldown"
    assert [r["container"] for r in data.audit_log(sync, container="shop-db-1")] == ["shop-db-1"]
    beats, groups, letters = data.agent_health(sync)
    assert {b.agent for b in beats} == {"monitor", "analyzer", "responder", "alert"}
    [group] = groups
    assert (group["channel"], group["group"], group["lag"], group["pending"]) == (
        "hemostat:health_alert",
        "analyzer",
        1,
        0,
    )
    assert letters[0]["error"] == "malformed JSON"


async def test_charts_data(redis, sync):
    await seed(redis)
    series = data.samples(sync, ["a" * 64])
    assert series["a" * 64][0]["cpu"] == 12.5
    [hour] = data.outcomes_over_time(sync, time.time())
    assert (hour["succeeded"], hour["failed"], hour["dry_run"]) == (2, 1, 1)

"""The dashboard's queries against a real Redis filled by the agents' own models, and how their
typed rows read (dashboard/views.py)."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
import redis as sync_redis

from dashboard import queries, views
from shared.approvals import ApprovalStore, ProposalState, decide_sync, read_pending, read_recent
from shared.bus import Bus
from shared.errors import ApprovalError
from shared.events import Channel, Decision, RemediationStatus
from shared.redaction import MASK, Redactor
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
    o = queries.overview(sync, time.time())
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
    o = queries.overview(sync, time.time())
    assert (o.monitored, o.open_incidents, o.remediations_day, o.pending_approvals) == (0, 0, 0, 0)
    assert o.success_rate_day is None
    assert queries.containers(sync, time.time()) == []
    assert queries.incidents(sync) == []


async def test_container_grid_lists_healthy_ones_too_with_their_last_incident(redis, sync):
    seeded = await seed(redis)
    found = queries.containers(sync, time.time())
    rows = {r.name: r for r in found}
    assert set(rows) == {"shop-web-1", "shop-db-1", "nightly-job"}
    assert rows["shop-db-1"].open_alerts == ("unhealthy",)
    assert rows["shop-db-1"].last_incident == seeded.incident_id
    assert rows["shop-web-1"].cpu_percent == 12.5
    assert rows["nightly-job"].monitored is False
    shown = {r["name"]: r for r in views.container_table(found)}
    assert shown["shop-db-1"]["open alerts"] == "unhealthy"
    assert shown["shop-db-1"]["last incident"] == seeded.incident_id
    assert shown["shop-web-1"]["cpu %"] == 12.5
    assert shown["shop-web-1"]["memory MiB"] == 100.0
    assert (shown["nightly-job"]["health"], shown["nightly-job"]["cpu %"]) == ("-", None)
    assert shown["nightly-job"]["monitored"] is False


async def test_incident_timeline_runs_alert_decision_remediation_notification(redis, sync):
    seeded = await seed(redis)
    [incident] = queries.incidents(sync)
    assert incident.id == seeded.incident_id
    assert incident.container_name == "shop-db-1"
    [shown] = views.incident_table([incident])
    assert shown["container"] == "shop-db-1"
    assert "container_id" not in shown
    timeline = queries.incident_timeline(sync, seeded.incident_id)
    assert [e.stage for e in timeline] == ["alert", "decision", "remediation", "notification"]
    told = [views.timeline_text(e) for e in timeline]
    assert told[0].title == "unhealthy (firing)"
    assert told[1].fields["method"] == "rules"
    assert told[1].fields["confidence"] == "0.90"
    assert (told[3].title, told[3].detail) == ("slack: sent", "HTTP 200")


async def test_event_feed_is_newest_first_across_channels(redis, sync):
    await seed(redis)
    feed = queries.event_feed(sync, limit=20)
    assert {e.type for e in feed} >= {
        "health_alert",
        "remediation_needed",
        "remediation_complete",
        "false_alarm",
    }
    assert feed == sorted(feed, key=lambda e: e.emitted_at, reverse=True)
    shown = views.feed_table(feed)
    assert [r["type"] for r in shown] == [e.type for e in feed]
    assert "restart requested (rules, 0.90)" in {r["summary"] for r in shown}


async def test_proposals_and_the_shared_decision_mechanism(redis, redis_url, sync):
    # The dashboard and the CLI read and decide through shared/approvals.py.
    seeded = await seed(redis)
    recent = read_recent(sync)
    pending = [p for p in recent if p.state is ProposalState.PENDING]
    decided = [p for p in recent if p.state is not ProposalState.PENDING]
    assert [p.id for p in pending] == [seeded.pending_proposal]
    assert [(p.id, p.state, p.decided_by) for p in decided] == [
        (seeded.decided_proposal, ProposalState.DENIED, "bob")
    ]
    assert [p.id for p in read_pending(sync)] == [seeded.pending_proposal]
    [shown] = views.decided_table(decided)
    assert (shown["decided by"], shown["reason"]) == ("bob", "maintenance window")
    settings = make_settings(redis_url)
    await asyncio.to_thread(
        decide_sync,
        settings,
        seeded.pending_proposal,
        Decision.APPROVED,
        "carol",
        via="dashboard",
    )
    assert (await ApprovalStore(redis).get(seeded.pending_proposal)).state is ProposalState.APPROVED
    assert await redis.xlen("hemostat:approval_decision") == 1
    [(_, fields)] = await redis.xrange("hemostat:approval_decision")
    assert '"agent":"dashboard"' in fields["event"], "the event says where it was decided"
    assert read_pending(sync) == []
    with pytest.raises(ApprovalError, match="already approved by carol"):
        await asyncio.to_thread(
            decide_sync, settings, seeded.pending_proposal, Decision.DENIED, "dave", "x"
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
    assert {r.event for r in queries.audit_log(sync)} == {"rejected", "dry_run"}
    [rejected] = views.audit_table(queries.audit_log(sync, event="rejected"))
    assert rejected["failed guards"] == "cooldown"
    assert rejected["action"] == "restart:restart"
    found = queries.audit_log(sync, container="shop-db-1")
    assert [r["container"] for r in views.audit_table(found)] == ["shop-db-1"]
    health = queries.agent_health(sync)
    assert {b.agent for b in health.beats} == {"monitor", "analyzer", "responder", "alert"}
    [group] = health.groups
    assert (group.channel, group.group, group.lag, group.pending) == (
        "hemostat:health_alert",
        "analyzer",
        1,
        0,
    )
    assert health.dead_letters[0].error == "malformed JSON"
    assert views.dead_letter_table(health.dead_letters)[0]["attempts"] == "1"
    agents = views.agent_table(health.beats, time.time())
    assert [a["agent"] for a in agents] == ["alert", "analyzer", "monitor", "responder"]
    assert (agents[3]["handled"], agents[3]["dry run"], agents[0]["dry run"]) == (7, True, "-")


async def test_charts_data(redis, sync):
    await seed(redis)
    series = queries.samples(sync, ["a" * 64])
    assert series["a" * 64][0].cpu == 12.5
    [hour] = queries.outcomes_over_time(sync, time.time())
    counts = hour.counts
    assert (counts[RemediationStatus.SUCCEEDED], counts[RemediationStatus.FAILED]) == (2, 1)
    assert counts[RemediationStatus.DRY_RUN] == 1
    [shown] = views.outcome_table([hour])
    assert (shown["succeeded"], shown["failed"], shown["dry_run"]) == (2, 1, 1)
    assert shown["hour"] == hour.hour.strftime("%m-%d %H:00")


async def test_hosts_read_as_the_fleet_page_shows_them(redis, sync):
    await seed(redis)
    records = queries.hosts(sync)
    shown = {r["host"]: r for r in views.host_table(records, time.time())}
    assert (shown["h1"]["state"], shown["h1"]["for"]) == ("watched", "60 min")
    assert (shown["h2"]["state"], shown["h2"]["last seen"]) == ("unwatched", "11 min ago")


def test_views_say_nothing_as_a_dash_and_times_in_units():
    assert [views.duration(s) for s in (-3, 59, 600, 7200)] == ["0 s", "59 s", "10 min", "2.0 h"]
    assert views.stamp(None) == "-"
    assert views.stamp(0.0) == "1970-01-01 00:00:00"
    assert views.or_dash("") == views.or_dash(None) == "-"


async def test_host_filter_matches_the_hosts_as_shown(redis, sync):
    await seed(redis)
    rows = queries.containers(sync, time.time())
    assert views.host_options(rows) == ["h1", "h2"]
    assert [r.name for r in views.on_hosts(rows, ["h2"])] == ["nightly-job"]
    assert views.on_hosts(rows, []) == rows, "nothing chosen: every host"


def test_safe_masks_secrets_in_every_table_cell():
    secret = "s3cret-configured-value"
    redactor = Redactor([secret])
    rows = [{"reason": f"login with {secret} failed", "token": "abc123", "count": 3, "ok": True}]
    assert views.safe(redactor, rows) == [
        {"reason": f"login with {MASK} failed", "token": MASK, "count": 3, "ok": True}
    ]


async def test_the_cli_lists_and_decides_through_the_same_approvals(
    redis, redis_url, monkeypatch, capsys
):
    from agents.cli import main as cli_main

    seeded = await seed(redis)
    for key in list(os.environ):
        if key.startswith("HEMOSTAT_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert await asyncio.to_thread(cli_main, ["status"]) == 0
    out = capsys.readouterr().out
    assert "PENDING APPROVALS (1)" in out
    assert f"hemostat approve {seeded.pending_proposal}" in out
    assert seeded.decided_proposal not in out, "only what waits for a decision"
    approve = ["approve", seeded.pending_proposal, "--actor", "erin"]
    assert await asyncio.to_thread(cli_main, approve) == 0
    assert capsys.readouterr().out == "approved: restart restart on shop-db-1 by erin\n"
    deny = ["deny", seeded.pending_proposal, "--reason", "late", "--actor", "frank"]
    assert await asyncio.to_thread(cli_main, deny) == 1
    assert "refused: proposal" in capsys.readouterr().err
    assert (await ApprovalStore(redis).get(seeded.pending_proposal)).decided_by == "erin"


@pytest.mark.parametrize("proposal_id", ["p-0123456789", "not-an-id;rm", ""])
async def test_deciding_an_unknown_proposal_says_there_is_none(
    redis, redis_url, monkeypatch, capsys, proposal_id
):
    from agents.cli import main as cli_main

    for key in list(os.environ):
        if key.startswith("HEMOSTAT_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert await asyncio.to_thread(cli_main, ["approve", proposal_id, "--actor", "erin"]) == 1
    assert capsys.readouterr().err == f"refused: no proposal {proposal_id!r}\n"
    with pytest.raises(ApprovalError) as refused:
        await ApprovalStore(redis).deny(proposal_id, "frank", "x")
    assert str(refused.value) == f"no proposal {proposal_id!r}"
    assert await redis.xlen("hemostat:approval_decision") == 0

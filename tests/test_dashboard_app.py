"""Each dashboard page rendered with Streamlit's AppTest against a real Redis: the numbers match
the seeded state, Approve changes the proposal in Redis, the password gate holds, and a Redis
outage is a banner, not a stack trace."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from streamlit.testing.v1 import AppTest

from agents.analyzer.incidents import IncidentStore
from shared import audit
from shared.approvals import ApprovalStore, ProposalState
from shared.bus import Bus
from shared.container_state import ContainerSnapshot, write_snapshots
from shared.events import AlertKind
from shared.hosts import HostRecord, HostState
from shared.redaction import MASK
from tests.support import factories
from tests.support.dashboard_seed import Seeded, seed

pytestmark = pytest.mark.redis
APP = str(Path(__file__).parent.parent / "dashboard" / "app.py")


@pytest.fixture
def seeded(redis_url, monkeypatch) -> Seeded:
    for key in list(os.environ):
        if key.startswith("HEMOSTAT_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("REDIS_URL", redis_url)

    async def go() -> Seeded:
        client = Redis.from_url(redis_url, decode_responses=True)
        try:
            return await seed(client)
        finally:
            await client.aclose()

    return asyncio.run(go())


def state_of(redis_url: str, proposal_id: str) -> ProposalState:
    async def go() -> ProposalState:
        client = Redis.from_url(redis_url, decode_responses=True)
        try:
            return (await ApprovalStore(client).get(proposal_id)).state
        finally:
            await client.aclose()

    return asyncio.run(go())


def open_page(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=30)
    at.run()
    at.sidebar.radio(key="page").set_value(page).run()
    assert not at.exception, at.exception
    return at


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_overview_numbers_match_the_seeded_state(seeded):
    at = open_page("Overview")
    m = metrics(at)
    assert m["Monitored containers"] == "2"
    assert m["Healthy"] == "1"
    assert m["Unhealthy"] == "1"
    assert m["Open incidents"] == "1"
    assert m["Pending approvals"] == "1"
    assert m["Remediations (1 h)"] == "3"
    assert m["Success rate (24 h)"] == "67%"
    assert m["Dry runs (24 h)"] == "1"
    assert m["False alarms (24 h)"] == "1"
    assert m["Agents up"] == "4/5"
    assert any("metrics" in w.value for w in at.warning), "the missing agent is named"
    assert any("DRY-RUN" in w.value for w in at.warning)


def test_containers_grid_shows_every_container_and_filters(seeded):
    at = open_page("Containers")
    table = at.dataframe[0].value
    assert set(table["name"]) == {"shop-web-1", "shop-db-1", "nightly-job"}
    assert table.set_index("name").loc["shop-db-1", "health"] == "unhealthy"
    at.text_input(key="container_filter").set_value("db").run()
    assert list(at.dataframe[0].value["name"]) == ["shop-db-1"]


def test_the_fleet_has_a_host_column_a_host_filter_and_a_hosts_page(seeded):
    at = open_page("Containers")
    table = at.dataframe[0].value
    assert table.set_index("name").loc["nightly-job", "host"] == "h2"
    at.multiselect(key="container_hosts").set_value(["h2"]).run()
    assert list(at.dataframe[0].value["name"]) == ["nightly-job"]
    at = open_page("Incidents")
    assert set(at.dataframe[0].value["host"]) == {"h1"}
    at = open_page("Hosts")
    hosts = at.dataframe[0].value.set_index("host")
    assert hosts.loc["h1", "state"] == "watched"
    assert hosts.loc["h2", "state"] == "unwatched"
    assert "no longer watched" in hosts.loc["h2", "what it means"]
    assert hosts.loc["h2", "last seen"] == "11 min ago"
    assert any("h2" in w.value for w in at.warning)


def test_incidents_page_shows_the_timeline(seeded):
    at = open_page("Incidents")
    assert seeded.incident_id in set(at.dataframe[0].value["id"])
    text = " ".join(m.value for m in at.markdown)
    for stage in ("alert", "decision", "remediation", "notification"):
        assert f"· {stage}**" in text, stage
    assert "unhealthy (firing)" in text


def decided_by(redis_url: str, proposal_id: str) -> str:
    async def go() -> str:
        client = Redis.from_url(redis_url, decode_responses=True)
        try:
            return (await ApprovalStore(client).get(proposal_id)).decided_by
        finally:
            await client.aclose()

    return asyncio.run(go())


def sign_in(at: AppTest, user: str, password: str) -> AppTest:
    at.text_input(key="sign_in_user").set_value(user)
    at.text_input(key="sign_in_password").set_value(password)
    next(b for b in at.button if b.label == "Sign in to decide").click().run()
    return at


def test_on_loopback_without_a_password_approve_works_as_dashboard_local(seeded, redis_url):
    at = open_page("Approvals")
    assert not [t for t in at.text_input if t.key == "approval_actor"], "no free-text actor"
    at.button(key=f"approve-{seeded.pending_proposal}").click().run()
    assert not at.exception
    assert any("Approved" in s.value for s in at.success)
    assert state_of(redis_url, seeded.pending_proposal) is ProposalState.APPROVED
    assert decided_by(redis_url, seeded.pending_proposal) == "dashboard:local"


def test_beyond_loopback_without_a_password_no_one_can_decide(seeded, redis_url, monkeypatch):
    monkeypatch.setenv("HEMOSTAT_DASHBOARD_HOST", "0.0.0.0")
    at = open_page("Approvals")
    assert not [b for b in at.button if b.key and b.key.startswith("approve-")]
    assert any("not offered" in w.value for w in at.warning)
    assert state_of(redis_url, seeded.pending_proposal) is ProposalState.PENDING


def test_the_password_signs_in_a_person_who_is_recorded_as_the_actor(
    seeded, redis_url, monkeypatch
):
    monkeypatch.setenv("HEMOSTAT_DASHBOARD_PASSWORD", "open-sesame-42")
    monkeypatch.setenv("HEMOSTAT_DASHBOARD_HOST", "0.0.0.0")
    at = open_page("Approvals")
    assert not [b for b in at.button if b.key and b.key.startswith("deny-")], "sign in first"
    sign_in(at, "operator", "nope")
    assert any("Wrong user or password" in e.value for e in at.error)
    sign_in(at, "operator", "open-sesame-42")
    at.button(key=f"deny-{seeded.pending_proposal}").click().run()
    assert state_of(redis_url, seeded.pending_proposal) is ProposalState.DENIED
    assert decided_by(redis_url, seeded.pending_proposal) == "dashboard:operator"
    assert "open-sesame-42" not in str([e.value for e in [*at.markdown, *at.caption]])


def test_named_users_decide_as_themselves(seeded, redis_url, monkeypatch):
    from dashboard.auth import hash_password

    monkeypatch.setenv("HEMOSTAT_DASHBOARD_USERS", f"alice:{hash_password('alices-long-pw')}")
    at = open_page("Approvals")
    sign_in(at, "alice", "alices-long-pw")
    at.button(key=f"approve-{seeded.pending_proposal}").click().run()
    assert decided_by(redis_url, seeded.pending_proposal) == "dashboard:alice"


def test_failed_sign_ins_lock_the_name_even_against_the_right_password(
    seeded, redis_url, monkeypatch
):
    from dashboard.auth import LIMIT

    monkeypatch.setenv("HEMOSTAT_DASHBOARD_PASSWORD", "open-sesame-42")
    at = open_page("Approvals")
    for _ in range(LIMIT):
        sign_in(at, "operator", "guess")
    sign_in(at, "operator", "open-sesame-42")
    assert any("Too many failed sign-ins" in e.value for e in at.error)
    assert not [b for b in at.button if b.key and b.key.startswith("approve-")]
    assert state_of(redis_url, seeded.pending_proposal) is ProposalState.PENDING


def test_audit_and_agents_pages(seeded):
    at = open_page("Audit")
    assert set(at.dataframe[0].value["event"]) == {"rejected", "dry_run"}
    at.selectbox(key="audit_event").set_value("rejected").run()
    assert list(at.dataframe[0].value["failed guards"]) == ["cooldown"]
    at = open_page("Agents")
    assert set(at.dataframe[0].value["agent"]) == {"monitor", "analyzer", "responder", "alert"}
    assert "malformed JSON" in set(at.dataframe[-1].value["error"])


def test_an_empty_system_has_helpful_empty_states(redis_url, monkeypatch):
    monkeypatch.setenv("REDIS_URL", redis_url)
    at = open_page("Overview")
    assert any("Nothing to show yet" in i.value for i in at.info)
    at = open_page("Approvals")
    assert any("No proposal waits" in i.value for i in at.info)


def test_redis_down_is_a_banner_not_a_stack_trace(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2pass@127.0.0.1:1/0")
    at = open_page("Overview")
    assert not at.exception
    [banner] = at.error
    assert "Redis is unreachable" in banner.value
    assert "hunter2pass" not in banner.value


SECRET = "ntfy-9f8e7d6c5b4a3921"  # a configured secret (NTFY_TOKEN): masked wherever it appears


async def plant_the_secret(redis: Any) -> None:
    """The secret in everything a page shows: a container's and a host's name, an alert's
    summary and root cause (the feed, the timeline), a proposal's why, an audit reason, a dead
    letter."""
    now = time.time()
    host, name, cid = f"edge-{SECRET}", f"web-{SECRET}", "d" * 64
    await write_snapshots(
        redis,
        [
            ContainerSnapshot(
                id=cid,
                name=name,
                host=host,
                state="running",
                health=f"x-{SECRET}",
                cpu_percent=99.0,
                updated_at=now,
                active_alerts=["unhealthy"],
            )
        ],
        ttl_s=600,
    )
    record = HostRecord(host=host, state=HostState.UNWATCHED, since=now - 60, last_seen=now - 60)
    await redis.hset("hemostat:hosts", host, record.model_dump_json())
    subject = factories.subject(cid).model_copy(update={"container_name": name, "host": host})
    alert = factories.health_alert(cid, AlertKind.UNHEALTHY, summary=f"token {SECRET} rejected")
    alert = alert.model_copy(update={"subject": subject})
    incident = (await IncidentStore(redis).attach(alert, now)).incident_id
    needed = factories.remediation_needed(cid)
    analysis = needed.payload.analysis.model_copy(update={"root_cause": f"bad token {SECRET}"})
    needed = needed.model_copy(
        update={
            "incident_id": incident,
            "causation_id": alert.id,
            "subject": subject,
            "payload": needed.payload.model_copy(update={"analysis": analysis}),
        }
    )
    await Bus(redis).publish_many([alert, needed])
    await IncidentStore(redis).record_decision(
        incident, analysis, "unhealthy", f"restart {SECRET}", cache=False
    )
    await ApprovalStore(redis).create(needed, 900, f"the token {SECRET} is involved", key="s")
    await audit.append(
        redis,
        audit.AuditRecord(
            at=now,
            actor="responder:r1",
            event="rejected",
            outcome="rejected:cooldown",
            host=host,
            container_id=cid,
            container_name=name,
            reason=f"saw {SECRET}",
        ),
    )
    await Bus(redis).dead_letter(
        channel="hemostat:health_alert",
        group="analyzer",
        consumer="a-1",
        message_id="2-0",
        raw="{bad",
        error=f"bad {SECRET}",
        attempts=1,
    )


def rendered(at: AppTest) -> bytes:
    """Everything the page sends to the browser: every element's message, the tables' and
    charts' data and the pickers' options included."""
    out: list[bytes] = []

    def walk(node: Any) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None:
            out.append(proto.SerializeToString())
        for child in (getattr(node, "children", None) or {}).values():
            walk(child)

    walk(at.main)
    walk(at.sidebar)
    return b"\n".join(out)


def test_a_configured_secret_never_reaches_any_page(seeded, redis_url, monkeypatch):
    monkeypatch.setenv("NTFY_TOKEN", SECRET)

    async def go() -> None:
        client = Redis.from_url(redis_url, decode_responses=True)
        try:
            await plant_the_secret(client)
        finally:
            await client.aclose()

    asyncio.run(go())
    for page in ("Overview", "Containers", "Incidents", "Approvals", "Audit", "Hosts", "Agents"):
        at = open_page(page)
        shown = rendered(at)
        assert SECRET.encode() not in shown, page
        if page != "Overview":
            assert MASK.encode() in shown, f"{page}: the planted secret is shown, masked"
    at = open_page("Containers")
    at.multiselect(key="container_hosts").set_value([f"edge-{SECRET}"]).run()
    assert list(at.dataframe[0].value["name"]) == [f"web-{MASK}"], "filters use the real values"
    at = open_page("Incidents")
    assert f"bad token {MASK}" in " ".join(c.value for c in at.caption), "the timeline"

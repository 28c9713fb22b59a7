"""Each dashboard page rendered with Streamlit's AppTest against a real Redis: the numbers match
the seeded state, Approve changes the proposal in Redis, the password gate holds, and a Redis
outage is a banner, not a stack trace."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from redis.asyncio import Redis
from streamlit.testing.v1 import AppTest

from shared.approvals import ApprovalStore, ProposalState
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


def test_incidents_page_shows_the_timeline(seeded):
    at = open_page("Incidents")
    assert seeded.incident_id in set(at.dataframe[0].value["id"])
    text = " ".join(m.value for m in at.markdown)
    for stage in ("alert", "decision", "remediation", "notification"):
        assert f"· {stage}**" in text, stage
    assert "unhealthy (firing)" in text


def test_approve_button_changes_the_proposal_in_redis(seeded, redis_url):
    at = open_page("Approvals")
    at.text_input(key="approval_actor").set_value("erin").run()
    at.button(key=f"approve-{seeded.pending_proposal}").click().run()
    assert not at.exception
    assert any("Approved" in s.value for s in at.success)
    assert state_of(redis_url, seeded.pending_proposal) is ProposalState.APPROVED


def test_password_gate_holds_and_then_lets_the_right_password_through(
    seeded, redis_url, monkeypatch
):
    monkeypatch.setenv("HEMOSTAT_DASHBOARD_PASSWORD", "open-sesame-42")
    at = open_page("Approvals")
    at.button(key=f"approve-{seeded.pending_proposal}").click().run()
    assert any("Wrong password" in e.value for e in at.error)
    assert state_of(redis_url, seeded.pending_proposal) is ProposalState.PENDING
    at.text_input(key="approval_password").set_value("nope").run()
    at.button(key=f"deny-{seeded.pending_proposal}").click().run()
    assert state_of(redis_url, seeded.pending_proposal) is ProposalState.PENDING
    at.text_input(key="approval_password").set_value("open-sesame-42").run()
    at.button(key=f"deny-{seeded.pending_proposal}").click().run()
    assert state_of(redis_url, seeded.pending_proposal) is ProposalState.DENIED
    assert "open-sesame-42" not in str([e.value for e in [*at.markdown, *at.caption]])


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

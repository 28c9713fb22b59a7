"""Notification content and routing (pure)."""

from __future__ import annotations

import pytest

from agents.alert import message
from agents.alert.routing import parse_routes, route
from shared.errors import ConfigError
from shared.events import RemediationStatus, Severity
from shared.settings import DEFAULT_ROUTES
from tests.support import factories


def test_slack_block_kit_carries_everything_people_need():
    event = factories.remediation_complete(
        "c9", RemediationStatus.DRY_RUN, Severity.WARNING, dry_run=True, reason="would restart"
    )
    n = message.render(event)
    body = message.slack(n)
    header = body["blocks"][0]
    assert header["type"] == "header"
    assert header["text"]["text"].startswith("🟠 WARNING [DRY-RUN] · name-c9")
    fields = {f["text"].split("\n")[0]: f["text"] for f in body["blocks"][2]["fields"]}
    assert {
        "*Action*",
        "*Outcome*",
        "*Root cause*",
        "*Confidence*",
        "*Analysis*",
        "*Dry run*",
    } <= set(fields)
    assert "0.90" in fields["*Confidence*"]
    context = body["blocks"][-1]["elements"][0]["text"]
    assert "incident `inc-1`" in context
    assert "DRY-RUN" in context


def test_proposals_show_the_exact_approve_and_deny_commands():
    n = message.render(factories.approval_request(proposal_id="p-123"))
    slack = message.slack(n)
    texts = [b["text"]["text"] for b in slack["blocks"] if b.get("text")]
    assert any("`hemostat approve p-123`" in t and "`hemostat deny p-123" in t for t in texts)
    assert "hemostat approve p-123" in message.discord(n, True)["embeds"][0]["description"]
    assert message.ntfy(n, "topic")["priority"] >= 4


@pytest.mark.parametrize(
    ("severity", "mention", "color"),
    [
        (Severity.CRITICAL, "@here", 0xE01E5A),
        (Severity.WARNING, "", 0xECB22E),
        (Severity.INFO, "", 0x2EB67D),
    ],
)
def test_discord_colour_by_severity_and_mentions_only_for_critical(severity, mention, color):
    n = message.render(factories.remediation_complete("c1", RemediationStatus.FAILED, severity))
    body = message.discord(n, mention_critical=True)
    assert body["content"] == mention
    assert body["embeds"][0]["color"] == color
    assert body["embeds"][0]["footer"]["text"] == "incident inc-1"
    assert body["allowed_mentions"]["parse"] == (["everyone"] if mention else [])
    assert message.discord(n, mention_critical=False)["content"] == ""


def test_ntfy_priority_follows_severity():
    for severity, priority in ((Severity.CRITICAL, 5), (Severity.WARNING, 4), (Severity.INFO, 3)):
        n = message.render(factories.remediation_complete("c1", RemediationStatus.FAILED, severity))
        assert message.ntfy(n, "ops")["priority"] == priority


def test_dedup_key_is_container_kind_and_outcome():
    a = message.render(factories.remediation_complete("c1", RemediationStatus.FAILED))
    b = message.render(factories.remediation_complete("c2", RemediationStatus.FAILED))
    c = message.render(factories.remediation_complete("c1", RemediationStatus.SUCCEEDED))
    assert len({a.dedup_key, b.dedup_key, c.dedup_key}) == 3
    assert (
        a.dedup_key
        == message.render(factories.remediation_complete("c1", RemediationStatus.FAILED)).dedup_key
    )
    p1 = message.render(factories.approval_request("c1", "p-1"))
    p2 = message.render(factories.approval_request("c1", "p-2"))
    assert p1.dedup_key != p2.dedup_key, "proposals are never deduplicated"


ALL = frozenset({"slack", "discord", "ntfy", "apprise"})


def test_default_routes_tell_every_channel_of_every_failure_and_no_one_of_false_alarms():
    routes = parse_routes(DEFAULT_ROUTES)
    for severity in Severity:  # a dry run (info) as much as a failed restart (critical)
        assert route(routes, "remediation_complete", severity, ALL) == ALL
        assert route(routes, "approval_request", severity, ALL) == ALL
        assert route(routes, "escalation", severity, ALL) == ALL
        assert route(routes, "false_alarm", severity, ALL) == frozenset()
    discord_only = frozenset({"discord"})
    assert route(routes, "remediation_complete", Severity.INFO, discord_only) == discord_only


def test_routes_only_use_configured_channels_and_runbooks_narrow_them():
    routes = parse_routes("false_alarm=slack;critical=all")
    assert route(routes, "false_alarm", Severity.CRITICAL, frozenset({"slack"})) == {"slack"}
    narrowed = route(routes, "remediation_complete", Severity.CRITICAL, ALL, frozenset({"ntfy"}))
    assert narrowed == {"ntfy"}
    assert route(routes, "remediation_complete", Severity.INFO, frozenset()) == frozenset()


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("critical=pager", "unknown channel"),
        ("urgent=slack", "selector must be"),
        ("slack", "selector"),
    ],
)
def test_bad_routes_are_config_errors(spec, error):
    with pytest.raises(ConfigError, match=error):
        parse_routes(spec)


def test_all_means_every_channel():
    assert parse_routes("critical=all")["critical"] == ALL

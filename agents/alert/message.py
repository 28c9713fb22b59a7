"""What a notification says, rendered from an event (pure): one `Notification`, then one payload
per channel — Slack Block Kit, Discord embeds, ntfy JSON, plain text for apprise.

An approval request can also carry Approve / Deny buttons (Slack and Discord) whose clicks the
interactions endpoint (`interactions.py`) verifies; whether to add them is the caller's input,
true only when that endpoint can verify the click."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shared import keys
from shared.events import (
    Analysis,
    ApprovalRequestEvent,
    Envelope,
    EscalationEvent,
    FalseAlarmEvent,
    RemediationCompleteEvent,
    RemediationStatus,
    Severity,
)
from shared.redaction import Redactor

if TYPE_CHECKING:
    from agents.alert.storm import StormView

__all__ = [
    "COLOR",
    "HEAL_WINDOW_S",
    "ICON",
    "NTFY_PRIORITY",
    "STORM_LIST_LIMIT",
    "Notification",
    "discord",
    "ntfy",
    "render",
    "render_storm",
    "slack",
    "slack_escape",
]

ICON = {Severity.CRITICAL: "🔴", Severity.WARNING: "🟠", Severity.INFO: "🟢"}
COLOR = {Severity.CRITICAL: 0xE01E5A, Severity.WARNING: 0xECB22E, Severity.INFO: 0x2EB67D}
NTFY_PRIORITY = {Severity.CRITICAL: 5, Severity.WARNING: 4, Severity.INFO: 3}


@dataclass(frozen=True)
class Notification:
    event_id: str
    event_type: str
    severity: Severity
    title: str
    summary: str
    container: str
    dedup_key: str
    occurred_at: datetime
    fields: list[tuple[str, str]] = field(default_factory=list)
    incident_id: str | None = None
    runbook_id: str | None = None
    commands: list[str] = field(default_factory=list)
    dry_run: bool = False
    suppressed: int = 0
    link: str | None = None
    # Seconds within which repeats of `dedup_key` are counted, not sent (None: the setting).
    dedup_window_s: float | None = None
    proposal_id: str | None = None  # an approval request: what its buttons decide

    @property
    def header(self) -> str:
        dry = " [DRY-RUN]" if self.dry_run else ""
        return f"{ICON[self.severity]} {self.severity.value.upper()}{dry} · {self.title}"

    def redacted(self, redactor: Redactor) -> Notification:
        """Every human-readable part masked (the last line of defence before a channel)."""
        return replace(
            self,
            title=redactor.text(self.title),
            summary=redactor.text(self.summary),
            container=redactor.text(self.container),
            fields=[(name, redactor.text(value)) for name, value in self.fields],
            commands=[redactor.text(c) for c in self.commands],
        )

    def plain_text(self) -> str:
        lines = [self.header, self.summary]
        lines += [f"{name}: {value}" for name, value in self.fields]
        lines += self.commands
        if self.suppressed:
            lines.append(f"({self.suppressed} similar message(s) suppressed since the last one)")
        if self.incident_id:
            lines.append(f"incident {self.incident_id}")
        return "\n".join(line for line in lines if line)


HEAL_WINDOW_S = 7 * 86_400  # a successful heal is told once per incident


def _analysis_fields(analysis: Analysis | None) -> list[tuple[str, str]]:
    if analysis is None:
        return []
    method = analysis.method.value + (f" ({analysis.model})" if analysis.model else "")
    if analysis.fallback_reason:
        method += f"; rules stood: {analysis.fallback_reason}"
    fields = [
        ("Root cause", analysis.root_cause),
        ("Confidence", f"{analysis.confidence:.2f}"),
        ("Analysis", method),
    ]
    if analysis.decided_by is not None:
        fields.append(("Decided by", analysis.decided_by.value))
    if analysis.overruled:
        fields.append(("Overruled", analysis.overruled))
    return fields


def render(event: Envelope, dashboard_url: str | None = None) -> Notification:
    container = event.subject.display
    common: dict[str, Any] = {
        "event_id": event.id,
        "event_type": str(getattr(event, "type", "")),
        "severity": event.severity,
        "container": container,
        "occurred_at": event.occurred_at,
        "incident_id": event.incident_id,
        "link": f"{dashboard_url.rstrip('/')}/?incident={event.incident_id}"
        if dashboard_url and event.incident_id
        else None,
    }
    if isinstance(event, RemediationCompleteEvent):
        p = event.payload
        outcome = p.status.value + (f" ({p.guard})" if p.guard else "")
        fields = [("Action", f"{p.action_type} · {p.action_id}"), ("Outcome", outcome)]
        fields += _analysis_fields(p.analysis)
        if p.reason:
            fields.append(("Details", p.reason))
        if p.output:
            fields.append(("Output", p.output[-500:]))
        if p.proposal_id:
            fields.append(("Proposal", p.proposal_id))
        if p.dry_run:
            fields.append(("Dry run", "yes — nothing was changed"))
        healed = p.status is RemediationStatus.SUCCEEDED
        what = "would " + p.action_type if p.dry_run else p.action_type
        title = f"{container} · {what} → {outcome}"
        if p.status is RemediationStatus.CANCELLED:
            title = f"{container} · proposal {p.proposal_id} withdrawn: resolved by itself"
        elif p.status is RemediationStatus.BLOCKED:
            title = f"{container} · approved {p.action_type} not run: it changed since"
        dedup_key = f"{container}|remediation:{p.alert_kind.value}:{p.action_type}|{outcome}"
        if healed:
            dedup_key = f"heal|{event.incident_id or container}"
        elif p.proposal_id:
            dedup_key = f"{container}|proposal:{p.proposal_id}|{outcome}"
        return Notification(
            **common,
            title=title,
            summary=f"{p.alert_kind.value} on {container}: {what} {outcome}",
            # A heal is one message per incident; every failure is told (within the window).
            dedup_key=dedup_key,
            dedup_window_s=HEAL_WINDOW_S if healed else None,
            fields=fields,
            runbook_id=p.runbook_id,
            dry_run=p.dry_run,
        )
    if isinstance(event, FalseAlarmEvent):
        fa = event.payload
        return Notification(
            **common,
            title=f"{container} · {fa.alert_kind.value} was a false alarm",
            summary=fa.reason,
            dedup_key=f"{container}|false_alarm:{fa.alert_kind.value}|false_alarm",
            fields=_analysis_fields(fa.analysis),
            runbook_id=fa.runbook_id,
        )
    if isinstance(event, ApprovalRequestEvent):
        ap = event.payload
        return Notification(
            **common,
            title=f"{container} · approval needed: {ap.action.type} ({ap.action.id})",
            summary=ap.evidence or f"{ap.action.type} of {container} waits for a human decision",
            # Every proposal is its own question: never deduplicated.
            dedup_key=f"{container}|approval|{ap.proposal_id}",
            fields=[
                ("Proposal", ap.proposal_id),
                ("Risk", ap.action.risk.value),
                ("Expires", ap.expires_at.strftime("%Y-%m-%d %H:%M:%S UTC")),
                *_analysis_fields(ap.analysis),
            ],
            runbook_id=ap.runbook_id,
            commands=[ap.approve_command, ap.deny_command],
            proposal_id=ap.proposal_id,
        )
    if isinstance(event, EscalationEvent):
        es = event.payload
        return Notification(
            **common,
            title=f"{container} · escalation: {es.guard or 'needs a human'}",
            summary=es.reason,
            dedup_key=f"{container}|escalation:{es.guard}|escalated",
            fields=[(k.title(), v) for k, v in es.details.items()],
        )
    raise ValueError(f"no notification for {type(event).__name__}")


# ---------------------------------------------------------------- storms

STORM_LIST_LIMIT = 25
_STATE_WORDS = {
    "healed": "healed",
    "failed": "failed",
    "needs_person": "need a person",
    "nothing_done": "nothing done",
}


def _scope_words(scope: str) -> str:
    kind, _, name = scope.partition(":")
    return f"host {name}" if kind == "host" else f"{name} across hosts"


def render_storm(view: StormView, *, ending: bool, now: float) -> Notification:
    """One message for many failures: when the storm starts, and when it is over."""
    members = view.members
    count = len(members) + view.told_alone
    span = max(0.0, (view.last if ending else now) - view.started)
    states = {state: sum(1 for m in members if m.state == state) for state in _STATE_WORDS}
    lines = [f"• {m.container} · {m.kind} → {m.outcome}" for m in members[:STORM_LIST_LIMIT]]
    if len(members) > STORM_LIST_LIMIT:
        lines.append(f"… and {len(members) - STORM_LIST_LIMIT} more (all in the dashboard)")
    if view.told_alone:
        lines.append(f"({view.told_alone} reported on their own just before the storm formed)")
    worst = max((m.severity for m in members), key=lambda s: s.rank, default=Severity.WARNING)
    tally = " · ".join(f"{n} {_STATE_WORDS[state]}" for state, n in states.items() if n)
    where = _scope_words(view.scope)
    if ending:
        unhealed = [m for m in members if m.state != "healed"]
        severity = (
            Severity.INFO
            if not unhealed
            else max((m.severity for m in unhealed), key=lambda s: s.rank)
        )
        title = f"storm over on {where}: {count} failure(s) in {span:.0f}s"
        summary = f"{tally or 'nothing to report'}. Each one:\n" + "\n".join(lines)
    else:
        severity = worst
        title = f"storm on {where}: {count} failure(s) in {span:.0f}s"
        summary = (
            f"So far: {tally or 'being handled'}. HemoStat handles each one under its guards "
            "(a storm makes it act on no more and no fewer); one more message when it is over.\n"
            + "\n".join(lines)
        )
    return Notification(
        event_id=view.id,
        event_type="storm",
        severity=severity,
        title=title,
        summary=summary,
        container=where,
        dedup_key=f"storm|{view.id}|{'end' if ending else 'start'}",
        occurred_at=datetime.fromtimestamp(now, UTC),
        fields=[(_STATE_WORDS[state].capitalize(), str(n)) for state, n in states.items() if n],
        dedup_window_s=0,
    )


# ---------------------------------------------------------------- channel payloads


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def slack_escape(text: str) -> str:
    """Slack's own escaping: `<!channel>`, `<!here>`, `<@U…>` and `<url|label>` in text that came
    from a container (logs, names, reasons) become plain characters, never a ping or a link."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack(n: Notification, buttons: bool = False) -> dict[str, Any]:
    """Block Kit; `buttons` adds Approve / Deny to an approval request (the CLI commands stay)."""
    esc = slack_escape
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _cut(n.header, 150)}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _cut(esc(n.summary), 2900)}},
    ]
    if n.fields:
        blocks.append(
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": _cut(f"*{esc(name)}*\n{esc(value)}", 1900)}
                    for name, value in n.fields[:10]
                ],
            }
        )
    if n.commands:
        commands = "\n".join(f"`{esc(c)}`" for c in n.commands)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": commands}})
    if buttons and n.proposal_id:
        blocks.append(_slack_buttons(n))
    context = [f"incident `{esc(n.incident_id)}`" if n.incident_id else "no incident"]
    if n.dry_run:
        context.append("*DRY-RUN*: nothing was changed")
    if n.suppressed:
        context.append(f"{n.suppressed} similar message(s) suppressed")
    if n.link:
        context.append(f"<{n.link}|dashboard>")
    blocks.append(
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": " · ".join(context)}],
        }
    )
    return {"text": _cut(esc(f"{n.header}: {n.summary}"), 3000), "blocks": blocks}


def _slack_buttons(n: Notification) -> dict[str, Any]:
    assert n.proposal_id is not None

    def text(value: str) -> dict[str, str]:
        return {"type": "plain_text", "text": value}

    return {
        "type": "actions",
        "block_id": "hemostat-decision",
        "elements": [
            {
                "type": "button",
                "action_id": keys.CHAT_APPROVE,
                "text": text("Approve"),
                "style": "primary",
                "value": n.proposal_id,
                # Approving acts on a container: one more click, with what it will do.
                "confirm": {
                    "title": text("Approve this action?"),
                    "text": {"type": "mrkdwn", "text": _cut(slack_escape(n.title), 300)},
                    "confirm": text("Approve"),
                    "deny": text("Cancel"),
                },
            },
            {
                "type": "button",
                "action_id": keys.CHAT_DENY,
                "text": text("Deny"),
                "style": "danger",
                "value": n.proposal_id,
            },
        ],
    }


def discord(n: Notification, mention_critical: bool, buttons: bool = False) -> dict[str, Any]:
    """Embeds; `buttons` adds Approve / Deny components to an approval request (Discord shows
    them only when the webhook belongs to the application that receives the clicks)."""
    mention = mention_critical and n.severity is Severity.CRITICAL
    description = n.summary
    if n.commands:
        description += "\n" + "\n".join(f"`{c}`" for c in n.commands)
    if n.suppressed:
        description += f"\n_{n.suppressed} similar message(s) suppressed_"
    embed: dict[str, Any] = {
        "title": _cut(n.header, 256),
        "description": _cut(description, 4000),
        "color": COLOR[n.severity],
        "fields": [
            {"name": _cut(name, 256), "value": _cut(value or "-", 1024), "inline": len(value) < 40}
            for name, value in n.fields[:25]
        ],
        "footer": {"text": f"incident {n.incident_id}" if n.incident_id else "HemoStat"},
        "timestamp": n.occurred_at.isoformat(),
    }
    if n.link:
        embed["url"] = n.link
    body: dict[str, Any] = {
        "content": "@here" if mention else "",
        "embeds": [embed],
        "allowed_mentions": {"parse": ["everyone"] if mention else []},
    }
    if buttons and n.proposal_id:
        body["components"] = [
            {
                "type": 1,  # an action row
                "components": [
                    {
                        "type": 2,  # a button; style 3 green, 4 red
                        "style": 3,
                        "label": "Approve",
                        "custom_id": f"{keys.CHAT_APPROVE}:{n.proposal_id}",
                    },
                    {
                        "type": 2,
                        "style": 4,
                        "label": "Deny",
                        "custom_id": f"{keys.CHAT_DENY}:{n.proposal_id}",
                    },
                ],
            }
        ]
    return body


def ntfy(n: Notification, topic: str) -> dict[str, Any]:
    priority = NTFY_PRIORITY[n.severity]
    if n.commands:
        priority = max(priority, 4)
    body: dict[str, Any] = {
        "topic": topic,
        "title": _cut(n.header, 250),
        "message": _cut(n.plain_text(), 3500),
        "priority": priority,
        "tags": ["rotating_light" if n.severity is Severity.CRITICAL else "whale"],
    }
    if n.link:
        body["click"] = n.link
    return body

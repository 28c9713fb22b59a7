"""How the dashboard's rows read: the queries' typed rows (dashboard/rows.py) turned into the
tables, labels and text the pages show — column names, "-" for nothing, durations, timestamps,
one-line summaries. No Redis here, and nothing Streamlit: plain functions of their inputs.

`safe` is the last pass over every table before it is rendered: no secret reaches the page."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from dashboard.rows import (
    ContainerRow,
    DeadLetterRow,
    GroupRow,
    IncidentRow,
    NotificationRow,
    OutcomeHour,
    TimelineEntry,
)
from shared.approvals import Proposal
from shared.audit import AuditRecord
from shared.events import (
    ApprovalDecisionEvent,
    ApprovalRequestEvent,
    Event,
    FalseAlarmEvent,
    HealthAlertEvent,
    RemediationCompleteEvent,
    RemediationNeededEvent,
)
from shared.heartbeat import Heartbeat
from shared.hosts import HostRecord, describe
from shared.redaction import Redactor

__all__ = [
    "Table",
    "TimelineText",
    "agent_table",
    "audit_table",
    "clock",
    "container_table",
    "dead_letter_table",
    "decided_table",
    "duration",
    "event_summary",
    "feed_table",
    "group_table",
    "host_options",
    "host_table",
    "incident_label",
    "incident_table",
    "on_hosts",
    "or_dash",
    "outcome_table",
    "safe",
    "stamp",
    "timeline_text",
]

Table = list[dict[str, Any]]  # rows of column -> value, as st.dataframe takes them


def safe(redactor: Redactor, rows: Table) -> Table:
    """The last pass before anything is rendered: no secret reaches the page."""
    return [redactor.data(row) for row in rows]


# ---------------------------------------------------------------- values


def or_dash(value: str | None) -> str:
    """An empty or missing value, as the tables show it."""
    return value or "-"


def stamp(at: float | None) -> str:
    """Epoch seconds as a UTC date and time ("-" when unknown)."""
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S")


def clock(at: datetime) -> str:
    return at.strftime("%H:%M:%S")


def duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _target(name: str | None, container_id: str | None) -> str:
    return name or (container_id or "")[:12]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


# ---------------------------------------------------------------- hosts filter


class _OnHost(Protocol):
    @property
    def host(self) -> str: ...


_Row = TypeVar("_Row", bound=_OnHost)


def host_options(rows: Iterable[_OnHost]) -> list[str]:
    """The hosts of `rows` as the tables show them, for a filter."""
    return sorted({or_dash(r.host) for r in rows})


def on_hosts(rows: list[_Row], chosen: list[str]) -> list[_Row]:
    """Rows on the chosen hosts (all rows when none is chosen)."""
    return [r for r in rows if not chosen or or_dash(r.host) in chosen]


# ---------------------------------------------------------------- containers


def container_table(rows: Iterable[ContainerRow]) -> Table:
    return [
        {
            "host": or_dash(r.host),
            "name": r.name,
            "status": r.state,
            "health": or_dash(r.health),
            "cpu %": _round(r.cpu_percent),
            "memory %": _round(r.memory_percent),
            "memory MiB": None if r.memory_bytes is None else round(r.memory_bytes / 2**20, 1),
            "restarts": r.restarts,
            "open alerts": or_dash(", ".join(r.open_alerts)),
            "last incident": or_dash(r.last_incident),
            "service": or_dash(r.service),
            "monitored": r.monitored,
            "id": r.container_id[:12],
        }
        for r in rows
    ]


def outcome_table(hours: Iterable[OutcomeHour]) -> Table:
    """One row per hour, one column per outcome (only those that happened)."""
    return [
        {"hour": h.hour.strftime("%m-%d %H:00"), **{s.value: n for s, n in h.counts.items()}}
        for h in hours
    ]


# ---------------------------------------------------------------- incidents


def incident_table(rows: Iterable[IncidentRow]) -> Table:
    return [
        {
            "id": r.id,
            "status": r.status,
            "host": or_dash(r.host),
            "container": _target(r.container_name, r.container_id),
            "last kind": r.last_kind,
            "alerts": r.alerts,
            "decisions": r.decisions,
            "root cause": r.root_cause,
            "method": r.method,
            "last decision": r.last_decision,
            "opened": stamp(r.opened_at),
            "updated": stamp(r.updated_at),
        }
        for r in rows
    ]


def incident_label(row: IncidentRow) -> str:
    container = _target(row.container_name, row.container_id)
    return f"{row.id} · {container} · {row.last_kind} · {row.status}"


@dataclass(frozen=True)
class TimelineText:
    title: str
    detail: str = ""
    fields: dict[str, str] = field(default_factory=dict)


def timeline_text(entry: TimelineEntry) -> TimelineText:
    """What one step of an incident's story says."""
    what = entry.what
    if isinstance(what, NotificationRow):
        return TimelineText(f"{what.channel}: {what.status}", what.detail)
    if isinstance(what, HealthAlertEvent):
        p = what.payload
        return TimelineText(
            f"{p.kind} ({p.status})",
            p.summary,
            {"severity": what.severity.value, "detector": p.detector.value},
        )
    if isinstance(what, RemediationNeededEvent | FalseAlarmEvent):
        a = what.payload.analysis
        if isinstance(what, FalseAlarmEvent):
            title = "false alarm"
        else:
            action = what.payload.action
            title = f"{action.type} ({action.id})"
            if what.payload.needs_human:
                title += " — needs a human"
        return TimelineText(
            title,
            a.root_cause,
            {
                "method": a.method.value + (f" ({a.model})" if a.model else ""),
                "confidence": f"{a.confidence:.2f}",
                "fallback": a.fallback_reason or "-",
            },
        )
    if isinstance(what, RemediationCompleteEvent):
        c = what.payload
        return TimelineText(
            f"{c.action_type} → {c.status}" + (f" ({c.guard})" if c.guard else ""),
            c.reason,
            {"actor": c.actor, "dry run": str(c.dry_run)},
        )
    if isinstance(what, ApprovalRequestEvent):
        r = what.payload
        return TimelineText(f"proposal {r.proposal_id}", r.evidence, {"approve": r.approve_command})
    return TimelineText(f"escalation: {what.payload.guard}", what.payload.reason)


def feed_table(events: Iterable[Event]) -> Table:
    return [
        {
            "time": clock(e.emitted_at),
            "type": e.type,
            "severity": e.severity.value,
            "host": or_dash(e.subject.host),
            "container": e.subject.display,
            "summary": event_summary(e),
            "incident": or_dash(e.incident_id),
        }
        for e in events
    ]


def event_summary(e: Event) -> str:
    if isinstance(e, HealthAlertEvent):
        return f"{e.payload.kind} {e.payload.status}: {e.payload.summary}"
    if isinstance(e, RemediationNeededEvent):
        a = e.payload.analysis
        return f"{e.payload.action.type} requested ({a.method}, {a.confidence:.2f})"
    if isinstance(e, RemediationCompleteEvent):
        c = e.payload
        return f"{c.action_type} {c.status}" + (f" ({c.guard})" if c.guard else "")
    if isinstance(e, FalseAlarmEvent):
        return f"false alarm: {e.payload.reason}"
    if isinstance(e, ApprovalRequestEvent):
        return f"approval needed: {e.payload.proposal_id}"
    if isinstance(e, ApprovalDecisionEvent):
        return f"{e.payload.decision} by {e.payload.actor}"
    # An escalation (and, as ever, an incident that resolved by itself: it has a reason too).
    return f"escalation: {e.payload.reason}"


# ---------------------------------------------------------------- approvals


def decided_table(proposals: Iterable[Proposal]) -> Table:
    return [
        {
            "proposal": p.id,
            "state": p.state.value,
            "container": _target(p.container_name, p.container_id),
            "action": f"{p.action_type}:{p.action_id}",
            "decided by": or_dash(p.decided_by),
            "reason": p.decision_reason or p.outcome or "-",
        }
        for p in proposals
    ]


# ---------------------------------------------------------------- hosts, audit, agents


def host_table(records: Iterable[HostRecord], now: float) -> Table:
    return [
        {
            "host": h.host,
            "state": h.state.value,
            "for": duration(now - h.since),
            "monitors": h.monitors,
            "responders": h.responders,
            "last seen": "now" if now - h.last_seen < 1 else f"{duration(now - h.last_seen)} ago",
            "what it means": describe(h),
        }
        for h in records
    ]


def audit_table(records: Iterable[AuditRecord]) -> Table:
    return [
        {
            "time": stamp(r.at),
            "event": r.event,
            "outcome": r.outcome,
            "host": or_dash(r.host),
            "container": _target(r.container_name, r.container_id),
            "action": f"{r.action_type}:{r.action_id}",
            "actor": r.actor,
            "dry run": r.dry_run,
            "failed guards": or_dash(", ".join(g.guard for g in r.guards if not g.passed)),
            "reason": r.reason,
        }
        for r in records
    ]


def agent_table(beats: Iterable[Heartbeat], now: float) -> Table:
    rows = []
    for b in sorted(beats, key=lambda b: b.agent):
        consumer = b.details.get("consumer") or {}
        rows.append(
            {
                "agent": b.agent,
                "instance": b.instance,
                "host": b.host,
                "status": b.status.value,
                "heartbeat age s": round(now - b.beat_at.timestamp(), 1),
                "handled": consumer.get("handled", "-"),
                "failed": consumer.get("failed", "-"),
                "dry run": b.details.get("dry_run", "-"),
            }
        )
    return rows


def group_table(groups: Iterable[GroupRow]) -> Table:
    return [
        {
            "channel": g.channel,
            "group": g.group,
            "lag": g.lag,
            "pending": g.pending,
            "consumers": g.consumers,
        }
        for g in groups
    ]


def dead_letter_table(letters: Iterable[DeadLetterRow]) -> Table:
    return [
        {
            "time": stamp(d.at),
            "channel": d.channel,
            "group": d.group,
            "attempts": d.attempts,
            "error": d.error,
        }
        for d in letters
    ]

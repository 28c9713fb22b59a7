"""Everything the dashboard shows, read from Redis — a plain module, separate from the Streamlit
layout, so each number is unit-testable and traceable to Redis state.

Every function takes a (sync) Redis client and `now`; nothing is cached between reruns."""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.client import NEVER_DECODE
from redis.exceptions import ResponseError

from shared import audit, keys
from shared.approvals import INDEX as PROPOSALS_INDEX
from shared.approvals import PENDING, PROPOSAL_PREFIX, Proposal, ProposalState, decide
from shared.container_state import ContainerSnapshot, read_snapshots
from shared.errors import InvalidEventError
from shared.events import (
    Channel,
    Decision,
    Envelope,
    RemediationStatus,
    parse_event,
)
from shared.heartbeat import AgentStatus, Heartbeat, read_heartbeats
from shared.hosts import describe, read_hosts
from shared.redaction import Redactor
from shared.redis_client import connect
from shared.replication import Replication
from shared.settings import Settings

AGENTS = ("monitor", "analyzer", "responder", "alert", "metrics")
SCAN = 2000  # newest entries read per stream when searching a timeline or a feed


# Entries that are not valid events, per stream, among the newest read: the page shows a banner
# (the agents dead-letter them; the dashboard only must not fail on them).
MALFORMED: dict[str, int] = {}


def _stream_events(redis: Redis, channel: str, count: int = SCAN) -> list[Any]:
    """Parsed events, newest first (typed as Any: callers narrow by channel). Read as bytes and
    decoded entry by entry, so one entry that is not UTF-8 spoils nothing but itself."""
    out: list[Any] = []
    entries: Any = redis.execute_command(  # type: ignore[no-untyped-call]
        "XREVRANGE", channel, "+", "-", "COUNT", count, **{NEVER_DECODE: True}
    )
    bad = 0
    for _, fields in entries or []:
        raw = (
            dict(zip(fields[::2], fields[1::2], strict=False))
            if isinstance(fields, list)
            else fields
        )
        try:
            out.append(parse_event(raw.get(b"event")))
        except InvalidEventError:
            bad += 1
    if bad:
        MALFORMED[str(channel)] = bad
    else:
        MALFORMED.pop(str(channel), None)
    return out


def malformed() -> dict[str, int]:
    """Streams holding malformed entries (among the newest read), for a banner."""
    return dict(MALFORMED)


# ---------------------------------------------------------------- overview


@dataclass(frozen=True)
class Overview:
    monitored: int
    healthy: int
    unhealthy: int
    open_incidents: int
    remediations_hour: int
    remediations_day: int
    succeeded_day: int
    failed_day: int
    success_rate_day: float | None  # succeeded / (succeeded + failed); None without any
    dry_runs_day: int
    false_alarms_day: int
    pending_approvals: int
    agents_up: dict[str, int]


def overview(redis: Redis, now: float, snapshot_max_age_s: float = 300) -> Overview:
    snapshots = [s for s in read_snapshots(redis, now, snapshot_max_age_s) if s.monitored]
    unhealthy = sum(1 for s in snapshots if _is_unhealthy(s))
    completes = [
        e for e in _stream_events(redis, Channel.REMEDIATION_COMPLETE) if _age(e, now) <= 86_400
    ]
    executed = [e for e in completes if e.payload.status in _EXECUTED]
    hour = [e for e in executed if _age(e, now) <= 3600]
    statuses = Counter(e.payload.status for e in completes)
    done = statuses[RemediationStatus.SUCCEEDED] + statuses[RemediationStatus.FAILED]
    false_alarms = [e for e in _stream_events(redis, Channel.FALSE_ALARM) if _age(e, now) <= 86_400]
    agents_up = live_agents(redis)
    return Overview(
        monitored=len(snapshots),
        healthy=len(snapshots) - unhealthy,
        unhealthy=unhealthy,
        open_incidents=len(open_incident_ids(redis)),
        remediations_hour=len(hour),
        remediations_day=len(executed),
        succeeded_day=statuses[RemediationStatus.SUCCEEDED],
        failed_day=statuses[RemediationStatus.FAILED],
        success_rate_day=statuses[RemediationStatus.SUCCEEDED] / done if done else None,
        dry_runs_day=statuses[RemediationStatus.DRY_RUN],
        false_alarms_day=len(false_alarms),
        pending_approvals=int(redis.zcard(PENDING)),
        agents_up=agents_up,
    )


_EXECUTED = {RemediationStatus.SUCCEEDED, RemediationStatus.FAILED}


def _is_unhealthy(s: ContainerSnapshot) -> bool:
    return s.health == "unhealthy" or s.state not in ("running",) or bool(s.active_alerts)


def _age(event: Envelope, now: float) -> float:
    return now - event.emitted_at.timestamp()


def live_agents(redis: Redis) -> dict[str, int]:
    now = datetime.now(UTC)
    counts = dict.fromkeys(AGENTS, 0)
    for beat in read_heartbeats(redis):
        if beat.is_fresh(now) and beat.status is not AgentStatus.STOPPING:
            counts[beat.agent] = counts.get(beat.agent, 0) + 1
    return counts


# ---------------------------------------------------------------- containers


def containers(redis: Redis, now: float, max_age_s: float = 300) -> list[dict[str, Any]]:
    """Every container the Monitor sees (healthy ones included), for the grid."""
    last_incident = _last_incident_by_container(redis)
    rows = []
    for s in read_snapshots(redis, now, max_age_s):
        rows.append(
            {
                "host": s.host or "-",
                "name": s.name,
                "status": s.state,
                "health": s.health or "-",
                "cpu %": None if s.cpu_percent is None else round(s.cpu_percent, 1),
                "memory %": None if s.memory_percent is None else round(s.memory_percent, 1),
                "memory MiB": None
                if s.memory_working_set is None
                else round(s.memory_working_set / 2**20, 1),
                "restarts": s.restart_count,
                "open alerts": ", ".join(s.active_alerts) or "-",
                "last incident": last_incident.get(s.id, "-"),
                "service": s.compose_service or "-",
                "monitored": s.monitored,
                "id": s.id[:12],
            }
        )
    return sorted(rows, key=lambda r: (r["open alerts"] == "-", r["host"], r["name"]))


def _last_incident_by_container(redis: Redis) -> dict[str, str]:
    out: dict[str, str] = {}
    for incident in incidents(redis, limit=500):
        container = incident.get("container_id")
        if container and container not in out:
            out[container] = incident["id"]
    return out


def samples(
    redis: Redis, container_ids: list[str], points: int = 240
) -> dict[str, list[dict[str, float]]]:
    """Recent CPU/memory samples per container, oldest first, for the charts."""
    out: dict[str, list[dict[str, float]]] = {}
    for container_id in container_ids:
        entries: Any = redis.xrevrange(keys.SAMPLES + container_id, count=points)
        rows = []
        for _, fields in reversed(entries):
            row = {k: float(v) for k, v in fields.items() if k in ("t", "cpu", "mem")}
            if "t" in row:
                rows.append(row)
        out[container_id] = rows
    return out


# ---------------------------------------------------------------- incidents


def open_incident_ids(redis: Redis) -> list[str]:
    ids: Any = redis.zrevrange(keys.INCIDENTS, 0, 1000)
    pipe = redis.pipeline(transaction=False)
    for incident_id in ids:
        pipe.hget(keys.INCIDENT + incident_id, "status")
    return [i for i, status in zip(ids, pipe.execute(), strict=True) if status == "open"]


def incidents(redis: Redis, limit: int = 100) -> list[dict[str, Any]]:
    ids: Any = redis.zrevrange(keys.INCIDENTS, 0, limit - 1)
    pipe = redis.pipeline(transaction=False)
    for incident_id in ids:
        pipe.hgetall(keys.INCIDENT + incident_id)
    out = []
    for data in pipe.execute():
        if not data:
            continue  # expired
        subject = json.loads(data.get("subject") or "{}")
        out.append(
            {
                "id": data.get("id"),
                "status": data.get("status"),
                "host": subject.get("host") or "-",
                "container": subject.get("container_name")
                or (subject.get("container_id") or "")[:12],
                "container_id": subject.get("container_id"),
                "last kind": data.get("last_kind"),
                "alerts": int(data.get("alert_count") or 0),
                "decisions": int(data.get("decisions") or 0),
                "root cause": data.get("root_cause", ""),
                "method": data.get("analysis_method", ""),
                "last decision": data.get("last_decision", ""),
                "opened": _stamp(data.get("opened_at")),
                "updated": _stamp(data.get("updated_at")),
            }
        )
    return out


def _stamp(raw: str | None) -> str:
    if not raw:
        return "-"
    return datetime.fromtimestamp(float(raw), UTC).strftime("%Y-%m-%d %H:%M:%S")


STAGES = ("alert", "decision", "approval", "remediation", "escalation", "notification")


@dataclass(frozen=True)
class TimelineEntry:
    at: datetime
    stage: str  # alert | decision | approval | remediation | escalation | notification
    title: str
    detail: str = ""
    fields: dict[str, str] = field(default_factory=dict)


def incident_timeline(redis: Redis, incident_id: str) -> list[TimelineEntry]:
    """alert → decision (method, confidence, root cause) → remediation outcome → notifications."""
    decisions = [
        e
        for ch in (Channel.REMEDIATION_NEEDED, Channel.FALSE_ALARM)
        for e in _stream_events(redis, ch)
        if e.incident_id == incident_id
    ]
    alert_ids = {e.causation_id for e in decisions if e.causation_id}
    entries: list[TimelineEntry] = []
    for alert in _stream_events(redis, Channel.HEALTH_ALERT):
        if alert.id in alert_ids:
            p = alert.payload
            entries.append(
                TimelineEntry(
                    alert.occurred_at,
                    "alert",
                    f"{p.kind} ({p.status})",
                    p.summary,
                    {"severity": alert.severity.value, "detector": p.detector},
                )
            )
    related: set[str] = set()
    for d in decisions:
        p = d.payload
        a = p.analysis
        what = "false alarm" if d.type == "false_alarm" else f"{p.action.type} ({p.action.id})"
        if getattr(p, "needs_human", False):
            what += " — needs a human"
        entries.append(
            TimelineEntry(
                d.emitted_at,
                "decision",
                what,
                a.root_cause,
                {
                    "method": a.method.value + (f" ({a.model})" if a.model else ""),
                    "confidence": f"{a.confidence:.2f}",
                    "fallback": a.fallback_reason or "-",
                },
            )
        )
        related.add(d.id)
    for ch, stage in (
        (Channel.APPROVAL_REQUEST, "approval"),
        (Channel.REMEDIATION_COMPLETE, "remediation"),
        (Channel.ESCALATION, "escalation"),
    ):
        for e in _stream_events(redis, ch):
            if e.incident_id != incident_id:
                continue
            related.add(e.id)
            p = e.payload
            if stage == "remediation":
                title = f"{p.action_type} → {p.status}" + (f" ({p.guard})" if p.guard else "")
                entries.append(
                    TimelineEntry(
                        e.emitted_at,
                        stage,
                        title,
                        p.reason,
                        {"actor": p.actor, "dry run": str(p.dry_run)},
                    )
                )
            elif stage == "approval":
                entries.append(
                    TimelineEntry(
                        e.emitted_at,
                        stage,
                        f"proposal {p.proposal_id}",
                        p.evidence,
                        {"approve": p.approve_command},
                    )
                )
            else:
                entries.append(
                    TimelineEntry(e.emitted_at, stage, f"escalation: {p.guard}", p.reason)
                )
    notes: Any = redis.xrevrange(keys.NOTIFICATIONS, count=SCAN)
    for entry_id, fields in notes:
        if fields.get("event_id") in related:
            at = datetime.fromtimestamp(int(entry_id.split("-")[0]) / 1000, UTC)
            entries.append(
                TimelineEntry(
                    at,
                    "notification",
                    f"{fields.get('channel')}: {fields.get('status')}",
                    fields.get("detail", ""),
                )
            )
    # Stream times have millisecond resolution: within one millisecond, the pipeline's order.
    order = {s: i for i, s in enumerate(STAGES)}
    return sorted(entries, key=lambda e: (round(e.at.timestamp(), 3), order[e.stage]))


def event_feed(redis: Redis, limit: int = 50) -> list[dict[str, Any]]:
    """The newest events across every channel."""
    events: list[Any] = []
    for channel in Channel:
        events += _stream_events(redis, channel, count=limit)
    events.sort(key=lambda e: e.emitted_at, reverse=True)
    rows = []
    for e in events[:limit]:
        rows.append(
            {
                "time": e.emitted_at.strftime("%H:%M:%S"),
                "type": e.type,
                "severity": e.severity.value,
                "host": e.subject.host or "-",
                "container": e.subject.display,
                "summary": _summary(e),
                "incident": e.incident_id or "-",
            }
        )
    return rows


def _summary(e: Any) -> str:
    p = e.payload
    kind = e.type
    if kind == "health_alert":
        return f"{p.kind} {p.status}: {p.summary}"
    if kind == "remediation_needed":
        return f"{p.action.type} requested ({p.analysis.method}, {p.analysis.confidence:.2f})"
    if kind == "remediation_complete":
        return f"{p.action_type} {p.status}" + (f" ({p.guard})" if p.guard else "")
    if kind == "false_alarm":
        return f"false alarm: {p.reason}"
    if kind == "approval_request":
        return f"approval needed: {p.proposal_id}"
    if kind == "approval_decision":
        return f"{p.decision} by {p.actor}"
    return f"escalation: {p.reason}"


def outcomes_over_time(redis: Redis, now: float, hours: int = 24) -> list[dict[str, Any]]:
    """Remediation outcomes per hour, for a bar chart."""
    buckets: dict[str, Counter[str]] = defaultdict(Counter)
    for e in _stream_events(redis, Channel.REMEDIATION_COMPLETE):
        if _age(e, now) <= hours * 3600:
            hour = e.emitted_at.strftime("%m-%d %H:00")
            buckets[hour][e.payload.status.value] += 1
    return [{"hour": hour, **counts} for hour, counts in sorted(buckets.items())]


# ---------------------------------------------------------------- approvals


def proposals(redis: Redis, limit: int = 200) -> tuple[list[Proposal], list[Proposal]]:
    """(pending, decided) — newest first."""
    ids: Any = redis.zrevrange(PROPOSALS_INDEX, 0, limit - 1)
    pending: list[Proposal] = []
    decided: list[Proposal] = []
    for proposal_id in ids:
        data: Any = redis.hgetall(PROPOSAL_PREFIX + proposal_id)
        if not data:
            continue
        data.pop("ttl_s", None)
        proposal = Proposal.model_validate(data)
        (pending if proposal.state is ProposalState.PENDING else decided).append(proposal)
    return pending, decided


def submit_decision(
    settings: Settings, proposal_id: str, approve: bool, actor: str, reason: str = ""
) -> Proposal:
    """The CLI's mechanism: an atomic first-decision-wins CAS, then the decision event."""

    async def run() -> Proposal:
        redis = connect(settings)
        try:
            decision = Decision.APPROVED if approve else Decision.DENIED
            replication = Replication.from_settings(settings)
            return await decide(
                redis, proposal_id, decision, actor, reason, "dashboard", replication
            )
        finally:
            await redis.aclose()

    return asyncio.run(run())


# ---------------------------------------------------------------- hosts


def hosts(redis: Redis, now: float) -> list[dict[str, Any]]:
    """The fleet: every known host, whether it is watched and healed, and its edge agents."""
    return [
        {
            "host": h.host,
            "state": h.state.value,
            "for": _duration(now - h.since),
            "monitors": h.monitors,
            "responders": h.responders,
            "last seen": "now" if now - h.last_seen < 1 else f"{_duration(now - h.last_seen)} ago",
            "what it means": describe(h),
        }
        for h in read_hosts(redis)
    ]


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def filter_hosts(rows: list[dict[str, Any]], chosen: list[str]) -> list[dict[str, Any]]:
    """Rows on the chosen hosts (all rows when none is chosen)."""
    return [r for r in rows if not chosen or r.get("host") in chosen]


# ---------------------------------------------------------------- audit and agent health


def audit_log(
    redis: Redis,
    *,
    limit: int = 200,
    container: str | None = None,
    event: str | None = None,
    since: float | None = None,
) -> list[dict[str, Any]]:
    rows = []
    for r in audit.read(
        redis, limit=limit, container=container or None, event=event or None, since=since
    ):
        rows.append(
            {
                "time": datetime.fromtimestamp(r.at, UTC).strftime("%Y-%m-%d %H:%M:%S"),
                "event": r.event,
                "outcome": r.outcome,
                "host": r.host or "-",
                "container": r.container_name or (r.container_id or "")[:12],
                "action": f"{r.action_type}:{r.action_id}",
                "actor": r.actor,
                "dry run": r.dry_run,
                "failed guards": ", ".join(g.guard for g in r.guards if not g.passed) or "-",
                "reason": r.reason,
            }
        )
    return rows


def agent_health(
    redis: Redis,
) -> tuple[list[Heartbeat], list[dict[str, Any]], list[dict[str, Any]]]:
    """(heartbeats, consumer groups per channel, newest dead letters)."""
    beats = read_heartbeats(redis)
    groups = []
    for channel in Channel:
        try:
            info: Any = redis.xinfo_groups(channel)
        except ResponseError:
            continue  # the stream does not exist yet: no groups
        for g in info:
            groups.append(
                {
                    "channel": channel.value,
                    "group": g["name"],
                    "lag": g.get("lag") or 0,
                    "pending": g.get("pending") or 0,
                    "consumers": g.get("consumers") or 0,
                }
            )
    dead: Any = redis.xrevrange(keys.DEAD_LETTER, count=50)
    letters = [
        {
            "time": datetime.fromtimestamp(int(i.split("-")[0]) / 1000, UTC).strftime(
                "%Y-%m-%d %H:%M:%S"
            ),
            "channel": f.get("channel"),
            "group": f.get("group"),
            "attempts": f.get("attempts"),
            "error": f.get("error"),
        }
        for i, f in dead
    ]
    return beats, groups, letters


def safe(redactor: Redactor, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last pass before anything is rendered: no secret reaches the page."""
    return [redactor.data(row) for row in rows]

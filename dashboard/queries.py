"""Everything the dashboard shows, read from Redis — a plain module, separate from the Streamlit
layout, so each number is unit-testable and traceable to Redis state.

Every function takes a (sync) Redis client and returns typed rows (dashboard/rows.py) of raw
values; dashboard/views.py says how they read. Nothing is cached between reruns. Proposals are
read through shared/approvals.py, as the CLI reads them."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.client import NEVER_DECODE
from redis.exceptions import ResponseError

from dashboard.rows import (
    AgentHealth,
    ContainerRow,
    DeadLetterRow,
    GroupRow,
    IncidentRow,
    NotificationRow,
    OutcomeHour,
    Overview,
    Sample,
    Stage,
    TimelineEntry,
)
from shared import audit, keys
from shared.approvals import PENDING
from shared.audit import AuditRecord
from shared.container_state import ContainerSnapshot, read_snapshots
from shared.errors import InvalidEventError
from shared.events import Channel, Envelope, Event, RemediationStatus, parse_event
from shared.heartbeat import AgentStatus, read_heartbeats
from shared.hosts import HostRecord, read_hosts

__all__ = [
    "AGENTS",
    "SCAN",
    "agent_health",
    "audit_log",
    "containers",
    "event_feed",
    "hosts",
    "incident_timeline",
    "incidents",
    "live_agents",
    "malformed",
    "open_incident_ids",
    "outcomes_over_time",
    "overview",
    "responder_dry_run",
    "samples",
]

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


def responder_dry_run(redis: Redis) -> bool:
    """Whether a Responder says it runs in dry-run mode (its heartbeat's details)."""
    beats = [b for b in read_heartbeats(redis) if b.agent == "responder"]
    return any(b.details.get("dry_run") for b in beats)


def outcomes_over_time(redis: Redis, now: float, hours: int = 24) -> list[OutcomeHour]:
    """Remediation outcomes per hour, oldest first, for a bar chart."""
    buckets: dict[datetime, Counter[RemediationStatus]] = defaultdict(Counter)
    for e in _stream_events(redis, Channel.REMEDIATION_COMPLETE):
        if _age(e, now) <= hours * 3600:
            hour = e.emitted_at.replace(minute=0, second=0, microsecond=0)
            buckets[hour][e.payload.status] += 1
    return [OutcomeHour(hour, dict(counts)) for hour, counts in sorted(buckets.items())]


# ---------------------------------------------------------------- containers


def containers(redis: Redis, now: float, max_age_s: float = 300) -> list[ContainerRow]:
    """Every container the Monitor sees (healthy ones included), alerting ones first."""
    last_incident = _last_incident_by_container(redis)
    rows = [
        ContainerRow(
            container_id=s.id,
            name=s.name,
            host=s.host,
            state=s.state,
            health=s.health or "",
            cpu_percent=s.cpu_percent,
            memory_percent=s.memory_percent,
            memory_bytes=s.memory_working_set,
            restarts=s.restart_count,
            open_alerts=tuple(s.active_alerts),
            last_incident=last_incident.get(s.id, ""),
            service=s.compose_service or "",
            monitored=s.monitored,
        )
        for s in read_snapshots(redis, now, max_age_s)
    ]
    # A host-less container sorts as the grid shows it ("-").
    return sorted(rows, key=lambda r: (not r.open_alerts, r.host or "-", r.name))


def _last_incident_by_container(redis: Redis) -> dict[str, str]:
    out: dict[str, str] = {}
    for incident in incidents(redis, limit=500):
        if incident.container_id and incident.container_id not in out:
            out[incident.container_id] = incident.id
    return out


def samples(redis: Redis, container_ids: list[str], points: int = 240) -> dict[str, list[Sample]]:
    """Recent CPU/memory samples per container, oldest first, for the charts."""
    out: dict[str, list[Sample]] = {}
    for container_id in container_ids:
        entries: Any = redis.xrevrange(keys.SAMPLES + container_id, count=points)
        rows = []
        for _, fields in reversed(entries):
            if "t" in fields:
                rows.append(
                    Sample(
                        t=float(fields["t"]),
                        cpu=float(fields["cpu"]) if "cpu" in fields else None,
                        mem=float(fields["mem"]) if "mem" in fields else None,
                    )
                )
        out[container_id] = rows
    return out


# ---------------------------------------------------------------- incidents


def open_incident_ids(redis: Redis) -> list[str]:
    ids: Any = redis.zrevrange(keys.INCIDENTS, 0, 1000)
    pipe = redis.pipeline(transaction=False)
    for incident_id in ids:
        pipe.hget(keys.INCIDENT + incident_id, "status")
    return [i for i, status in zip(ids, pipe.execute(), strict=True) if status == "open"]


def incidents(redis: Redis, limit: int = 100) -> list[IncidentRow]:
    """The newest incidents, newest first."""
    ids: Any = redis.zrevrange(keys.INCIDENTS, 0, limit - 1)
    pipe = redis.pipeline(transaction=False)
    for incident_id in ids:
        pipe.hgetall(keys.INCIDENT + incident_id)
    return [_incident_row(data) for data in pipe.execute() if data]  # empty: expired


def _incident_row(data: dict[str, str]) -> IncidentRow:
    subject = json.loads(data.get("subject") or "{}")
    return IncidentRow(
        id=data.get("id", ""),
        status=data.get("status", ""),
        host=subject.get("host") or "",
        container_id=subject.get("container_id") or "",
        container_name=subject.get("container_name") or "",
        last_kind=data.get("last_kind", ""),
        alerts=int(data.get("alert_count") or 0),
        decisions=int(data.get("decisions") or 0),
        root_cause=data.get("root_cause", ""),
        method=data.get("analysis_method", ""),
        last_decision=data.get("last_decision", ""),
        opened_at=_seconds(data.get("opened_at")),
        updated_at=_seconds(data.get("updated_at")),
    )


def _seconds(raw: str | None) -> float | None:
    return float(raw) if raw else None


def incident_timeline(redis: Redis, incident_id: str) -> list[TimelineEntry]:
    """alert → decision (method, confidence, root cause) → remediation outcome → notifications."""
    decisions = [
        e
        for ch in (Channel.REMEDIATION_NEEDED, Channel.FALSE_ALARM)
        for e in _stream_events(redis, ch)
        if e.incident_id == incident_id
    ]
    alert_ids = {e.causation_id for e in decisions if e.causation_id}
    entries = [
        TimelineEntry(alert.occurred_at, Stage.ALERT, alert)
        for alert in _stream_events(redis, Channel.HEALTH_ALERT)
        if alert.id in alert_ids
    ]
    entries += [TimelineEntry(d.emitted_at, Stage.DECISION, d) for d in decisions]
    related = {d.id for d in decisions}
    for ch, stage in (
        (Channel.APPROVAL_REQUEST, Stage.APPROVAL),
        (Channel.REMEDIATION_COMPLETE, Stage.REMEDIATION),
        (Channel.ESCALATION, Stage.ESCALATION),
    ):
        for e in _stream_events(redis, ch):
            if e.incident_id == incident_id:
                related.add(e.id)
                entries.append(TimelineEntry(e.emitted_at, stage, e))
    notes: Any = redis.xrevrange(keys.NOTIFICATIONS, count=SCAN)
    for entry_id, fields in notes:
        if fields.get("event_id") in related:
            at = datetime.fromtimestamp(int(entry_id.split("-")[0]) / 1000, UTC)
            note = NotificationRow(
                channel=fields.get("channel", ""),
                status=fields.get("status", ""),
                detail=fields.get("detail", ""),
            )
            entries.append(TimelineEntry(at, Stage.NOTIFICATION, note))
    # Stream times have millisecond resolution: within one millisecond, the pipeline's order.
    order = {s: i for i, s in enumerate(Stage)}
    return sorted(entries, key=lambda e: (round(e.at.timestamp(), 3), order[e.stage]))


def event_feed(redis: Redis, limit: int = 50) -> list[Event]:
    """The newest events across every channel, newest first."""
    events: list[Any] = []
    for channel in Channel:
        events += _stream_events(redis, channel, count=limit)
    events.sort(key=lambda e: e.emitted_at, reverse=True)
    return events[:limit]


# ---------------------------------------------------------------- hosts, audit, agent health


def hosts(redis: Redis) -> list[HostRecord]:
    """The fleet: every known host, whether it is watched and healed, and its edge agents."""
    return read_hosts(redis)


def audit_log(
    redis: Redis,
    *,
    limit: int = 200,
    container: str | None = None,
    event: str | None = None,
    since: float | None = None,
) -> list[AuditRecord]:
    return audit.read(
        redis, limit=limit, container=container or None, event=event or None, since=since
    )


def agent_health(redis: Redis) -> AgentHealth:
    """Heartbeats, consumer groups per channel, and the newest dead letters."""
    groups = []
    for channel in Channel:
        try:
            info: Any = redis.xinfo_groups(channel)
        except ResponseError:
            continue  # the stream does not exist yet: no groups
        for g in info:
            groups.append(
                GroupRow(
                    channel=channel.value,
                    group=g["name"],
                    lag=g.get("lag") or 0,
                    pending=g.get("pending") or 0,
                    consumers=g.get("consumers") or 0,
                )
            )
    dead: Any = redis.xrevrange(keys.DEAD_LETTER, count=50)
    letters = [
        DeadLetterRow(
            at=int(i.split("-")[0]) / 1000,
            channel=f.get("channel"),
            group=f.get("group"),
            attempts=f.get("attempts"),
            error=f.get("error"),
        )
        for i, f in dead
    ]
    return AgentHealth(read_heartbeats(redis), groups, letters)

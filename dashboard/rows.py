"""What the dashboard's queries return: typed rows of raw values (numbers, epoch seconds, enums,
the agents' own models), never display text — dashboard/views.py turns them into what is shown.

Where a shared model already is the row it is used as is: an event (`shared.events.Event`) in
the feed, a `HostRecord`, an `AuditRecord`, a `Heartbeat`, a `Proposal`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from shared.events import (
    ApprovalRequestEvent,
    EscalationEvent,
    FalseAlarmEvent,
    HealthAlertEvent,
    RemediationCompleteEvent,
    RemediationNeededEvent,
    RemediationStatus,
)
from shared.heartbeat import Heartbeat

__all__ = [
    "AgentHealth",
    "ContainerRow",
    "DeadLetterRow",
    "GroupRow",
    "IncidentRow",
    "NotificationRow",
    "OutcomeHour",
    "Overview",
    "Sample",
    "Stage",
    "TimelineEntry",
]


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


@dataclass(frozen=True)
class ContainerRow:
    """One container of the grid, healthy ones included. Empty strings are unknown values."""

    container_id: str
    name: str
    host: str
    state: str
    health: str
    cpu_percent: float | None
    memory_percent: float | None
    memory_bytes: int | None  # the working set
    restarts: int
    open_alerts: tuple[str, ...]
    last_incident: str  # the newest incident of this container ("" when none)
    service: str
    monitored: bool


@dataclass(frozen=True)
class Sample:
    """One CPU/memory sample of a container (percentages; None when not measured)."""

    t: float
    cpu: float | None
    mem: float | None


@dataclass(frozen=True)
class OutcomeHour:
    """Remediation outcomes in one hour (UTC, on the hour)."""

    hour: datetime
    counts: Mapping[RemediationStatus, int]


@dataclass(frozen=True)
class IncidentRow:
    id: str
    status: str
    host: str
    container_id: str
    container_name: str
    last_kind: str
    alerts: int
    decisions: int
    root_cause: str
    method: str
    last_decision: str
    opened_at: float | None
    updated_at: float | None


class Stage(StrEnum):
    """The steps of an incident's story, in the pipeline's order."""

    ALERT = "alert"
    DECISION = "decision"
    APPROVAL = "approval"
    REMEDIATION = "remediation"
    ESCALATION = "escalation"
    NOTIFICATION = "notification"


@dataclass(frozen=True)
class NotificationRow:
    """One delivery the Alert agent recorded."""

    channel: str
    status: str
    detail: str


@dataclass(frozen=True)
class TimelineEntry:
    at: datetime
    stage: Stage
    what: (
        HealthAlertEvent
        | RemediationNeededEvent
        | FalseAlarmEvent
        | ApprovalRequestEvent
        | RemediationCompleteEvent
        | EscalationEvent
        | NotificationRow
    )


@dataclass(frozen=True)
class GroupRow:
    channel: str
    group: str
    lag: int
    pending: int
    consumers: int


@dataclass(frozen=True)
class DeadLetterRow:
    """A dead letter's fields as the bus wrote them (text: shown as found)."""

    at: float
    channel: str | None
    group: str | None
    attempts: str | None
    error: str | None


@dataclass(frozen=True)
class AgentHealth:
    beats: list[Heartbeat] = field(default_factory=list)
    groups: list[GroupRow] = field(default_factory=list)
    dead_letters: list[DeadLetterRow] = field(default_factory=list)

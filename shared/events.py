"""The event contract: channels, the envelope, and one typed payload per event type.

Every agent imports these models to produce and to consume, so a producer cannot emit what its
consumer would refuse. On the wire an event is the envelope's JSON; the envelope's `type` is the
discriminator that selects the payload model.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from functools import cache
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import AwareDatetime, Field, TypeAdapter, ValidationError

from shared import keys
from shared.actions import Action, ActionType
from shared.errors import InvalidEventError
from shared.ids import new_id
from shared.model import Model, describe_validation_error

__all__ = [
    "EVENT_CLASSES",
    "SCHEMA_VERSION",
    "AlertKind",
    "AlertStatus",
    "Analysis",
    "AnalysisMethod",
    "ApprovalDecision",
    "ApprovalDecisionEvent",
    "ApprovalRequest",
    "ApprovalRequestEvent",
    "Channel",
    "Decision",
    "Detector",
    "Envelope",
    "Escalation",
    "EscalationEvent",
    "Event",
    "EventType",
    "FalseAlarm",
    "FalseAlarmEvent",
    "HealthAlert",
    "HealthAlertEvent",
    "IncidentResolved",
    "IncidentResolvedEvent",
    "RemediationComplete",
    "RemediationCompleteEvent",
    "RemediationNeeded",
    "RemediationNeededEvent",
    "RemediationStatus",
    "Severity",
    "Source",
    "Subject",
    "dump_payload",
    "encode_event",
    "make_event",
    "parse_event",
]

SCHEMA_VERSION: Literal[1] = 1


class Channel(StrEnum):
    """The Redis stream of each event type (the names live in shared/keys.py)."""

    HEALTH_ALERT = keys.HEALTH_ALERT
    REMEDIATION_NEEDED = keys.REMEDIATION_NEEDED
    REMEDIATION_COMPLETE = keys.REMEDIATION_COMPLETE
    FALSE_ALARM = keys.FALSE_ALARM
    APPROVAL_REQUEST = keys.APPROVAL_REQUEST
    APPROVAL_DECISION = keys.APPROVAL_DECISION
    ESCALATION = keys.ESCALATION
    INCIDENT_RESOLVED = keys.INCIDENT_RESOLVED


class EventType(StrEnum):
    HEALTH_ALERT = "health_alert"
    REMEDIATION_NEEDED = "remediation_needed"
    REMEDIATION_COMPLETE = "remediation_complete"
    FALSE_ALARM = "false_alarm"
    APPROVAL_REQUEST = "approval_request"
    APPROVAL_DECISION = "approval_decision"
    ESCALATION = "escalation"
    INCIDENT_RESOLVED = "incident_resolved"

    @property
    def channel(self) -> Channel:
        return Channel(keys.CHANNEL_PREFIX + self.value)


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}


class AlertKind(StrEnum):
    CRASH = "crash"  # died with a non-zero exit code
    OOM_KILLED = "oom_killed"
    UNHEALTHY = "unhealthy"  # HEALTHCHECK reports unhealthy
    RESTART_LOOP = "restart_loop"  # repeated die/start within a window
    HIGH_CPU = "high_cpu"
    HIGH_MEMORY = "high_memory"
    ANOMALY = "anomaly"  # unusual against the container's own baseline
    EXTERNAL = "external"  # an Alertmanager alert
    REMOVED = "removed"  # (status resolved) the container was removed: its incident closes


class AlertStatus(StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"  # a resolution can never trigger remediation


class Detector(StrEnum):
    DOCKER_EVENTS = "docker_events"
    STATS = "stats"
    ALERTMANAGER = "alertmanager"


class AnalysisMethod(StrEnum):
    RULES = "rules"
    LLM = "llm"


class RemediationStatus(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"  # a guard or the action policy refused; `guard` says which
    DRY_RUN = "dry_run"
    PENDING_APPROVAL = "pending_approval"
    EXPIRED = "expired"
    DENIED = "denied"
    NOTIFIED = "notified"  # notify-only request: nothing to execute, a human is told
    SUPPRESSED = "suppressed"  # not proposed again: people already answered (fatigue rules)
    CANCELLED = "cancelled"  # a pending proposal withdrawn: the incident resolved by itself
    BLOCKED = "blocked"  # an approved proposal not run: what was approved changed since


class Source(Model):
    agent: str
    instance: str
    version: str


class Subject(Model):
    host: str
    container_id: str | None = None
    container_name: str | None = None
    service: str | None = None
    project: str | None = None

    @property
    def display(self) -> str:
        return self.container_name or (self.container_id or "")[:12] or self.host


# ---------------------------------------------------------------- payloads


class HealthAlert(Model):
    kind: AlertKind
    status: AlertStatus = AlertStatus.FIRING
    detector: Detector
    summary: str
    metrics: dict[str, float] = {}
    thresholds: dict[str, float] = {}
    exit_code: int | None = None
    oom_killed: bool | None = None
    restart_count: int | None = None
    uncertain: bool = Field(
        default=False,
        description="the Monitor could not see how it died (it was not listening and the "
        "daemon no longer has the events): people are told, nothing is restarted",
    )
    health_status: str | None = None
    image: str | None = None
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    log_tail: list[str] = Field(default=[], description="redacted before publishing")
    alertname: str | None = None
    fingerprint: str | None = None
    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime | None = None


class Analysis(Model):
    method: AnalysisMethod
    confidence: float = Field(ge=0.0, le=1.0)
    root_cause: str
    explanation: str = ""
    model: str | None = None
    fallback_reason: str | None = Field(
        default=None, description="why the rules decided although an LLM is configured"
    )
    prompt_hash: str | None = Field(default=None, description="sha256 of the prompt inputs")
    latency_ms: float = Field(default=0.0, ge=0)
    decided_by: AnalysisMethod | None = Field(
        default=None,
        description="who chose the action (or the false alarm): the rules, or the LLM among "
        "the runbook's actions; `method` says who wrote the explanation",
    )
    overruled: str | None = Field(
        default=None, description="what the LLM asked for that the rules did not let through"
    )


class RemediationNeeded(Model):
    alert_kind: AlertKind
    alert_occurred_at: AwareDatetime
    alert_detected_at: AwareDatetime | None = Field(
        default=None,
        description="when the Monitor detected the failure (the alert's emitted_at); the "
        "Responder measures a request's age from it, never from when the decision was made",
    )
    runbook_id: str
    runbook_version: int
    action: Action
    analysis: Analysis
    needs_human: bool = Field(default=False, description="notify, do not act")
    reason: str


class RemediationComplete(Model):
    request_id: str
    alert_kind: AlertKind
    alert_occurred_at: AwareDatetime
    runbook_id: str
    action_id: str
    action_type: ActionType
    status: RemediationStatus
    guard: str | None = None
    reason: str = ""
    dry_run: bool
    actor: str
    proposal_id: str | None = None
    duration_ms: float | None = Field(default=None, ge=0)
    verified: bool | None = None
    output: str | None = Field(default=None, max_length=8000)
    analysis: Analysis | None = None


class FalseAlarm(Model):
    alert_kind: AlertKind
    alert_occurred_at: AwareDatetime
    runbook_id: str | None = None
    reason: str
    analysis: Analysis


class ApprovalRequest(Model):
    proposal_id: str
    request_id: str
    runbook_id: str
    action: Action
    alert_kind: AlertKind
    expires_at: AwareDatetime
    analysis: Analysis
    evidence: str = ""
    approve_command: str
    deny_command: str


class Decision(StrEnum):
    APPROVED = "approved"
    DENIED = "denied"


class ApprovalDecision(Model):
    proposal_id: str
    decision: Decision
    actor: str
    reason: str = ""


class Escalation(Model):
    reason: str
    guard: str | None = None
    action_type: ActionType | None = None
    request_id: str | None = None
    details: dict[str, str] = {}


class IncidentResolved(Model):
    """Everything that fired for the incident stopped by itself (no action of ours ended it)."""

    reason: str
    kinds: list[AlertKind] = []


# ---------------------------------------------------------------- envelope


class Envelope(Model):
    schema_version: Literal[1] = SCHEMA_VERSION
    id: str = Field(default_factory=new_id, min_length=1)
    source: Source
    occurred_at: AwareDatetime
    emitted_at: AwareDatetime
    incident_id: str | None = None
    causation_id: str | None = None
    idempotency_key: str = Field(min_length=1)
    subject: Subject
    severity: Severity

    @property
    def channel(self) -> Channel:
        return EventType(getattr(self, "type")).channel  # noqa: B009 - set by every subclass


class HealthAlertEvent(Envelope):
    type: Literal["health_alert"] = "health_alert"
    payload: HealthAlert


class RemediationNeededEvent(Envelope):
    type: Literal["remediation_needed"] = "remediation_needed"
    payload: RemediationNeeded


class RemediationCompleteEvent(Envelope):
    type: Literal["remediation_complete"] = "remediation_complete"
    payload: RemediationComplete


class FalseAlarmEvent(Envelope):
    type: Literal["false_alarm"] = "false_alarm"
    payload: FalseAlarm


class ApprovalRequestEvent(Envelope):
    type: Literal["approval_request"] = "approval_request"
    payload: ApprovalRequest


class ApprovalDecisionEvent(Envelope):
    type: Literal["approval_decision"] = "approval_decision"
    payload: ApprovalDecision


class EscalationEvent(Envelope):
    type: Literal["escalation"] = "escalation"
    payload: Escalation


class IncidentResolvedEvent(Envelope):
    type: Literal["incident_resolved"] = "incident_resolved"
    payload: IncidentResolved


Event = Annotated[
    HealthAlertEvent
    | RemediationNeededEvent
    | RemediationCompleteEvent
    | FalseAlarmEvent
    | ApprovalRequestEvent
    | ApprovalDecisionEvent
    | EscalationEvent
    | IncidentResolvedEvent,
    Field(discriminator="type"),
]
# Derived from the union, so a new event type is declared once there (and in EventType).
EVENT_CLASSES: dict[EventType, type[Envelope]] = {
    EventType(cls.model_fields["type"].default): cls for cls in get_args(get_args(Event)[0])
}

E = TypeVar("E", bound=Envelope)


@cache
def _adapter() -> TypeAdapter[Event]:
    return TypeAdapter(Event)


def parse_event(raw: str | bytes | None, channel: str | None = None) -> Event:
    """Decode and validate one event; raise InvalidEventError saying exactly what was wrong.

    With `channel`, an event whose type belongs to another channel is refused too.
    """
    if raw is None:
        raise InvalidEventError("message has no 'event' field")
    if isinstance(raw, bytes):
        # Checked here, not left to the JSON parser, whose message would blame the JSON syntax.
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidEventError(f"not valid UTF-8: {exc}") from exc
    try:
        event = _adapter().validate_json(raw)
    except ValidationError as exc:
        if exc.errors() and exc.errors()[0]["type"] == "json_invalid":
            raise InvalidEventError(f"malformed JSON: {exc.errors()[0]['msg']}") from exc
        raise InvalidEventError(f"invalid event: {describe_validation_error(exc)}") from exc
    if channel is not None and event.channel != channel:
        raise InvalidEventError(f"event type {event.type!r} does not belong on channel {channel!r}")
    return event


def encode_event(event: Envelope) -> str:
    return event.model_dump_json()


def make_event(
    cls: type[E],
    *,
    source: Source,
    subject: Subject,
    severity: Severity,
    payload: Model,
    occurred_at: datetime,
    emitted_at: datetime,
    incident_id: str | None = None,
    causation_id: str | None = None,
    idempotency_key: str | None = None,
) -> E:
    event_id = new_id()
    fields: dict[str, Any] = {
        "id": event_id,
        "source": source,
        "subject": subject,
        "severity": severity,
        "payload": payload,
        "occurred_at": occurred_at,
        "emitted_at": emitted_at,
        "incident_id": incident_id,
        "causation_id": causation_id,
        "idempotency_key": idempotency_key or event_id,
    }
    return cls(**fields)


def dump_payload(event: Envelope) -> dict[str, Any]:
    return event.model_dump(mode="json")

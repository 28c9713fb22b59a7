"""Valid events of every type, built with the same models the agents use."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from shared.actions import RestartAction
from shared.events import (
    AlertKind,
    Analysis,
    AnalysisMethod,
    ApprovalRequest,
    ApprovalRequestEvent,
    Detector,
    Envelope,
    Escalation,
    EscalationEvent,
    FalseAlarm,
    FalseAlarmEvent,
    HealthAlert,
    HealthAlertEvent,
    IncidentResolved,
    IncidentResolvedEvent,
    RemediationComplete,
    RemediationCompleteEvent,
    RemediationNeeded,
    RemediationNeededEvent,
    RemediationStatus,
    Severity,
    Source,
    Subject,
    make_event,
)

SOURCE = Source(agent="test", instance="test-1", version="0")


def now() -> datetime:
    return datetime.now(UTC)


def subject(container: str = "c1", **extra: Any) -> Subject:
    return Subject(
        host="test-host", container_id=container, container_name=f"name-{container}", **extra
    )


def health_alert(
    container: str = "c1",
    kind: AlertKind = AlertKind.CRASH,
    idempotency_key: str | None = None,
    **payload: Any,
) -> HealthAlertEvent:
    fields: dict[str, Any] = {"kind": kind, "detector": Detector.DOCKER_EVENTS, "summary": "test"}
    fields |= payload
    t = now()
    return make_event(
        HealthAlertEvent,
        source=SOURCE,
        subject=subject(container),
        severity=Severity.CRITICAL,
        payload=HealthAlert(**fields),
        occurred_at=t,
        emitted_at=t,
        idempotency_key=idempotency_key,
    )


def analysis() -> Analysis:
    return Analysis(method=AnalysisMethod.RULES, confidence=0.9, root_cause="exited 1")


def remediation_needed(container: str = "c1") -> RemediationNeededEvent:
    t = now()
    return make_event(
        RemediationNeededEvent,
        source=SOURCE,
        subject=subject(container),
        severity=Severity.CRITICAL,
        payload=RemediationNeeded(
            alert_kind=AlertKind.CRASH,
            alert_occurred_at=t,
            runbook_id="crash",
            runbook_version=1,
            action=RestartAction(id="restart"),
            analysis=analysis(),
            reason="crashed",
        ),
        occurred_at=t,
        emitted_at=t,
    )


def every_event_type() -> list[Envelope]:
    t = now()
    common: dict[str, Any] = {
        "source": SOURCE,
        "subject": subject(),
        "severity": Severity.WARNING,
        "occurred_at": t,
        "emitted_at": t,
    }
    return [
        health_alert(),
        remediation_needed(),
        make_event(
            RemediationCompleteEvent,
            payload=RemediationComplete(
                request_id="r1",
                alert_kind=AlertKind.CRASH,
                alert_occurred_at=t,
                runbook_id="crash",
                action_id="restart",
                action_type="restart",
                status=RemediationStatus.SUCCEEDED,
                dry_run=False,
                actor="responder",
            ),
            **common,
        ),
        make_event(
            FalseAlarmEvent,
            payload=FalseAlarm(
                alert_kind=AlertKind.HIGH_CPU,
                alert_occurred_at=t,
                reason="spike",
                analysis=analysis(),
            ),
            **common,
        ),
        make_event(
            ApprovalRequestEvent,
            payload=ApprovalRequest(
                proposal_id="p1",
                request_id="r1",
                runbook_id="crash",
                action=RestartAction(id="restart"),
                alert_kind=AlertKind.CRASH,
                expires_at=t,
                analysis=analysis(),
                approve_command="hemostat approve p1",
                deny_command="hemostat deny p1 --reason ...",
            ),
            **common,
        ),
        make_event(EscalationEvent, payload=Escalation(reason="circuit open"), **common),
        make_event(
            IncidentResolvedEvent,
            payload=IncidentResolved(reason="healthy again", kinds=[AlertKind.UNHEALTHY]),
            **common,
        ),
    ]


def remediation_complete(
    container: str = "c1",
    status: RemediationStatus = RemediationStatus.SUCCEEDED,
    severity: Severity = Severity.INFO,
    **payload: Any,
) -> RemediationCompleteEvent:
    t = now()
    fields: dict[str, Any] = {
        "request_id": "req-1",
        "alert_kind": AlertKind.CRASH,
        "alert_occurred_at": t,
        "runbook_id": "crash-nonzero-exit",
        "action_id": "restart",
        "action_type": "restart",
        "status": status,
        "dry_run": False,
        "actor": "responder:test",
        "analysis": analysis(),
    } | payload
    return make_event(
        RemediationCompleteEvent,
        source=SOURCE,
        subject=subject(container),
        severity=severity,
        payload=RemediationComplete(**fields),
        occurred_at=t,
        emitted_at=t,
        incident_id="inc-1",
    )


def approval_request(container: str = "c1", proposal_id: str = "p-abc") -> ApprovalRequestEvent:
    t = now()
    return make_event(
        ApprovalRequestEvent,
        source=SOURCE,
        subject=subject(container),
        severity=Severity.WARNING,
        payload=ApprovalRequest(
            proposal_id=proposal_id,
            request_id="req-1",
            runbook_id="high-memory",
            action=RestartAction(id="restart"),
            alert_kind=AlertKind.HIGH_MEMORY,
            expires_at=t,
            analysis=analysis(),
            evidence="runbook high-memory requires approval for restart",
            approve_command=f"hemostat approve {proposal_id}",
            deny_command=f'hemostat deny {proposal_id} --reason "..."',
        ),
        occurred_at=t,
        emitted_at=t,
        incident_id="inc-2",
    )


def escalation(container: str = "c1", guard: str = "circuit_breaker") -> EscalationEvent:
    t = now()
    return make_event(
        EscalationEvent,
        source=SOURCE,
        subject=subject(container),
        severity=Severity.CRITICAL,
        payload=Escalation(reason=f"{guard} open", guard=guard, details={"runbook": "crash"}),
        occurred_at=t,
        emitted_at=t,
    )


def false_alarm(container: str = "c1") -> FalseAlarmEvent:
    t = now()
    return make_event(
        FalseAlarmEvent,
        source=SOURCE,
        subject=subject(container),
        severity=Severity.INFO,
        payload=FalseAlarm(
            alert_kind=AlertKind.ANOMALY,
            alert_occurred_at=t,
            reason="transient",
            analysis=analysis(),
        ),
        occurred_at=t,
        emitted_at=t,
    )

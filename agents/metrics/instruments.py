"""Pipeline metrics fed by events: counters and latency histograms on an explicit registry.
Labels are bounded sets only (kinds, statuses, guards, channels, actions, runbooks) — never ids."""

from __future__ import annotations

from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram

from shared.actions import ActionType
from shared.events import (
    ApprovalDecisionEvent,
    ApprovalRequestEvent,
    Channel,
    Envelope,
    EscalationEvent,
    FalseAlarmEvent,
    HealthAlertEvent,
    RemediationCompleteEvent,
    RemediationNeededEvent,
    RemediationStatus,
)
from shared.ids import id_time_ms

__all__ = ["EXECUTED", "FAST", "GUARDS", "SLOW", "PipelineMetrics"]

GUARDS = (
    "stale",
    "action_policy",
    "target_policy",
    "lease",
    "cooldown",
    "circuit_breaker",
    "crash_loop",
)
FAST = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
SLOW = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
EXECUTED = {RemediationStatus.SUCCEEDED, RemediationStatus.FAILED}


def _seconds(later: datetime, earlier: datetime) -> float:
    return max(0.0, (later - earlier).total_seconds())


def _since_id(event: Envelope, other_id: str | None) -> float | None:
    """Time from the creation of the event `other_id` (ULIDs carry it) to `event`'s emission."""
    if not other_id:
        return None
    try:
        return max(0.0, event.emitted_at.timestamp() - id_time_ms(other_id) / 1000)
    except ValueError:
        return None


class PipelineMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str, labels: list[str]) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        self.events = counter(
            "hemostat_events_consumed_total", "Events read by the exporter.", ["channel"]
        )
        self.health_alerts = counter(
            "hemostat_health_alerts_total",
            "Health alerts.",
            ["host", "kind", "severity", "status", "detector"],
        )
        self.decisions = counter(
            "hemostat_decisions_total", "Analyzer decisions.", ["method", "outcome", "runbook"]
        )
        self.llm_fallbacks = counter(
            "hemostat_llm_fallbacks_total",
            "Decisions where the rules stood in for the LLM.",
            ["reason"],
        )
        self.false_alarms = counter("hemostat_false_alarms_total", "False alarms.", ["kind"])
        self.remediations = counter(
            "hemostat_remediations_total", "Remediation outcomes.", ["host", "action", "status"]
        )
        self.guard_rejections = counter(
            "hemostat_guard_rejections_total", "Requests a guard refused.", ["host", "guard"]
        )
        self.approvals = counter("hemostat_approvals_total", "Approval transitions.", ["state"])
        self.escalations = counter(
            "hemostat_escalations_total", "Escalations to people.", ["host", "guard"]
        )
        self.notifications = counter(
            "hemostat_notifications_total", "Notification deliveries.", ["channel", "status"]
        )
        self.dead_letters = counter(
            "hemostat_dead_letters_total", "Messages moved to the dead-letter stream.", ["channel"]
        )
        self.detection = Histogram(
            "hemostat_detection_latency_seconds",
            "From the failure's own timestamp to the health alert.",
            ["detector"],
            buckets=FAST,
            registry=registry,
        )
        self.analysis = Histogram(
            "hemostat_analysis_latency_seconds",
            "From the health alert to the Analyzer's decision.",
            ["method"],
            buckets=FAST,
            registry=registry,
        )
        self.remediation = Histogram(
            "hemostat_remediation_latency_seconds",
            "From the remediation request to its outcome.",
            ["action"],
            buckets=SLOW,
            registry=registry,
        )
        self.end_to_end = Histogram(
            "hemostat_end_to_end_latency_seconds",
            "From the failure being observed to an executed remediation's outcome.",
            ["action"],
            buckets=SLOW,
            registry=registry,
        )
        self.notification = Histogram(
            "hemostat_notification_latency_seconds",
            "Time to deliver one notification (retries included).",
            ["channel"],
            buckets=FAST,
            registry=registry,
        )

    def initialise(self, host: str) -> None:
        """Create the known label sets at 0 (for this host; other hosts' series appear with
        their first event), so the first increase after a start is visible to
        `increase()`/`rate()` (a series that appears at 1 shows no increase)."""
        for channel in Channel:
            self.dead_letters.labels(channel.value)
            self.events.labels(channel.value)
        for guard in GUARDS:
            self.guard_rejections.labels(host, guard)
        for guard in ("circuit_breaker", "crash_loop"):
            self.escalations.labels(host, guard)
        for state in ("requested", "approved", "denied", "expired", "succeeded", "failed"):
            self.approvals.labels(state)
        for action in ActionType:
            for status in RemediationStatus:
                self.remediations.labels(host, action.value, status.value)
        for channel_name in ("slack", "discord", "ntfy", "apprise"):
            for delivery in ("sent", "failed", "skipped"):
                self.notifications.labels(channel_name, delivery)

    def observe(self, event: Envelope) -> None:
        self.events.labels(event.channel.value).inc()
        if isinstance(event, HealthAlertEvent):
            alert = event.payload
            self.health_alerts.labels(
                event.subject.host, alert.kind, event.severity, alert.status, alert.detector
            ).inc()
            if alert.status == "firing":
                self.detection.labels(alert.detector).observe(
                    _seconds(event.emitted_at, event.occurred_at)
                )
        elif isinstance(event, RemediationNeededEvent | FalseAlarmEvent):
            analysis = event.payload.analysis
            if isinstance(event, FalseAlarmEvent):
                outcome = "false_alarm"
                self.false_alarms.labels(event.payload.alert_kind).inc()
            elif event.payload.needs_human:
                outcome = "needs_human"
            else:
                outcome = "notify" if event.payload.action.type == "none" else "remediate"
            self.decisions.labels(
                analysis.method, outcome, event.payload.runbook_id or "none"
            ).inc()
            if analysis.fallback_reason and analysis.model:
                self.llm_fallbacks.labels(analysis.fallback_reason.split(":", 1)[0][:40]).inc()
            elapsed = _since_id(event, event.causation_id)
            if elapsed is not None:
                self.analysis.labels(analysis.method).observe(elapsed)
        elif isinstance(event, RemediationCompleteEvent):
            p = event.payload
            self.remediations.labels(event.subject.host, p.action_type, p.status).inc()
            if p.guard:
                self.guard_rejections.labels(event.subject.host, p.guard).inc()
            if p.proposal_id and p.status in (
                RemediationStatus.EXPIRED,
                RemediationStatus.SUCCEEDED,
                RemediationStatus.FAILED,
                RemediationStatus.CANCELLED,
                RemediationStatus.BLOCKED,
            ):
                self.approvals.labels(p.status.value).inc()
            elapsed = _since_id(event, p.request_id)
            if elapsed is not None and p.status in EXECUTED:
                self.remediation.labels(p.action_type).observe(elapsed)
            if p.status in EXECUTED:
                self.end_to_end.labels(p.action_type).observe(
                    _seconds(event.emitted_at, p.alert_occurred_at)
                )
        elif isinstance(event, ApprovalRequestEvent):
            self.approvals.labels("requested").inc()
        elif isinstance(event, ApprovalDecisionEvent):
            self.approvals.labels(event.payload.decision.value).inc()
        elif isinstance(event, EscalationEvent):
            self.escalations.labels(event.subject.host, event.payload.guard or "none").inc()

    def delivery(self, channel: str, status: str, latency_ms: float) -> None:
        self.notifications.labels(channel, status).inc()
        if status == "sent":
            self.notification.labels(channel).observe(latency_ms / 1000)

"""Deterministic rules: a decision and a confidence from the alert, its runbook and the incident's
history. Pure; this is what stands whenever the LLM is off or gives no usable answer."""

from __future__ import annotations

from dataclasses import dataclass, replace

from shared.events import AlertKind, HealthAlertEvent
from shared.runbooks import Runbook

__all__ = ["DETERMINISTIC", "SIGNALS", "History", "RuleDecision", "decide"]

SIGNALS = {
    1: "the application exited with an error (exit 1)",
    2: "the process was misused or misconfigured (exit 2)",
    126: "the command could not be executed (exit 126)",
    127: "the command was not found (exit 127)",
    134: "the process aborted (SIGABRT, exit 134)",
    137: "the process was killed with SIGKILL (exit 137)",
    139: "the process crashed with a segmentation fault (exit 139)",
    143: "the process was terminated with SIGTERM (exit 143)",
}


@dataclass(frozen=True)
class History:
    """What the incident this alert joined already holds (this alert included)."""

    alerts: int = 1  # alerts in the incident
    same_kind: int = 1  # alerts of this kind in the incident
    decisions: int = 0  # decisions already published for the incident


@dataclass(frozen=True)
class RuleDecision:
    false_alarm: bool
    action_id: str | None  # None with false_alarm
    confidence: float
    root_cause: str
    explanation: str
    # The rules themselves find the signal ambiguous (a first spike, a first anomaly): only
    # then may an LLM call it a false alarm. A crash, an OOM kill, a failing health check or a
    # restart loop is a fact, and people are told whatever a model says.
    ambiguous: bool = False
    notify_only: bool = False  # no action may be chosen at all (how it died was not seen)


DETERMINISTIC = frozenset(
    {AlertKind.CRASH, AlertKind.OOM_KILLED, AlertKind.UNHEALTHY, AlertKind.RESTART_LOOP}
)


def _act(
    runbook: Runbook, action_id: str | None, confidence: float, cause: str, why: str
) -> RuleDecision:
    chosen = action_id if action_id and runbook.action(action_id) else runbook.default_action
    return RuleDecision(False, chosen, confidence, cause, why)


def decide(alert: HealthAlertEvent, runbook: Runbook, history: History) -> RuleDecision:
    payload = alert.payload
    kind = payload.kind
    if payload.uncertain:
        return RuleDecision(
            False,
            runbook.notify_action().id,
            0.9,
            payload.summary,
            "how it died was not seen (HemoStat was not listening and the daemon no longer has "
            "the events): a person may have stopped it, so people are told and nothing is done",
            notify_only=True,
        )
    repeated = history.same_kind >= 2
    escalate = runbook.escalate_action or runbook.default_action
    default = runbook.default_action

    if kind is AlertKind.CRASH:
        code = payload.exit_code
        cause = SIGNALS.get(code or -1, f"the process exited with code {code}")
        if repeated:
            return _act(
                runbook,
                default,
                0.8,
                f"repeated crash: {cause}",
                f"crash number {history.same_kind} in this incident; restart guards "
                "(cooldown, circuit breaker, crash-loop) decide whether to act again",
            )
        return _act(runbook, default, 0.9, cause, "a crash with a non-zero exit is restarted")

    if kind is AlertKind.OOM_KILLED:
        return _act(
            runbook,
            default,
            0.85,
            "the container reached its memory limit and was OOM-killed",
            "restarting frees its memory; a leak will come back and repeat the alert",
        )

    if kind is AlertKind.UNHEALTHY:
        probe = payload.summary
        return _act(
            runbook,
            escalate if history.same_kind >= 3 else default,
            0.85,
            f"health check failing: {probe}",
            "a container whose health check fails is restarted",
        )

    if kind is AlertKind.RESTART_LOOP:
        return _act(
            runbook,
            default,
            0.9,
            payload.summary,
            "restarting a crash-looping container again does not help; a person must look",
        )

    if kind in (AlertKind.HIGH_CPU, AlertKind.HIGH_MEMORY):
        what = "CPU" if kind is AlertKind.HIGH_CPU else "memory"
        sustained = payload.thresholds.get("sustained_samples", 3)
        value = payload.metrics.get(
            "cpu_percent" if kind is AlertKind.HIGH_CPU else "memory_percent"
        )
        if sustained < 2 and not repeated:
            return RuleDecision(
                True,
                None,
                0.8,
                f"a single {what} sample over the threshold",
                "a first one-sample spike is a false alarm",
                ambiguous=True,
            )
        critical_memory = kind is AlertKind.HIGH_MEMORY and value is not None and value >= 95
        if repeated or critical_memory:
            return _act(
                runbook,
                escalate,
                0.75,
                f"{what} has stayed high ({value}%)",
                "the problem outlasted the re-alert interval"
                if repeated
                else "memory is about to hit the limit",
            )
        return _act(
            runbook,
            default,
            0.75,
            f"sustained high {what} ({value}%)",
            "busy is not broken: people are told first",
        )

    if kind is AlertKind.ANOMALY:
        if not repeated:
            return RuleDecision(
                True,
                None,
                0.75,
                "a first deviation from the container's baseline",
                "a first transient deviation is a false alarm",
                ambiguous=True,
            )
        repeat = _act(
            runbook,
            default,
            0.75,
            "repeated deviation from the container's baseline",
            "it keeps happening: people are told",
        )
        return replace(repeat, ambiguous=True)

    # External (Alertmanager) and anything else: the runbook's default, usually notify-only.
    return _act(runbook, default, 0.8, payload.summary, f"runbook {runbook.id} default")

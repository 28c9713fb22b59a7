"""The Analyzer agent: every `hemostat:health_alert` becomes exactly one decision —
`hemostat:remediation_needed` (an action from the matched runbook, or notify) or
`hemostat:false_alarm` (with the reason) — and repeated alerts for one subject join one incident.
Resolutions close their incident and never request an action."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx
from redis.asyncio import Redis

from agents.analyzer import prompt as prompts
from agents.analyzer.diagnostics import DiagnosticsCollector
from agents.analyzer.incidents import Attached, IncidentStore, subject_key
from agents.analyzer.llm import LLMClient, ask, build_client, describe_client
from agents.analyzer.rules import RuleDecision, decide
from agents.base import BaseAgent, periodic
from shared import keys
from shared.docker_api import DockerGateway, connect_docker
from shared.errors import LLMError
from shared.events import (
    AlertStatus,
    Analysis,
    AnalysisMethod,
    Channel,
    Envelope,
    Escalation,
    EscalationEvent,
    Event,
    FalseAlarm,
    FalseAlarmEvent,
    HealthAlertEvent,
    IncidentResolved,
    IncidentResolvedEvent,
    RemediationNeeded,
    RemediationNeededEvent,
    Severity,
    Subject,
)
from shared.heartbeat import live_heartbeats
from shared.hosts import HostRecord, HostState, HostStore, describe, observe, transition
from shared.idempotency import Claims, delivery_entry
from shared.redaction import Redactor
from shared.runbooks import Runbook, Runbooks, load_runbooks
from shared.settings import AnalyzerSettings, Settings

__all__ = ["CLAIM_TTL_S", "AnalyzerAgent", "Conclusion", "build"]

CLAIM_TTL_S = 86_400


@dataclass(frozen=True)
class Conclusion:
    """What the Analyzer concluded about one alert: a false alarm, or the runbook action to take,
    with the analysis behind it (an approval's approve/deny is `shared.events.Decision`)."""

    false_alarm: bool
    action_id: str | None
    analysis: Analysis


class AnalyzerAgent(BaseAgent):
    name = "analyzer"
    consumes = (Channel.HEALTH_ALERT,)

    def __init__(
        self,
        *,
        runbooks: Runbooks,
        llm: LLMClient | None = None,
        diagnostics: DiagnosticsCollector | None = None,
        redactor: Redactor | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.runbooks = runbooks
        self.llm = llm
        self.diagnostics = diagnostics
        self.redactor = redactor or Redactor(self.settings.secret_values())
        self.incidents = IncidentStore(self.redis, self.settings.incident_idle_ttl_s)
        self.claims = Claims(self.redis, keys.ANALYZER_CLAIM, CLAIM_TTL_S)
        self.threshold = self.settings.analyzer_confidence_threshold
        self.hosts = HostStore(self.redis)
        self.counts = {"decisions": 0, "false_alarms": 0, "llm": 0, "llm_fallbacks": 0}

    def partition_key(self, event: Event) -> str | None:
        # One subject's alerts are decided in order; different subjects in parallel.
        return subject_key(event) if isinstance(event, HealthAlertEvent) else None

    def health_details(self) -> dict[str, Any]:
        return super().health_details() | {
            "runbooks": len(self.runbooks),
            "llm": describe_client(self.llm),
            **self.counts,
        }

    async def on_stop(self) -> None:
        for closable in (self.llm, getattr(self.diagnostics, "http", None)):
            aclose = getattr(closable, "aclose", None)
            if aclose is not None:
                await aclose()
        docker = getattr(self.diagnostics, "docker", None)
        if docker is not None:
            docker.close()

    @periodic(lambda self: self.settings.fleet_check_interval_s)
    async def watch_hosts(self) -> None:
        """Each host's edge agents: a host no longer watched (or healed) is escalated once it
        lasts the grace period, and told again when it is back."""
        seen = observe(await live_heartbeats(self.redis), self.clock.now())
        records = await self.hosts.read()
        now = self.clock.time()
        for host in sorted(set(seen) | set(records)):
            was, record = records.get(host, ("", None))
            new, tell = transition(
                record, seen.get(host), host, now, self.settings.fleet_host_grace_s
            )
            if new is None or new == record or not await self.hosts.replace(host, was, new):
                continue  # unchanged, or another replica wrote (and told) it first
            if tell is not None:
                await self._tell_host(new)
                self.log.warning("analyzer.host", host=host, state=tell)

    async def _tell_host(self, record: HostRecord) -> None:
        watched = record.state is HostState.WATCHED
        await self.emit(
            EscalationEvent,
            Escalation(
                reason=describe(record),
                guard=f"host_{record.state}",
                details={
                    "host": record.host,
                    "monitors": str(record.monitors),
                    "responders": str(record.responders),
                },
            ),
            subject=Subject(host=record.host),
            severity=Severity.INFO if watched else Severity.CRITICAL,
            idempotency_key=f"host:{record.host}:{record.state}:{record.since:.3f}",
        )

    @periodic(3600)
    async def prune(self) -> None:
        await self.incidents.prune(self.clock.time() - 8 * 86_400)

    # ------------------------------------------------------------------ one alert

    async def handle(self, event: Event) -> None:
        if not isinstance(event, HealthAlertEvent):
            return
        # One decision per alert however many copies arrive (a second Monitor replica, a
        # retried publish, a redelivery): the key is claimed atomically, with the entry.
        status = await self.claims.claim(
            event.idempotency_key, delivery_entry(event.id), self.instance
        )
        if not status.proceed:
            self.log.info(
                "analyzer.duplicate", alert=event.id, key=event.idempotency_key, as_=status
            )
            return
        now = self.clock.time()
        if event.payload.status is AlertStatus.RESOLVED:
            incident_id, closed = await self.incidents.resolve(event, now)
            self.log.info(
                "analyzer.resolved",
                alert=event.id,
                incident=incident_id,
                incident_closed=closed,
                kind=event.payload.kind,
            )
            if closed and incident_id:
                await self._tell_resolved(event, incident_id)
            await self.claims.done(event.idempotency_key)
            return
        attached = await self.incidents.attach(event, now)
        runbook = self.runbooks.match(event)
        decision, cached = await self._decide(event, runbook, attached)
        outcome = self._decision_event(event, attached.incident_id, runbook, decision)
        await self.bus.publish(outcome)
        await self.incidents.record_decision(
            attached.incident_id,
            decision.analysis,
            runbook.id,
            summary=_summary(outcome),
            cache=decision.analysis.method is AnalysisMethod.LLM and not cached,
            action_id=decision.action_id,
            false_alarm=decision.false_alarm,
        )
        await self.claims.done(event.idempotency_key)
        self.counts["decisions"] += 1
        self.counts["false_alarms"] += isinstance(outcome, FalseAlarmEvent)
        self.log.info(
            "analyzer.decided",
            alert=event.id,
            incident=attached.incident_id,
            runbook=runbook.id,
            decision=_summary(outcome),
            method=decision.analysis.method,
            decided_by=decision.analysis.decided_by,
            confidence=decision.analysis.confidence,
            fallback=decision.analysis.fallback_reason,
            overruled=decision.analysis.overruled,
        )

    async def _decide(
        self, alert: HealthAlertEvent, runbook: Runbook, attached: Attached
    ) -> tuple[Conclusion, bool]:
        started = time.monotonic()
        age = self.clock.time() - alert.emitted_at.timestamp()
        limit = self.settings.analyzer_max_alert_age_s
        if age > limit:
            # A backlog after an outage: people hear about it; nothing acts on old news.
            return self._stale(alert, runbook, age, limit, started), False
        rules = decide(alert, runbook, attached.history)
        if self.llm is None:
            return self._from_rules(rules, started, "no LLM configured"), False
        cached = None if attached.new else await self._cached(attached.incident_id, runbook)
        if cached is not None:
            bounded = self._bounded(
                rules, runbook, cached.false_alarm, cached.action_id, cached.analysis
            )
            return bounded, True
        redactor = self.redactor
        try:
            evidence: dict[str, Any] = {}
            if self.diagnostics is not None:
                evidence, redactor = await self.diagnostics.collect(alert, runbook)
            prompt = prompts.build(alert, runbook, attached.history, rules, evidence)
        except Exception as exc:  # boundary: evidence gathering never blocks a decision
            self.log.exception("analyzer.prompt_failed")
            return self._from_rules(rules, started, f"prompt_failed: {exc}"), False
        try:
            result = await ask(self.llm, prompt, runbook, self.settings.llm_timeout_s)
        except LLMError as exc:
            return self._fallback(rules, started, exc.reason, exc.detail, prompt), False
        except Exception as exc:  # boundary: an SDK bug must not cost us the decision
            self.log.exception("analyzer.llm_crashed")
            return self._fallback(rules, started, "client_error", repr(exc), prompt), False
        verdict = result.verdict
        self.counts["llm"] += 1
        analysis = Analysis(
            method=AnalysisMethod.LLM,
            confidence=verdict.confidence,
            root_cause=redactor.text(verdict.root_cause),
            explanation=redactor.text(verdict.explanation),
            model=describe_client(self.llm),
            prompt_hash=prompt.inputs_hash,
            latency_ms=round(result.latency_ms, 1),
        )
        return self._bounded(
            rules, runbook, verdict.false_alarm, verdict.action_id, analysis
        ), False

    def _bounded(
        self,
        rules: RuleDecision,
        runbook: Runbook,
        false_alarm: bool,
        action_id: str | None,
        analysis: Analysis,
    ) -> Conclusion:
        """The LLM explains and may pick among the runbook's actions; it cannot silence a
        deterministic failure, and it cannot act where the rules allow no action at all."""
        overruled = None
        if rules.notify_only and (false_alarm or action_id != rules.action_id):
            overruled = (
                f"the LLM chose {'a false alarm' if false_alarm else action_id or 'nothing'}; "
                "how this container died was not seen, so HemoStat only tells people"
            )
            false_alarm, action_id = False, rules.action_id
        elif false_alarm and not rules.ambiguous:
            overruled = (
                "the LLM called it a false alarm; a crash, an OOM kill, a failing health check "
                "or a restart loop is a fact the rules saw, so people are told and the rules' "
                "decision stands"
            )
            false_alarm, action_id = rules.false_alarm, rules.action_id
        elif not false_alarm and action_id is None:
            # "Real, but no action": people are told of an ambiguous signal; for a failure the
            # rules saw, picking nothing picks nothing else — the rules' action stands.
            action_id = runbook.notify_action().id if rules.ambiguous else rules.action_id
        # The LLM decided when its answer was taken (even where it agrees with the rules).
        decided_by = AnalysisMethod.RULES if overruled else AnalysisMethod.LLM
        update = {"decided_by": decided_by, "overruled": overruled}
        return Conclusion(false_alarm, action_id, analysis.model_copy(update=update))

    def _stale(
        self, alert: HealthAlertEvent, runbook: Runbook, age: float, limit: float, started: float
    ) -> Conclusion:
        analysis = Analysis(
            method=AnalysisMethod.RULES,
            decided_by=AnalysisMethod.RULES,
            confidence=1.0,
            root_cause=f"stale: {alert.payload.summary}",
            explanation=f"this alert was detected {age:.0f}s ago (limit {limit:.0f}s): the "
            "situation may have changed since, so people are told and nothing is done",
            latency_ms=round((time.monotonic() - started) * 1000, 3),
        )
        return Conclusion(False, runbook.notify_action().id, analysis)

    def _from_rules(self, rules: RuleDecision, started: float, reason: str | None) -> Conclusion:
        analysis = Analysis(
            method=AnalysisMethod.RULES,
            decided_by=AnalysisMethod.RULES,
            confidence=rules.confidence,
            root_cause=rules.root_cause,
            explanation=rules.explanation,
            fallback_reason=reason,
            latency_ms=round((time.monotonic() - started) * 1000, 3),
        )
        return Conclusion(rules.false_alarm, rules.action_id, analysis)

    def _fallback(
        self,
        rules: RuleDecision,
        started: float,
        reason: str,
        detail: str,
        prompt: prompts.Prompt,
    ) -> Conclusion:
        self.counts["llm_fallbacks"] += 1
        self.log.warning(
            "analyzer.llm_fallback", reason=reason, detail=self.redactor.clip(detail, 300)
        )
        decision = self._from_rules(rules, started, self.redactor.clip(f"{reason}: {detail}", 300))
        analysis = decision.analysis.model_copy(
            update={"model": describe_client(self.llm), "prompt_hash": prompt.inputs_hash}
        )
        return Conclusion(decision.false_alarm, decision.action_id, analysis)

    async def _cached(self, incident_id: str, runbook: Runbook) -> Conclusion | None:
        """A repeat within an open incident reuses the incident's LLM analysis."""
        analysis = await self.incidents.cached_analysis(incident_id, runbook.id)
        if analysis is None or analysis.method is not AnalysisMethod.LLM:
            return None
        data = await self.incidents.get(incident_id)
        action_id = data.get(f"action:{runbook.id}") or None
        false_alarm = data.get(f"false_alarm:{runbook.id}") == "1"
        if action_id is not None and runbook.action(action_id) is None:
            return None  # the runbook changed since
        explanation = f"{analysis.explanation} (reused from this incident's analysis)".strip()
        return Conclusion(
            false_alarm, action_id, analysis.model_copy(update={"explanation": explanation})
        )

    # ------------------------------------------------------------------ the outcome

    async def _tell_resolved(self, alert: HealthAlertEvent, incident_id: str) -> None:
        """Nothing of the incident fires any more: what waits on it (a proposal) is withdrawn."""
        await self.emit(
            IncidentResolvedEvent,
            IncidentResolved(
                reason=alert.payload.summary[:300] or f"{alert.payload.kind} resolved",
                kinds=[alert.payload.kind],
            ),
            subject=alert.subject,
            severity=Severity.INFO,
            caused_by=alert,
            incident_id=incident_id,
            idempotency_key=f"resolved:{incident_id}",
        )

    def _decision_event(
        self, alert: HealthAlertEvent, incident_id: str, runbook: Runbook, decision: Conclusion
    ) -> Envelope:
        confident = decision.analysis.confidence >= self.threshold
        common: dict[str, Any] = {
            "subject": alert.subject,
            "severity": alert.severity,
            "caused_by": alert,
            "incident_id": incident_id,
            "idempotency_key": f"decision:{alert.idempotency_key}",
        }
        if decision.false_alarm and confident:
            return self.event(
                FalseAlarmEvent,
                FalseAlarm(
                    alert_kind=alert.payload.kind,
                    alert_occurred_at=alert.occurred_at,
                    runbook_id=runbook.id,
                    reason=decision.analysis.root_cause,
                    analysis=decision.analysis,
                ),
                **common,
            )
        action = runbook.action(decision.action_id or "") or runbook.notify_action()
        if decision.false_alarm:
            action = runbook.notify_action()  # an unsure "false alarm" is shown to a person
        needs_human = not confident and action.type != "none"
        reason = decision.analysis.root_cause
        if not confident:
            reason = (
                f"confidence {decision.analysis.confidence:.2f} is below "
                f"{self.threshold:.2f}: a person decides. {reason}"
            )
        return self.event(
            RemediationNeededEvent,
            RemediationNeeded(
                alert_kind=alert.payload.kind,
                alert_occurred_at=alert.occurred_at,
                alert_detected_at=alert.emitted_at,
                runbook_id=runbook.id,
                runbook_version=runbook.version,
                action=action,
                analysis=decision.analysis,
                needs_human=needs_human or (not confident and decision.false_alarm),
                reason=reason[:1000],
            ),
            **common,
        )


def _summary(event: Envelope) -> str:
    if isinstance(event, FalseAlarmEvent):
        return "false alarm"
    if isinstance(event, RemediationNeededEvent):
        p = event.payload
        return f"{p.action.type}:{p.action.id}" + (" (needs human)" if p.needs_human else "")
    return event.type if hasattr(event, "type") else "?"


def build(settings: Settings, redis: Redis) -> AnalyzerAgent:
    runbooks = load_runbooks(settings.runbooks_dir)
    llm = build_client(settings.section(AnalyzerSettings))
    redactor = Redactor(settings.secret_values())
    diagnostics = None
    if llm is not None:
        http = httpx.AsyncClient(timeout=5.0) if settings.prometheus_url else None
        diagnostics = DiagnosticsCollector(
            DockerGateway(connect_docker(settings)), redactor, settings.prometheus_url, http
        )
    return AnalyzerAgent(
        settings=settings,
        redis=redis,
        runbooks=runbooks,
        llm=llm,
        diagnostics=diagnostics,
        redactor=redactor,
    )

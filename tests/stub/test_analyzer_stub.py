"""The Analyzer's decisions on a StubBus: alerts are delivered in memory and `join` returns once
they are handled, so each test asserts exactly what the handler published, with no polling.

No service is needed: the Analyzer's state (the idempotency claim of each alert, incidents and
their cached analyses) lives in an in-memory Redis (fakeredis) that runs the stores' own Lua, and
the LLM is a local HTTP server. The real-bus versions in tests/test_analyzer_agent.py stay, on a
real redis-server, for delivery itself (redelivery after a crash, twins, acks)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest

from agents.analyzer.agent import AnalyzerAgent
from agents.analyzer.llm import build_client
from shared import keys
from shared.clock import to_datetime
from shared.events import (
    AlertKind,
    AlertStatus,
    AnalysisMethod,
    Channel,
    FalseAlarmEvent,
    RemediationNeededEvent,
)
from shared.redaction import Redactor
from shared.runbooks import load_runbooks
from shared.stub_bus import StubBus
from tests.conftest import make_settings
from tests.support import factories
from tests.support.fake_llm import FakeLLM, Reply, verdict
from tests.support.stub import started

pytestmark = pytest.mark.timeout(30)


RUNBOOKS = load_runbooks(Path(__file__).parents[2] / "runbooks")


@pytest.fixture
def fake():
    server = FakeLLM().start()
    yield server
    server.stop()


@contextlib.asynccontextmanager
async def analyzer(redis, redis_url, fake=None, agent_class=AnalyzerAgent, **kw):
    extra = {}
    if fake is not None:
        extra = {
            "llm_provider": "anthropic",
            "anthropic_api_key": "sk-ant-test-0000000000000000",
            "anthropic_base_url": fake.url,
            "llm_timeout_s": 5.0,
            "llm_max_retries": 0,
        }
    settings = make_settings(redis_url, **(extra | kw))
    stub = StubBus()
    agent = agent_class(
        settings=settings,
        redis=redis,
        bus=stub,
        runbooks=RUNBOOKS,
        llm=build_client(settings),
        redactor=Redactor(),
    )
    async with started(agent):
        yield stub


async def decide(stub: StubBus, *alerts) -> list:
    """Publish the alerts, wait until the Analyzer handled them: its decisions, in order."""
    await stub.publish_many(list(alerts))
    await stub.join(Channel.HEALTH_ALERT)
    return stub.published(Channel.REMEDIATION_NEEDED) + stub.published(Channel.FALSE_ALARM)


async def test_rules_path_crash_becomes_a_restart_request(redis, redis_url):
    alert = factories.health_alert("c1", AlertKind.CRASH, exit_code=1)
    async with analyzer(redis, redis_url) as stub:
        [decision] = await decide(stub, alert)
    assert isinstance(decision, RemediationNeededEvent)
    p = decision.payload
    assert (p.runbook_id, p.action.id, p.action.type) == (
        "crash-nonzero-exit",
        "restart",
        "restart",
    )
    assert p.analysis.method is AnalysisMethod.RULES
    assert p.analysis.fallback_reason == "no LLM configured"
    assert not p.needs_human
    assert decision.causation_id == alert.id
    assert decision.idempotency_key == f"decision:{alert.idempotency_key}"
    assert decision.subject == alert.subject
    assert decision.source.agent == "analyzer"
    assert decision.incident_id
    assert p.alert_occurred_at == alert.occurred_at


async def test_first_anomaly_is_a_false_alarm_with_its_reason(redis, redis_url):
    async with analyzer(redis, redis_url) as stub:
        [decision] = await decide(stub, factories.health_alert("c1", AlertKind.ANOMALY))
    assert isinstance(decision, FalseAlarmEvent)
    assert "deviation" in decision.payload.reason


async def test_repeats_join_one_incident_and_its_resolution_is_published(redis, redis_url):
    async with analyzer(redis, redis_url) as stub:
        made = await decide(
            stub,
            *[factories.health_alert("c1", AlertKind.UNHEALTHY) for _ in range(3)],
            factories.health_alert("c2", AlertKind.UNHEALTHY),
        )
        incidents = {d.subject.container_id: set() for d in made}
        for d in made:
            incidents[d.subject.container_id].add(d.incident_id)
        [incident] = incidents["c1"]
        assert incidents["c2"] != {incident}
        resolution = factories.health_alert("c1", AlertKind.UNHEALTHY, status=AlertStatus.RESOLVED)
        assert len(await decide(stub, resolution)) == 4, "a resolution never requests an action"
    [resolved] = stub.published(Channel.INCIDENT_RESOLVED)
    assert (resolved.incident_id, resolved.causation_id) == (incident, resolution.id)
    assert resolved.idempotency_key == f"resolved:{incident}"
    data = await redis.hgetall(keys.INCIDENT + incident)
    assert (data["status"], data["alert_count"], data["decisions"]) == ("resolved", "3", "3")


async def test_an_incident_stays_open_while_another_kind_still_fires(redis, redis_url):
    async with analyzer(redis, redis_url) as stub:
        await decide(
            stub,
            factories.health_alert("c1", AlertKind.UNHEALTHY),
            factories.health_alert("c1", AlertKind.HIGH_CPU, thresholds={"sustained_samples": 3.0}),
        )
        await decide(
            stub, factories.health_alert("c1", AlertKind.UNHEALTHY, status=AlertStatus.RESOLVED)
        )
        assert not stub.published(Channel.INCIDENT_RESOLVED)
        await decide(
            stub, factories.health_alert("c1", AlertKind.HIGH_CPU, status=AlertStatus.RESOLVED)
        )
    [resolved] = stub.published(Channel.INCIDENT_RESOLVED)
    assert resolved.payload.kinds == [AlertKind.HIGH_CPU]


class CrashesAfterDeciding(AnalyzerAgent):
    """Publishes its decision, then fails before the delivery counts as handled (once)."""

    crashed = 0

    async def handle(self, event):
        await super().handle(event)
        if not type(self).crashed:
            type(self).crashed += 1
            raise RuntimeError("failed after publishing")


async def test_a_redelivered_alert_gets_one_decision(redis, redis_url):
    alert = factories.health_alert("c1", AlertKind.CRASH, idempotency_key="docker:c1:die:123")
    async with analyzer(redis, redis_url, agent_class=CrashesAfterDeciding) as stub:
        decisions = await decide(stub, alert)
    assert CrashesAfterDeciding.crashed == 1
    assert len(decisions) == 1
    assert not stub.dead_letters


async def test_a_twin_alert_gets_one_decision(redis, redis_url):
    key = "docker:c1:die:123"
    async with analyzer(redis, redis_url) as stub:
        decisions = await decide(
            stub,
            factories.health_alert("c1", AlertKind.CRASH, idempotency_key=key),
            factories.health_alert("c1", AlertKind.CRASH, idempotency_key=key),
        )
    assert len(decisions) == 1


async def test_a_backlog_of_old_alerts_is_decided_stale_and_notify_only(redis, redis_url):
    old = factories.health_alert("c1", AlertKind.CRASH, exit_code=1)
    old = old.model_copy(update={"emitted_at": to_datetime(old.emitted_at.timestamp() - 3600)})
    async with analyzer(redis, redis_url, analyzer_max_alert_age_s=600) as stub:
        [decision] = await decide(stub, old)
    assert decision.payload.action.type == "none"
    assert decision.payload.analysis.root_cause.startswith("stale:")


async def test_llm_decides_and_a_repeat_reuses_the_incident_analysis(redis, redis_url, fake):
    async with analyzer(redis, redis_url, fake) as stub:
        await decide(stub, factories.health_alert("c1", AlertKind.CRASH, exit_code=1))
        first, second = await decide(
            stub, factories.health_alert("c1", AlertKind.CRASH, exit_code=1)
        )
    assert first.payload.analysis.method is AnalysisMethod.LLM
    assert first.payload.action.id == "restart"
    assert len(fake.requests) == 1, "the repeat reused the incident's analysis"
    assert "reused" in second.payload.analysis.explanation


async def test_low_confidence_needs_a_human(redis, redis_url, fake):
    fake.default = Reply(text=verdict(action_id="restart", confidence=0.4))
    async with analyzer(redis, redis_url, fake) as stub:
        [decision] = await decide(stub, factories.health_alert("c1", AlertKind.CRASH, exit_code=1))
    assert decision.payload.needs_human
    assert "below 0.70" in decision.payload.reason


async def test_an_obeying_llm_cannot_silence_a_crash_the_rules_saw(redis, redis_url, fake):
    fake.default = Reply(text=verdict(action_id=None, confidence=0.99, false_alarm=True))
    async with analyzer(redis, redis_url, fake) as stub:
        [decision] = await decide(stub, factories.health_alert("c1", AlertKind.CRASH, exit_code=1))
    assert isinstance(decision, RemediationNeededEvent)
    assert decision.payload.analysis.decided_by is AnalysisMethod.RULES
    assert "false alarm" in decision.payload.analysis.overruled


async def test_a_host_gone_past_the_grace_is_escalated_and_told_when_back(redis, redis_url):
    from shared.clock import ManualClock
    from shared.heartbeat import AgentStatus, Heartbeat, clear_heartbeat, write_heartbeat

    clock = ManualClock(time.time())
    settings = make_settings(redis_url, fleet_host_grace_s=10)
    stub = StubBus()
    agent = AnalyzerAgent(settings=settings, redis=redis, bus=stub, runbooks=RUNBOOKS, clock=clock)

    async def beat() -> None:
        for name in ("monitor", "responder"):
            await write_heartbeat(
                redis,
                Heartbeat(
                    agent=name,
                    instance=f"{name}-1",
                    host="edge-1",
                    pid=1,
                    version="0",
                    status=AgentStatus.OK,
                    started_at=clock.now(),
                    beat_at=clock.now(),
                    ttl_s=30,
                ),
            )

    await beat()
    await agent.watch_hosts()
    assert not stub.published(Channel.ESCALATION), "a host first seen watched is no news"
    for name in ("monitor", "responder"):
        await clear_heartbeat(redis, name, f"{name}-1")
    await agent.watch_hosts()  # gone, but not for the grace period yet
    assert not stub.published(Channel.ESCALATION)
    clock.advance(11)
    await agent.watch_hosts()
    [gone] = stub.published(Channel.ESCALATION)
    assert (gone.payload.guard, gone.severity) == ("host_unwatched", "critical")
    assert gone.emitted_at == gone.occurred_at == clock.now()
    assert (gone.source.agent, gone.causation_id, gone.incident_id) == ("analyzer", None, None)
    assert gone.idempotency_key.startswith("host:edge-1:unwatched:")
    await beat()
    await agent.watch_hosts()
    _, back = stub.published(Channel.ESCALATION)
    assert (back.payload.guard, back.severity) == ("host_watched", "info")

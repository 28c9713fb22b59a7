"""BaseAgent's handler dispatch and failure handling on a StubBus: no Redis at all (redis=None),
milliseconds per test. Delivery semantics (acks, reclaim, lost groups, signals, heartbeats) are
tests/test_base_agent.py's, on a real Redis."""

from __future__ import annotations

import asyncio

import pytest

from agents.base import BaseAgent
from shared.eventbus import current_delivery
from shared.events import Channel, Event
from shared.stub_bus import StubBus
from tests.support import factories
from tests.support.agents import EchoAgent
from tests.support.stub import started, stub_settings

pytestmark = pytest.mark.timeout(10)


async def test_the_agent_handles_what_it_consumes_between_its_hooks():
    stub = StubBus()
    agent = EchoAgent(settings=stub_settings(), redis=None, bus=stub)
    events = [factories.health_alert(f"c{i}") for i in range(3)]
    async with started(agent):
        assert agent.hooks == ["start", "started"]
        await stub.publish_many(events)
        await stub.join(Channel.HEALTH_ALERT)
        assert agent.handled == [e.id for e in events]
        assert agent.consumer is not None
        assert agent.health_details()["consumer"]["handled"] == 3
    assert agent.hooks == ["start", "started", "stop"]
    assert agent.background_exited


async def test_handlers_see_their_delivery_as_the_agents_group_and_instance():
    seen = []

    class Reader(BaseAgent):
        name = "reader"
        consumes = (Channel.HEALTH_ALERT, Channel.FALSE_ALARM)

        async def handle(self, event: Event) -> None:
            seen.append((event.id, current_delivery()))

    stub = StubBus()
    agent = Reader(settings=stub_settings(instance="r-7"), redis=None, bus=stub)
    alert, false_alarm = factories.health_alert(), factories.false_alarm()
    async with started(agent):
        alert_entry = await stub.publish(alert)
        false_entry = await stub.publish(false_alarm)
        await stub.join(Channel.HEALTH_ALERT)
        await stub.join(Channel.FALSE_ALARM)
    assert sorted(
        (i, d.channel, d.message_id, d.group, d.consumer, d.attempt) for i, d in seen
    ) == sorted(
        [
            (alert.id, Channel.HEALTH_ALERT, alert_entry, "reader", "r-7", 1),
            (false_alarm.id, Channel.FALSE_ALARM, false_entry, "reader", "r-7", 1),
        ]
    )


async def test_an_agent_without_a_handler_dead_letters_and_keeps_running():
    class NoHandler(BaseAgent):
        name = "nohandler"
        consumes = (Channel.HEALTH_ALERT,)

    stub = StubBus()
    agent = NoHandler(settings=stub_settings(bus_max_deliveries=1), redis=None, bus=stub)
    async with started(agent) as task:
        await stub.publish(factories.health_alert())
        with pytest.raises(
            NotImplementedError, match="NoHandler consumes events but has no handle"
        ):
            await stub.join(Channel.HEALTH_ALERT)
        assert not task.done()
    [letter] = stub.dead_letters
    assert (letter.group, letter.attempts) == ("nohandler", 1)


async def test_a_failing_handler_is_retried_up_to_max_deliveries_then_dead_lettered():
    attempts: list[int] = []

    class Fails(EchoAgent):
        async def handle(self, event: Event) -> None:
            delivery = current_delivery()
            assert delivery is not None
            attempts.append(delivery.attempt)
            raise RuntimeError("always")

    stub = StubBus()
    agent = Fails(settings=stub_settings(bus_max_deliveries=4), redis=None, bus=stub)
    async with started(agent):
        await stub.publish(factories.health_alert("c1"))
        with pytest.raises(RuntimeError, match="always"):
            await stub.join(Channel.HEALTH_ALERT)
    assert attempts == [1, 2, 3, 4]
    [letter] = stub.dead_letters
    assert (letter.attempts, letter.error) == (4, "RuntimeError: always")
    assert agent.consumer is not None
    assert (agent.consumer.stats.failed, agent.consumer.stats.dead_lettered) == (4, 1)


async def test_a_handler_that_succeeds_on_a_retry_is_handled_once():
    class Flaky(EchoAgent):
        async def handle(self, event: Event) -> None:
            delivery = current_delivery()
            if delivery is not None and delivery.attempt == 1:
                raise ConnectionError("blip")
            await super().handle(event)

    stub = StubBus()
    agent = Flaky(settings=stub_settings(), redis=None, bus=stub)
    event = factories.health_alert()
    async with started(agent):
        await stub.publish(event)
        await stub.join(Channel.HEALTH_ALERT)
    assert agent.handled == [event.id]
    assert not stub.dead_letters


async def test_graceful_stop_lets_in_flight_handlers_finish():
    stub = StubBus()
    agent = EchoAgent(settings=stub_settings(), redis=None, bus=stub, delay_s=0.05)
    events = [factories.health_alert(f"c{i}") for i in range(5)]
    async with started(agent):
        await stub.publish_many(events)
        while agent.consumer is None or agent.consumer.inflight < 5:  # noqa: ASYNC110
            await asyncio.sleep(0)
    # started() stopped the agent with five handlers still sleeping: they all finished.
    assert sorted(agent.handled) == sorted(e.id for e in events)


async def test_emit_stamps_source_clock_causation_and_incident_and_publishes():
    from shared.clock import ManualClock
    from shared.events import Escalation, EscalationEvent, Severity

    class Answers(BaseAgent):
        name = "answers"
        consumes = (Channel.HEALTH_ALERT,)

        async def handle(self, event: Event) -> None:
            await self.emit(
                EscalationEvent,
                Escalation(reason="seen", guard="test"),
                subject=event.subject,
                severity=Severity.WARNING,
                caused_by=event,
                idempotency_key=f"answer:{event.idempotency_key}",
            )

    stub = StubBus()
    clock = ManualClock()
    agent = Answers(settings=stub_settings(instance="a-1"), redis=None, bus=stub, clock=clock)
    alert = factories.health_alert("c1").model_copy(update={"incident_id": "inc-1"})
    async with started(agent):
        await stub.publish(alert)
        await stub.join(Channel.HEALTH_ALERT)
    [answer] = stub.published(Channel.ESCALATION)
    assert (answer.source.agent, answer.source.instance) == ("answers", "a-1")
    assert answer.occurred_at == answer.emitted_at == clock.now()
    assert (answer.causation_id, answer.incident_id) == (alert.id, "inc-1")
    assert answer.idempotency_key == f"answer:{alert.idempotency_key}"
    assert answer.subject == alert.subject
    own = agent.event(
        EscalationEvent,
        Escalation(reason="r", guard="g"),
        subject=alert.subject,
        severity=Severity.INFO,
        caused_by=alert,
        incident_id="inc-2",
    )
    assert (own.incident_id, own.idempotency_key) == ("inc-2", own.id)
    # Only the id was kept (a stored context): causation from it, the incident named or none.
    by_id = agent.event(
        EscalationEvent,
        Escalation(reason="r", guard="g"),
        subject=alert.subject,
        severity=Severity.INFO,
        caused_by=alert.id,
    )
    assert (by_id.causation_id, by_id.incident_id) == (alert.id, None)
    named = agent.event(
        EscalationEvent,
        Escalation(reason="r", guard="g"),
        subject=alert.subject,
        severity=Severity.INFO,
        caused_by="01-stored",
        incident_id="inc-3",
    )
    assert (named.causation_id, named.incident_id) == ("01-stored", "inc-3")

"""The Alert agent's handler on a StubBus: events are delivered in memory and `join` returns once
they are handled, so each test asserts exactly what reached the local HTTP receivers (stand-ins for
Slack, Discord and ntfy), with no polling.

No service is needed: the Alert agent's state (the "already notified" marker of each idempotency
key, deduplication windows, storms, history and the delivery log) lives in an in-memory Redis
(fakeredis) that runs the stores' own Lua. The real-bus versions in tests/test_alert_agent.py stay,
on a real redis-server (retries with real timing, isolation of a slow channel...)."""

from __future__ import annotations

import contextlib

import httpx
import pytest

from agents.alert.agent import AlertAgent, build_channels
from shared import keys
from shared.events import Channel, RemediationStatus, Severity
from shared.redaction import Redactor
from shared.stub_bus import StubBus
from tests.conftest import make_settings
from tests.support import factories
from tests.support.clock import OffsetClock
from tests.support.stub import started
from tests.support.webhooks import Receiver

pytestmark = pytest.mark.timeout(30)


SLACK, DISCORD, NTFY = "/slack/T000/B000/X", "/discord/api/webhooks/1/abc", "/ntfy"
CANARY = "canary-5be3f0d1"


@pytest.fixture
def receiver():
    server = Receiver().start()
    yield server
    server.stop()


@contextlib.asynccontextmanager
async def alert_agent(redis, redis_url, receiver, channels=("slack", "discord", "ntfy"), **kw):
    urls = {
        "slack": {"slack_webhook_url": receiver.url(SLACK)},
        "discord": {"discord_webhook_url": receiver.url(DISCORD)},
        "ntfy": {
            "ntfy_url": receiver.url(NTFY),
            "ntfy_topic": "ops-alerts",
            "ntfy_token": "tk_ntfy_secret_1234",
        },
    }
    values = {
        "alert_channel_timeout_s": 1.0,
        "alert_max_attempts": 3,
        "alert_dedup_window_s": 2.0,
        "alert_storm_threshold": 0,  # one message at a time; storms have their own tests
    }
    for name in channels:
        values |= urls[name]
    clock = kw.pop("clock", None)
    settings = make_settings(redis_url, **(values | kw))
    http = httpx.AsyncClient()
    stub = StubBus()
    agent = AlertAgent(
        settings=settings,
        redis=redis,
        bus=stub,
        clock=clock,
        channels=build_channels(settings, http, Redactor(settings.secret_values())),
        http=http,
    )
    async with started(agent):
        yield stub


async def tell(stub: StubBus, *events) -> None:
    await stub.publish_many(list(events))
    for channel in {e.channel for e in events}:
        await stub.join(channel)


async def delivery_log(redis) -> list[dict[str, str]]:
    return [fields for _, fields in await redis.xrange(keys.NOTIFICATIONS)]


async def test_critical_goes_everywhere_with_the_right_bodies_and_headers(
    redis, redis_url, receiver
):
    event = factories.remediation_complete(
        "c1", RemediationStatus.FAILED, Severity.CRITICAL, reason="verify failed"
    )
    async with alert_agent(redis, redis_url, receiver) as stub:
        await tell(stub, event)
    [slack], [discord], [ntfy] = receiver.at(SLACK), receiver.at(DISCORD), receiver.at(NTFY)
    assert slack.body["blocks"][0]["text"]["text"].startswith(
        "🔴 CRITICAL · name-c1 · restart → failed"
    )
    assert discord.body["content"] == "@here"
    assert (ntfy.body["topic"], ntfy.body["priority"]) == ("ops-alerts", 5)
    assert ntfy.headers["Authorization"] == "Bearer tk_ntfy_secret_1234"
    assert sorted(r["channel"] for r in await delivery_log(redis)) == ["discord", "ntfy", "slack"]


async def test_routes_narrow_what_each_channel_hears(redis, redis_url, receiver):
    async with alert_agent(
        redis, redis_url, receiver, alert_routes="info=slack;approval_request=all"
    ) as stub:
        await tell(
            stub,
            factories.remediation_complete("c1", RemediationStatus.SUCCEEDED, Severity.INFO),
            factories.approval_request("c2", "p-777"),
        )
    assert len(receiver.at(SLACK)) == 2
    assert len(receiver.at(DISCORD)) == 1
    [ntfy] = receiver.at(NTFY)
    assert "hemostat approve p-777" in ntfy.body["message"]


async def test_the_same_idempotency_key_is_told_once(redis, redis_url, receiver):
    """A producer that retried its publish sends a new event with the same key."""
    first = factories.escalation("c1")
    again = first.model_copy(update={"id": "another-id"})
    async with alert_agent(redis, redis_url, receiver, channels=("slack",)) as stub:
        await tell(stub, first)
        await tell(stub, again)
    assert len(receiver.at(SLACK)) == 1
    assert await redis.xlen(keys.HISTORY) == 1


async def test_a_heal_is_told_once_per_incident_and_every_failure_each_time(
    redis, redis_url, receiver
):
    succeeded = [
        factories.remediation_complete("c1", RemediationStatus.SUCCEEDED, Severity.INFO)
        for _ in range(3)
    ]
    failed = [
        factories.remediation_complete("c1", RemediationStatus.FAILED, Severity.CRITICAL)
        for _ in range(2)
    ]
    async with alert_agent(
        redis, redis_url, receiver, channels=("slack",), alert_dedup_window_s=0
    ) as stub:
        await tell(stub, *succeeded, *failed)
    assert (
        sorted(r["status"] for r in await delivery_log(redis))
        == ["deduplicated"] * 2 + ["sent"] * 3
    )
    texts = [h.raw for h in receiver.at(SLACK)]
    assert (sum("succeeded" in t for t in texts), sum("failed" in t for t in texts)) == (1, 2)


async def test_slack_text_from_a_container_cannot_ping_the_channel_or_plant_links(
    redis, redis_url, receiver
):
    sneaky = factories.remediation_complete(
        "c1",
        RemediationStatus.FAILED,
        Severity.CRITICAL,
        reason="<!channel> wake up <https://evil.example|click here> <@U123>",
    )
    async with alert_agent(redis, redis_url, receiver, channels=("slack",)) as stub:
        await tell(stub, sneaky)
    [hit] = receiver.at(SLACK)
    assert "<!channel>" not in hit.raw
    assert "<https://evil.example" not in hit.raw
    assert "&lt;!channel&gt;" in hit.raw


async def test_a_flapping_container_is_told_once_per_window_with_the_count(
    redis, redis_url, receiver
):
    clock = OffsetClock()

    def failure(container: str):
        return factories.remediation_complete(container, RemediationStatus.FAILED, Severity.WARNING)

    async with alert_agent(
        redis, redis_url, receiver, channels=("slack",), alert_dedup_window_s=60, clock=clock
    ) as stub:
        await tell(stub, *[failure(c) for c in ("a", "b", "c")])
        await tell(stub, *[failure("flappy") for _ in range(5)])
        assert len(receiver.at(SLACK)) == 4
        clock.advance(61)  # the window ends; the next message reports what was suppressed
        await tell(stub, failure("flappy"))
    last = receiver.at(SLACK)[-1].body
    assert "4 similar message(s) suppressed" in last["blocks"][-1]["elements"][0]["text"]


async def test_a_wrong_webhook_is_not_retried(redis, redis_url, receiver):
    receiver.default_status[SLACK] = 404
    async with alert_agent(redis, redis_url, receiver, channels=("slack",)) as stub:
        await tell(stub, factories.escalation("c1"))
    [row] = await delivery_log(redis)
    assert (row["status"], row["attempts"]) == ("failed", "1")
    assert not stub.dead_letters, "a channel failing is logged, not a handler failure"


async def test_no_secret_reaches_a_notification(redis, redis_url, receiver):
    leaky = factories.remediation_complete(
        "c1",
        RemediationStatus.FAILED,
        Severity.CRITICAL,
        reason=f"exec printed DB_PASSWORD={CANARY}",
        output=f"token: {CANARY}\nthe ntfy token is tk_ntfy_secret_1234",
    )
    async with alert_agent(redis, redis_url, receiver) as stub:
        await tell(stub, leaky)
    assert len(receiver.hits) == 3
    assert CANARY not in receiver.all_text()
    assert "tk_ntfy_secret_1234" not in "\n".join(h.raw for h in receiver.hits)
    assert "DB_PASSWORD=***" in receiver.all_text()


async def test_every_consumed_channel_reaches_the_handler(redis, redis_url, receiver):
    async with alert_agent(redis, redis_url, receiver, channels=("slack",)) as stub:
        await tell(
            stub,
            factories.false_alarm("c1"),
            factories.escalation("c2"),
            factories.approval_request("c3", "p-1"),
            factories.remediation_complete("c4", RemediationStatus.FAILED, Severity.CRITICAL),
        )
    history = await redis.xrange(keys.HISTORY)
    assert sorted(f["type"] for _, f in history) == sorted(
        str(c).removeprefix("hemostat:")
        for c in (
            Channel.FALSE_ALARM,
            Channel.ESCALATION,
            Channel.APPROVAL_REQUEST,
            Channel.REMEDIATION_COMPLETE,
        )
    )

"""The Alert agent on a real Redis, delivering over real HTTP to local servers that stand in for
Slack, Discord, ntfy and an apprise json:// target: routing, bodies and headers, deduplication,
retries (429 with Retry-After, 500, timeouts), isolation of a failing channel, redaction."""

from __future__ import annotations

import asyncio
import contextlib
import io

import httpx
import pytest

from agents.alert.agent import AlertAgent, build_channels
from shared import keys
from shared.bus import Bus
from shared.events import Channel, RemediationStatus, Severity
from shared.log import configure_logging
from shared.redaction import Redactor
from shared.settings import LogFormat
from tests.conftest import make_settings
from tests.support import factories
from tests.support.bus import wait_until
from tests.support.clock import OffsetClock
from tests.support.webhooks import Receiver, Scripted

pytestmark = pytest.mark.redis
SLACK, DISCORD, NTFY, APPRISE = (
    "/slack/T000/B000/X",
    "/discord/api/webhooks/1/abc",
    "/ntfy",
    "/apprise",
)
CANARY = "canary-77aa21c9"


@pytest.fixture
def receiver():
    server = Receiver().start()
    yield server
    server.stop()


@contextlib.asynccontextmanager
async def alert_agent(
    redis,
    redis_url,
    receiver,
    channels=("slack", "discord", "ntfy"),
    clock=None,
    runbooks=None,
    instance="test-1",
    **kw,
):
    urls = {
        "slack": {"slack_webhook_url": receiver.url(SLACK)},
        "discord": {"discord_webhook_url": receiver.url(DISCORD)},
        "ntfy": {
            "ntfy_url": receiver.url(NTFY),
            "ntfy_topic": "ops-alerts",
            "ntfy_token": "tk_ntfy_secret_1234",
        },
        "apprise": {"apprise_urls": receiver.url(APPRISE).replace("http://", "json://")},
    }
    values = {
        "alert_channel_timeout_s": 1.0,
        "alert_max_attempts": 3,
        "alert_dedup_window_s": 2.0,
        # These tests are about one message at a time; storms have their own tests.
        "alert_storm_threshold": 0,
    }
    for name in channels:
        values |= urls[name]
    settings = make_settings(redis_url, **(values | {"instance": instance} | kw))
    http = httpx.AsyncClient()
    agent = AlertAgent(
        settings=settings,
        redis=redis,
        clock=clock,
        # Only what the settings configure as secret: nothing a test knows is registered.
        channels=build_channels(settings, http, Redactor(settings.secret_values())),
        runbooks=runbooks,
        http=http,
    )
    task = asyncio.create_task(agent.run())
    await wait_until(lambda: redis.exists(Channel.REMEDIATION_COMPLETE))
    try:
        yield agent
    finally:
        agent.stop()
        await asyncio.wait_for(task, 30)


async def deliveries(redis):
    return [fields for _, fields in await redis.xrange(keys.NOTIFICATIONS)]


async def wait_deliveries(redis, n, timeout=15):
    await wait_until(lambda: _count(redis, n), timeout=timeout, what=f"{n} deliveries")
    return await deliveries(redis)


async def _count(redis, n):
    return len(await deliveries(redis)) >= n


async def test_critical_goes_everywhere_with_the_right_bodies_and_headers(
    redis, redis_url, receiver
):
    async with alert_agent(redis, redis_url, receiver):
        event = factories.remediation_complete(
            "c1",
            RemediationStatus.FAILED,
            Severity.CRITICAL,
            reason="verify failed: not running after 60s",
        )
        await Bus(redis).publish(event)
        await wait_deliveries(redis, 3)
    [slack], [discord], [ntfy] = receiver.at(SLACK), receiver.at(DISCORD), receiver.at(NTFY)
    assert slack.body["blocks"][0]["text"]["text"].startswith(
        "🔴 CRITICAL · name-c1 · restart → failed"
    )
    assert discord.body["content"] == "@here"
    assert discord.body["embeds"][0]["color"] == 0xE01E5A
    assert ntfy.body["topic"] == "ops-alerts"
    assert ntfy.body["priority"] == 5
    assert ntfy.headers["Authorization"] == "Bearer tk_ntfy_secret_1234"
    assert slack.headers["Content-Type"] == "application/json"


async def test_routes_narrow_what_each_channel_hears_when_the_user_sets_them(
    redis, redis_url, receiver
):
    async with alert_agent(
        redis, redis_url, receiver, alert_routes="info=slack;approval_request=all"
    ):
        await Bus(redis).publish(
            factories.remediation_complete("c1", RemediationStatus.SUCCEEDED, Severity.INFO)
        )
        await Bus(redis).publish(factories.approval_request("c2", "p-777"))
        await wait_deliveries(redis, 4)
    assert len(receiver.at(SLACK)) == 2
    assert len(receiver.at(DISCORD)) == 1
    [ntfy] = receiver.at(NTFY)
    assert "hemostat approve p-777" in ntfy.body["message"]


@pytest.mark.parametrize("only", ["slack", "discord"])
async def test_a_user_with_one_channel_hears_of_a_crash_in_dry_run(
    redis, redis_url, receiver, only
):
    """The defaults: whichever single channel someone configured, a dry-run outcome (info
    severity) of a crash reaches it, saying what HemoStat would have done."""
    async with alert_agent(redis, redis_url, receiver, channels=(only,)):
        await Bus(redis).publish(
            factories.remediation_complete(
                "c1", RemediationStatus.DRY_RUN, Severity.INFO, dry_run=True
            )
        )
        await wait_deliveries(redis, 1)
    [hit] = receiver.at(SLACK if only == "slack" else DISCORD)
    assert "would restart" in hit.raw
    assert "DRY-RUN" in hit.raw


async def test_a_heal_is_told_once_per_incident_and_every_failure_each_time(
    redis, redis_url, receiver
):
    async with alert_agent(redis, redis_url, receiver, channels=("slack",), alert_dedup_window_s=0):
        await Bus(redis).publish_many(
            [
                factories.remediation_complete("c1", RemediationStatus.SUCCEEDED, Severity.INFO)
                for _ in range(3)
            ]
            + [
                factories.remediation_complete("c1", RemediationStatus.FAILED, Severity.CRITICAL)
                for _ in range(2)
            ]
        )
        rows = await wait_deliveries(redis, 5)
    assert sorted(r["status"] for r in rows) == ["deduplicated"] * 2 + ["sent"] * 3
    texts = [h.raw for h in receiver.at(SLACK)]
    assert sum("succeeded" in t for t in texts) == 1
    assert sum("failed" in t for t in texts) == 2


async def test_slack_text_from_a_container_cannot_ping_the_channel_or_plant_links(
    redis, redis_url, receiver
):
    sneaky = factories.remediation_complete(
        "c1",
        RemediationStatus.FAILED,
        Severity.CRITICAL,
        reason="<!channel> wake up <https://evil.example|click here> <@U123>",
    )
    async with alert_agent(redis, redis_url, receiver, channels=("slack",)):
        await Bus(redis).publish(sneaky)
        await wait_deliveries(redis, 1)
    [hit] = receiver.at(SLACK)
    assert "<!channel>" not in hit.raw
    assert "<https://evil.example" not in hit.raw
    assert "<@U123>" not in hit.raw
    assert "&lt;!channel&gt;" in hit.raw


async def test_three_containers_three_messages_one_flapping_container_one(
    redis, redis_url, receiver
):
    bus = Bus(redis)
    clock = OffsetClock()
    async with alert_agent(
        redis, redis_url, receiver, channels=("slack",), alert_dedup_window_s=60, clock=clock
    ):
        await bus.publish_many(
            [
                factories.remediation_complete(c, RemediationStatus.FAILED, Severity.WARNING)
                for c in ("a", "b", "c")
            ]
        )
        await bus.publish_many(
            [
                factories.remediation_complete("flappy", RemediationStatus.FAILED, Severity.WARNING)
                for _ in range(5)
            ]
        )
        # Every event handled: 4 sent and 4 counted as duplicates in the delivery log.
        rows = await wait_deliveries(redis, 8)
        assert sorted(r["status"] for r in rows) == ["deduplicated"] * 4 + ["sent"] * 4
        assert len(receiver.at(SLACK)) == 4
        clock.advance(61)  # the window ends; the next message reports what was suppressed
        await bus.publish(
            factories.remediation_complete("flappy", RemediationStatus.FAILED, Severity.WARNING)
        )
        await wait_until(lambda: len(receiver.at(SLACK)) == 5, timeout=10)
    last = receiver.at(SLACK)[-1].body
    assert "4 similar message(s) suppressed" in last["blocks"][-1]["elements"][0]["text"]
    statuses = [d["status"] for d in await deliveries(redis)]
    assert statuses.count("sent") == 5


async def _history_len(redis, n):
    return await redis.xlen(keys.HISTORY) >= n


async def test_429_honours_retry_after_and_5xx_is_retried(redis, redis_url, receiver):
    receiver.script(SLACK, Scripted(status=429, retry_after="1"))
    receiver.script(DISCORD, Scripted(status=500), Scripted(status=502))
    async with alert_agent(redis, redis_url, receiver, channels=("slack", "discord")):
        await Bus(redis).publish(
            factories.remediation_complete("c1", RemediationStatus.FAILED, Severity.WARNING)
        )
        rows = await wait_deliveries(redis, 2)
    by_channel = {r["channel"]: r for r in rows}
    assert by_channel["slack"]["status"] == "sent"
    assert by_channel["slack"]["attempts"] == "2"
    slack_hits = receiver.at(SLACK)
    assert slack_hits[1].at - slack_hits[0].at >= 0.95, "waited for Retry-After"
    assert by_channel["discord"]["status"] == "sent"
    assert by_channel["discord"]["attempts"] == "3"


async def test_a_channel_that_keeps_failing_does_not_hold_back_the_others(
    redis, redis_url, receiver
):
    receiver.script(SLACK, *[Scripted(delay_s=2.0)] * 3)  # longer than the 1 s channel timeout
    receiver.default_status[NTFY] = 500
    async with alert_agent(redis, redis_url, receiver):
        event = factories.remediation_complete("c1", RemediationStatus.FAILED, Severity.CRITICAL)
        await Bus(redis).publish(event)
        rows = await wait_deliveries(redis, 3, timeout=20)
    by_channel = {r["channel"]: r for r in rows}
    assert by_channel["discord"]["status"] == "sent"
    slack = receiver.at(SLACK)
    assert len(slack) == 3
    assert receiver.at(DISCORD)[0].at < slack[1].at, "discord did not wait for slack's retries"
    assert by_channel["slack"]["status"] == "failed"
    assert "timed out" in by_channel["slack"]["detail"]
    assert by_channel["ntfy"]["status"] == "failed"
    assert by_channel["ntfy"]["attempts"] == "3"


async def test_a_wrong_webhook_is_not_retried(redis, redis_url, receiver):
    receiver.default_status[SLACK] = 404
    async with alert_agent(redis, redis_url, receiver, channels=("slack",)):
        await Bus(redis).publish(factories.escalation("c1"))
        [row] = await wait_deliveries(redis, 1)
    assert (row["status"], row["attempts"]) == ("failed", "1")


async def test_apprise_delivers_to_a_json_endpoint(redis, redis_url, receiver):
    async with alert_agent(redis, redis_url, receiver, channels=("apprise",)):
        await Bus(redis).publish(factories.escalation("c1", guard="crash_loop"))
        [row] = await wait_deliveries(redis, 1)
    assert row["status"] == "sent"
    [hit] = receiver.at(APPRISE)
    assert "crash_loop" in hit.body["title"]
    assert "crash_loop open" in hit.body["message"]


async def test_no_channel_configured_still_keeps_history(redis, redis_url, receiver):
    logs = io.StringIO()
    configure_logging("INFO", LogFormat.JSON, Redactor(), stream=logs)
    async with alert_agent(redis, redis_url, receiver, channels=()):
        await Bus(redis).publish_many([factories.false_alarm("c1"), factories.escalation("c2")])
        await wait_until(lambda: _history_len(redis, 2), timeout=10)
    assert receiver.hits == []
    assert await redis.xlen(keys.HISTORY_OF_TYPE + "false_alarm") == 1
    assert await redis.xlen(keys.HISTORY_OF_TYPE + "escalation") == 1
    assert '"event": "alert.notifications_off"' in logs.getvalue()


async def test_no_secret_reaches_a_notification(redis, redis_url, receiver):
    leaky = factories.remediation_complete(
        "c1",
        RemediationStatus.FAILED,
        Severity.CRITICAL,
        reason=f"exec printed DB_PASSWORD={CANARY}",
        # Shapes the redactor recognises, and a configured secret (the ntfy token) quoted bare.
        output=f"token: {CANARY}\nAuthorization: Bearer abcdefghijklmnopqrstuv\n"
        "the ntfy token is tk_ntfy_secret_1234",
    )
    async with alert_agent(
        redis, redis_url, receiver, channels=("slack", "discord", "ntfy", "apprise")
    ):
        await Bus(redis).publish(leaky)
        await wait_deliveries(redis, 4)
    text = receiver.all_text()
    assert len(receiver.hits) == 4
    assert CANARY not in text
    assert "abcdefghijklmnopqrstuv" not in text
    bodies = "\n".join(h.raw for h in receiver.hits)  # (ntfy's own auth header carries it)
    assert "tk_ntfy_secret_1234" not in bodies, "a configured secret is masked even bare"
    assert "DB_PASSWORD=***" in text, "masked, not dropped"

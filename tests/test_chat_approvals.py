"""Approving from Slack and Discord: the Alert agent runs in-process on a real Redis with its
interactions endpoint on a real port; Slack and Discord are played by this test, which signs its
requests the way they do — an HMAC with a signing secret it generates, an Ed25519 key pair it
generates — and stands up a local server for the webhooks and Slack's `response_url`.

A signed click by an allowed user decides through the same compare-and-set as the CLI (first
decision wins) and the message is updated; a bad signature, a stale timestamp, an unknown user
and a replay are each refused and change nothing."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import secrets
import time
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from nacl.signing import SigningKey

from agents.alert import message
from agents.alert.agent import AlertAgent, build_channels, button_platforms
from agents.alert.interactions_http import Answer, InteractionsServer
from shared.approvals import ApprovalStore, ProposalState, decide
from shared.bus import Bus
from shared.errors import ConfigError
from shared.events import Channel, Decision
from shared.keys import CHAT_APPROVE, CHAT_DENY
from shared.redaction import Redactor
from shared.redis_server import free_port
from shared.settings import load_settings
from tests.conftest import make_settings
from tests.support import factories
from tests.support.bus import wait_until
from tests.support.streams import events_on
from tests.support.webhooks import Receiver

pytestmark = pytest.mark.redis

SLACK_HOOK, DISCORD_HOOK = "/slack/T000/B000/X", "/discord/api/webhooks/1/abc"
SLACK_USER, DISCORD_USER = "U0APPROVER", "80351110224678912"


class Keys:
    """What a Slack app and a Discord application hold, made fresh for each test."""

    def __init__(self) -> None:
        self.slack_secret = secrets.token_hex(16)
        self.discord_key = SigningKey.generate()

    @property
    def discord_public_hex(self) -> str:
        return self.discord_key.verify_key.encode().hex()


@pytest.fixture
def receiver():
    server = Receiver().start()
    yield server
    server.stop()


@pytest.fixture
def keys():
    return Keys()


class Chat:
    """The running endpoint, and requests signed as Slack and Discord sign them."""

    def __init__(self, base: str, keys: Keys, receiver: Receiver, http: httpx.AsyncClient):
        self.base = base
        self.keys = keys
        self.receiver = receiver
        self.http = http

    # ---- Slack: a form with one `payload` field; v0 HMAC-SHA256 over `v0:<ts>:<body>`

    def slack_payload(
        self,
        proposal_id: str,
        action: str = CHAT_APPROVE,
        user: str = SLACK_USER,
        response_path: str = "/slack/response/1",
        blocks: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        return {
            "type": "block_actions",
            "user": {"id": user, "username": "someone", "team_id": "T000"},
            "team": {"id": "T000"},
            "actions": [{"action_id": action, "value": proposal_id, "type": "button"}],
            "response_url": self.receiver.url(response_path),
            "message": {"blocks": blocks or []},
        }

    def slack_request(
        self, payload: dict[str, Any], *, ts: int | None = None, secret: str | None = None
    ) -> tuple[bytes, dict[str, str]]:
        body = urlencode({"payload": json.dumps(payload)}).encode()
        stamp = str(int(time.time()) if ts is None else ts)
        mac = hmac.new(
            (secret or self.keys.slack_secret).encode(),
            b"v0:" + stamp.encode() + b":" + body,
            hashlib.sha256,
        )
        headers = {
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": "v0=" + mac.hexdigest(),
            "Content-Type": "application/x-www-form-urlencoded",
        }
        return body, headers

    async def post_slack(self, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return await self.http.post(
            f"{self.base}/slack/interactions", content=body, headers=headers
        )

    # ---- Discord: JSON; Ed25519 over `<timestamp><body>`

    def discord_click(self, custom_id: str, user: str = DISCORD_USER) -> dict[str, Any]:
        return {
            "type": 3,
            "id": "1",
            "application_id": "2",
            "token": "interaction-token",
            "member": {"user": {"id": user, "username": "someone"}},
            "data": {"custom_id": custom_id, "component_type": 2},
        }

    def discord_request(
        self, payload: dict[str, Any], *, ts: int | None = None, key: SigningKey | None = None
    ) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(payload).encode()
        stamp = str(int(time.time()) if ts is None else ts)
        signed = (key or self.keys.discord_key).sign(stamp.encode() + body)
        headers = {
            "X-Signature-Ed25519": signed.signature.hex(),
            "X-Signature-Timestamp": stamp,
            "Content-Type": "application/json",
        }
        return body, headers

    async def post_discord(self, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return await self.http.post(
            f"{self.base}/discord/interactions", content=body, headers=headers
        )


def chat_settings(redis_url: str, receiver: Receiver, keys: Keys, **kw: Any):
    values: dict[str, Any] = {
        "slack_webhook_url": receiver.url(SLACK_HOOK),
        "discord_webhook_url": receiver.url(DISCORD_HOOK),
        "slack_signing_secret": keys.slack_secret,
        "slack_approvers": f"{SLACK_USER},U0OTHER",
        "discord_public_key": keys.discord_public_hex,
        "discord_approvers": DISCORD_USER,
        "interactions_port": free_port(),
        "alert_channel_timeout_s": 2.0,
    }
    return make_settings(redis_url, **(values | kw))


@contextlib.asynccontextmanager
async def running(redis, settings, receiver, keys):
    http = httpx.AsyncClient()
    agent = AlertAgent(
        settings=settings,
        redis=redis,
        channels=build_channels(settings, http, Redactor(settings.secret_values())),
        http=http,
    )
    task = asyncio.create_task(agent.run())
    base = f"http://127.0.0.1:{settings.interactions_port}"
    async with httpx.AsyncClient(timeout=10) as client:

        async def up() -> bool:
            with contextlib.suppress(httpx.TransportError):
                return (await client.get(f"{base}/healthz")).status_code == 200
            return False

        try:
            await wait_until(up, what="the interactions endpoint")
            yield Chat(base, keys, receiver, client)
        finally:
            agent.stop()
            await asyncio.wait_for(task, 30)


@pytest.fixture
async def chat(redis, redis_url, receiver, keys):
    async with running(redis, chat_settings(redis_url, receiver, keys), receiver, keys) as c:
        yield c


async def propose(redis, key: str = "p1", container: str = "c1"):
    request = factories.remediation_needed(container)
    return await ApprovalStore(redis).create(request, 900, "runbook requires approval", key=key)


async def delivered_request(redis, receiver, proposal_id: str) -> tuple[Any, Any]:
    """Publish the approval request and return what Slack and Discord were sent."""
    await Bus(redis).publish(factories.approval_request(proposal_id=proposal_id))
    await wait_until(
        lambda: receiver.at(SLACK_HOOK) and receiver.at(DISCORD_HOOK), what="both deliveries"
    )
    return receiver.at(SLACK_HOOK)[-1].body, receiver.at(DISCORD_HOOK)[-1].body


async def state(redis, proposal_id: str):
    proposal = await ApprovalStore(redis).get(proposal_id)
    assert proposal is not None
    return proposal


# ---------------------------------------------------------------- what is accepted


async def test_a_signed_slack_click_approves_and_the_message_says_who(chat, redis, receiver):
    proposal = await propose(redis)
    slack_body, _ = await delivered_request(redis, receiver, proposal.id)
    [buttons] = [b for b in slack_body["blocks"] if b["type"] == "actions"]
    approve = next(e for e in buttons["elements"] if e["action_id"] == CHAT_APPROVE)
    assert approve["value"] == proposal.id

    # Slack echoes the message it shows; the click is on the button the agent sent.
    payload = chat.slack_payload(
        approve["value"], approve["action_id"], blocks=slack_body["blocks"]
    )
    answer = await chat.post_slack(*chat.slack_request(payload))
    assert answer.status_code == 200, answer.text

    decided = await state(redis, proposal.id)
    assert decided.state is ProposalState.APPROVED
    assert decided.decided_by == f"slack:{SLACK_USER}"
    [event] = await events_on(redis, Channel.APPROVAL_DECISION)
    assert event.payload.actor == f"slack:{SLACK_USER}"
    assert event.payload.decision is Decision.APPROVED
    assert event.source.agent == "slack"

    await wait_until(lambda: receiver.at("/slack/response/1"), what="the message update")
    [update] = receiver.at("/slack/response/1")
    assert update.body["replace_original"] is True
    assert f"Approved by <@{SLACK_USER}>" in update.body["text"]
    assert proposal.id in update.body["text"]
    types = [b["type"] for b in update.body["blocks"]]
    assert "actions" not in types, "the buttons are gone"
    assert types[0] == "header", "the original message stays above the outcome"


async def test_a_signed_discord_click_denies_and_the_answer_updates_the_message(
    chat, redis, receiver
):
    proposal = await propose(redis)
    _, discord_body = await delivered_request(redis, receiver, proposal.id)
    [row] = discord_body["components"]
    custom_ids = [b["custom_id"] for b in row["components"]]
    assert custom_ids == [f"hemostat:approve:{proposal.id}", f"hemostat:deny:{proposal.id}"]

    answer = await chat.post_discord(*chat.discord_request(chat.discord_click(custom_ids[1])))
    assert answer.status_code == 200, answer.text
    reply = answer.json()
    assert reply["type"] == 7, "UPDATE_MESSAGE"
    assert reply["data"]["components"] == []
    assert f"Denied by <@{DISCORD_USER}>" in reply["data"]["content"]
    assert reply["data"]["allowed_mentions"] == {"parse": []}

    decided = await state(redis, proposal.id)
    assert decided.state is ProposalState.DENIED
    assert decided.decided_by == f"discord:{DISCORD_USER}"
    assert decided.decision_reason == "denied in Discord"
    [event] = await events_on(redis, Channel.APPROVAL_DECISION)
    assert (event.payload.actor, event.source.agent) == (f"discord:{DISCORD_USER}", "discord")


async def test_discord_ping_is_answered_with_pong_and_an_unsigned_one_is_refused(chat):
    # Discord checks a new endpoint URL with both: a signed PING and a badly signed one.
    ping = {"type": 1, "id": "1", "application_id": "2", "token": "t"}
    assert (await chat.post_discord(*chat.discord_request(ping))).json() == {"type": 1}
    body, headers = chat.discord_request(ping)
    headers["X-Signature-Ed25519"] = "00" * 64
    assert (await chat.post_discord(body, headers)).status_code == 401


async def test_first_decision_wins_across_chat_and_the_dashboard(chat, redis, receiver):
    proposal = await propose(redis)
    await decide(redis, proposal.id, Decision.DENIED, "dashboard:alice", "not now", via="dashboard")

    payload = chat.slack_payload(proposal.id, response_path="/slack/response/late")
    answer = await chat.post_slack(*chat.slack_request(payload))
    assert answer.status_code == 200
    await wait_until(lambda: receiver.at("/slack/response/late"), what="the refusal update")
    text = receiver.at("/slack/response/late")[0].body["text"]
    assert f"<@{SLACK_USER}> could not approve" in text
    assert "already denied by dashboard:alice" in text

    late = await chat.post_discord(
        *chat.discord_request(chat.discord_click(f"hemostat:approve:{proposal.id}"))
    )
    assert late.json()["type"] == 7
    assert "already denied by dashboard:alice" in late.json()["data"]["content"]
    assert (await state(redis, proposal.id)).decided_by == "dashboard:alice"
    assert len(await events_on(redis, Channel.APPROVAL_DECISION)) == 1


# ---------------------------------------------------------------- what is refused


def slack_forgeries(chat: Chat, proposal_id: str) -> dict[str, tuple[bytes, dict[str, str], int]]:
    """Each forged click (it would approve `proposal_id`) and the status it must get."""
    payload = chat.slack_payload(proposal_id, response_path="/slack/response/forged")
    now = int(time.time())
    forged: dict[str, tuple[bytes, dict[str, str], int]] = {}
    body, headers = chat.slack_request(payload, secret="not-the-signing-secret")
    forged["bad signature"] = (body, headers, 401)
    body, headers = chat.slack_request(payload)
    forged["no signature"] = (body, {k: v for k, v in headers.items() if "Signature" not in k}, 401)
    body, headers = chat.slack_request(payload)
    tampered = body.replace(b"U0APPROVER", b"U0ATTACKER")
    forged["body changed after signing"] = (tampered, headers, 401)
    forged["stale timestamp"] = (*chat.slack_request(payload, ts=now - 301), 401)
    # A minute past the bound: `now` is whole seconds read before the posts, so +301 could fall
    # back inside the bound by the time the server reads its clock. The edge: test_stale_bounds.
    forged["timestamp from the future"] = (*chat.slack_request(payload, ts=now + 360), 401)
    stranger = chat.slack_payload(
        proposal_id, user="U0STRANGER", response_path="/slack/response/forged"
    )
    forged["unknown user"] = (*chat.slack_request(stranger), 403)
    return forged


async def test_every_forged_slack_click_is_refused_and_changes_nothing(chat, redis, receiver):
    proposal = await propose(redis)
    for what, (body, headers, status) in slack_forgeries(chat, proposal.id).items():
        answer = await chat.post_slack(body, headers)
        assert answer.status_code == status, (what, answer.text)
        assert (await state(redis, proposal.id)).state is ProposalState.PENDING, what

    # A replay: the same signed request twice. The first decides; the second is refused.
    other = await propose(redis, key="p2")
    replayed = chat.slack_request(
        chat.slack_payload(other.id, CHAT_DENY, response_path="/slack/response/once")
    )
    assert (await chat.post_slack(*replayed)).status_code == 200
    again = await chat.post_slack(*replayed)
    assert again.status_code == 401
    assert "replayed" in again.json()["error"]

    # A later genuine click's update marks the point by which any update of the refused
    # requests (had they been acted on) would have been sent.
    last = chat.slack_request(chat.slack_payload(proposal.id, response_path="/slack/response/ok"))
    assert (await chat.post_slack(*last)).status_code == 200
    await wait_until(lambda: receiver.at("/slack/response/ok"), what="the genuine update")
    assert receiver.at("/slack/response/forged") == []
    assert len(receiver.at("/slack/response/once")) == 1, "the replay updated nothing"
    decisions = await events_on(redis, Channel.APPROVAL_DECISION)
    assert [(e.payload.proposal_id, e.payload.actor) for e in decisions] == [
        (other.id, f"slack:{SLACK_USER}"),
        (proposal.id, f"slack:{SLACK_USER}"),
    ]


async def test_every_forged_discord_interaction_is_refused_and_changes_nothing(chat, redis):
    proposal = await propose(redis)
    click = chat.discord_click(f"hemostat:approve:{proposal.id}")
    now = int(time.time())
    impostor = SigningKey.generate()
    body, headers = chat.discord_request(click)
    forged = {
        "signed by another key": (*chat.discord_request(click, key=impostor), 401),
        "stale timestamp": (*chat.discord_request(click, ts=now - 301), 401),
        "timestamp from the future": (*chat.discord_request(click, ts=now + 360), 401),
        "timestamp changed after signing": (
            body,
            headers | {"X-Signature-Timestamp": str(now - 1)},
            401,
        ),
        "signature not hex": (body, headers | {"X-Signature-Ed25519": "zz" * 64}, 401),
        "unknown user": (
            *chat.discord_request(chat.discord_click(click["data"]["custom_id"], user="42")),
            403,
        ),
    }
    for what, (b, h, status) in forged.items():
        answer = await chat.post_discord(b, h)
        assert answer.status_code == status, (what, answer.text)
        assert answer.json().get("type") is None, f"{what}: no message update"
        assert (await state(redis, proposal.id)).state is ProposalState.PENDING, what
    assert await events_on(redis, Channel.APPROVAL_DECISION) == []

    first = await chat.post_discord(body, headers)
    assert first.status_code == 200
    assert first.json()["type"] == 7
    replay = await chat.post_discord(body, headers)
    assert replay.status_code == 401
    assert "replayed" in replay.json()["error"]
    assert len(await events_on(redis, Channel.APPROVAL_DECISION)) == 1


async def test_signed_but_malformed_requests_are_refused_with_400(chat, redis):
    proposal = await propose(redis)
    signed_nonsense = chat.slack_request({"type": "view_submission", "user": {"id": SLACK_USER}})
    assert (await chat.post_slack(*signed_nonsense)).status_code == 400
    unknown_button = chat.slack_payload(proposal.id, action="someone-elses:button")
    assert (await chat.post_slack(*chat.slack_request(unknown_button))).status_code == 400
    body, headers = chat.discord_request({"type": 3})
    assert (await chat.post_discord(b"not json", chat.discord_request({})[1])).status_code == 401
    assert (await chat.post_discord(body, headers)).status_code == 400
    assert (await state(redis, proposal.id)).state is ProposalState.PENDING


# ---------------------------------------------------------------- the door


async def test_only_the_configured_paths_are_served(redis, redis_url, receiver, keys):
    settings = chat_settings(redis_url, receiver, keys, discord_public_key=None)
    async with running(redis, settings, receiver, keys) as chat:
        body, headers = chat.discord_request(chat.discord_click("hemostat:approve:p-1"))
        assert (await chat.post_discord(body, headers)).status_code == 404
        assert (await chat.http.post(f"{chat.base}/elsewhere", content=body)).status_code == 404


class Door:
    """The HTTP server alone, with a handler that only records what got through."""

    def __init__(self, **kw: Any) -> None:
        self.bodies: list[bytes] = []
        self.kw = kw

    async def __aenter__(self) -> Door:
        async def handle(path: str, headers: dict[str, str], body: bytes) -> Answer:
            self.bodies.append(body)
            return Answer(200, {"got": len(body)})

        self.server = InteractionsServer(
            "127.0.0.1",
            0,
            handle,
            asyncio.get_running_loop(),
            paths=frozenset({"/slack/interactions"}),
            **self.kw,
        )
        self.server.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await asyncio.to_thread(self.server.stop)

    async def raw(self, request: bytes, trickle: tuple[bytes, ...] = (), pause: float = 0) -> bytes:
        """Send `request`, then `trickle` one part per `pause`; return the first answer bytes."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.server.port)
        writer.write(request)
        await writer.drain()

        async def dribble() -> None:
            with contextlib.suppress(ConnectionError):
                for part in trickle:
                    await asyncio.sleep(pause)
                    writer.write(part)
                    await writer.drain()

        feeding = asyncio.create_task(dribble())
        try:
            return await asyncio.wait_for(reader.read(65536), timeout=30)
        finally:
            feeding.cancel()
            writer.close()


HEAD = b"POST /slack/interactions HTTP/1.1\r\nHost: x\r\n"


async def test_a_body_larger_than_allowed_is_refused_before_it_is_read():
    async with Door() as door:
        # Announces 10 MiB and sends none of it: the answer comes at once.
        answer = await door.raw(HEAD + b"Content-Length: 10485760\r\n\r\n")
        elsewhere = await door.raw(b"POST /other HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
    assert answer.split(b" ", 2)[1] == b"413"
    assert elsewhere.split(b" ", 2)[1] == b"404"
    assert door.bodies == []


async def test_a_chunked_body_is_read_within_the_same_limit():
    async with Door(max_body=10) as door:
        ok = await door.raw(
            HEAD + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        big = await door.raw(HEAD + b"Transfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n")
        no_length = await door.raw(HEAD + b"\r\n")
    assert ok.startswith(b"HTTP/1.1 200")
    assert big.split(b" ", 2)[1] == b"413"
    assert no_length.split(b" ", 2)[1] == b"411"
    assert door.bodies == [b"abcde"]


async def test_a_client_that_trickles_its_body_is_cut_off_at_the_deadline():
    async with Door(read_timeout_s=1.0, body_deadline_s=1.5) as door:
        started = time.monotonic()
        # Each byte comes before the per-read timeout, but the whole body never arrives in time.
        answer = await door.raw(HEAD + b"Content-Length: 50\r\n\r\n", (b"x",) * 40, pause=0.3)
        took = time.monotonic() - started
    assert answer.split(b" ", 2)[1] == b"408", answer[:60]
    assert took < 10
    assert door.bodies == []


# ---------------------------------------------------------------- buttons only when verifiable


def test_no_buttons_without_the_secret_or_key():
    n = message.render(factories.approval_request(proposal_id="p-123"))
    assert "actions" not in [b["type"] for b in message.slack(n)["blocks"]]
    assert "components" not in message.discord(n, True)
    assert "actions" in [b["type"] for b in message.slack(n, buttons=True)["blocks"]]
    assert "components" in message.discord(n, True, buttons=True)
    # Buttons are for proposals only.
    other = message.render(factories.escalation())
    assert "actions" not in [b["type"] for b in message.slack(other, buttons=True)["blocks"]]
    assert "components" not in message.discord(other, True, buttons=True)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, set()),
        ({"slack_signing_secret": "s", "slack_approvers": "U1"}, set()),  # no endpoint
        ({"interactions_port": 8091, "slack_approvers": "U1", "discord_approvers": "1"}, set()),
        ({"interactions_port": 8091, "slack_signing_secret": "s"}, set()),  # nobody allowed
        (
            {"interactions_port": 8091, "slack_signing_secret": "s", "slack_approvers": "U1"},
            {"slack"},
        ),
        (
            {"interactions_port": 8091, "discord_public_key": "ab" * 32, "discord_approvers": "1"},
            {"discord"},
        ),
    ],
)
def test_buttons_are_sent_only_where_a_click_could_be_verified_and_allowed(settings, expected):
    assert button_platforms(make_settings("redis://unused", **settings)) == expected


async def test_the_agent_sends_no_buttons_without_the_secret_and_key(redis, redis_url, receiver):
    settings = make_settings(
        redis_url,
        slack_webhook_url=receiver.url(SLACK_HOOK),
        discord_webhook_url=receiver.url(DISCORD_HOOK),
    )
    http = httpx.AsyncClient()
    agent = AlertAgent(
        settings=settings,
        redis=redis,
        channels=build_channels(settings, http, Redactor([])),
        http=http,
    )
    task = asyncio.create_task(agent.run())
    try:
        slack_body, discord_body = await delivered_request(redis, receiver, "p-123")
    finally:
        agent.stop()
        await asyncio.wait_for(task, 30)
    assert "actions" not in [b["type"] for b in slack_body["blocks"]]
    assert "components" not in discord_body
    assert "hemostat approve p-123" in json.dumps(slack_body), "the CLI command stays"


async def test_an_endpoint_with_nothing_to_verify_with_refuses_to_start(redis, redis_url):
    settings = make_settings(redis_url, interactions_port=free_port())
    agent = AlertAgent(settings=settings, redis=redis, channels=[])
    with pytest.raises(ConfigError, match="SLACK_SIGNING_SECRET"):
        await agent.on_start()


def test_approver_lists_take_ids_not_names(monkeypatch):
    monkeypatch.setenv("HEMOSTAT_SLACK_APPROVERS", "U012AB3CD, @alice")
    with pytest.raises(ConfigError, match=r"HEMOSTAT_SLACK_APPROVERS.*@alice"):
        load_settings(env_file=None)
    monkeypatch.setenv("HEMOSTAT_SLACK_APPROVERS", " U012AB3CD ,W0ABC ")
    monkeypatch.setenv("HEMOSTAT_DISCORD_APPROVERS", "alice#1234")
    with pytest.raises(ConfigError, match="HEMOSTAT_DISCORD_APPROVERS"):
        load_settings(env_file=None)
    monkeypatch.delenv("HEMOSTAT_DISCORD_APPROVERS")
    assert load_settings(env_file=None).slack_approvers == "U012AB3CD,W0ABC"
    monkeypatch.setenv("DISCORD_PUBLIC_KEY", "not-a-key")
    with pytest.raises(ConfigError, match="DISCORD_PUBLIC_KEY"):
        load_settings(env_file=None)


def test_stale_bounds_a_timestamp_either_way_at_300_seconds():
    from agents.alert.interactions import _stale

    now = 1_000_000.0
    assert _stale(str(int(now) - 300), now) is None
    assert _stale(str(int(now) + 300), now) is None
    assert _stale(str(int(now) - 301), now) is not None
    assert _stale(str(int(now) + 301), now) is not None
    assert _stale("12ab", now) == "missing or malformed request timestamp"

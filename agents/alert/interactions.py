"""Approvals from Slack and Discord: what one click on an Approve / Deny button may do.

A click arrives as an HTTP request the chat platform signed. Before anything else it is verified
— Slack's with the app's signing secret through slack_sdk's `SignatureVerifier`, Discord's with
the application's Ed25519 public key through PyNaCl — and refused (401) when the signature is
wrong, its timestamp is more than five minutes away, or the same signature was already seen (a
replay: each one is remembered in Redis for as long as it could still pass). Then a user outside
the platform's allowlist is refused (403), and only then does the click decide, through
`shared.approvals.decide` — the compare-and-set the CLI and the dashboard use, so the first
decision wins wherever it is made, and the actor is `slack:<user id>` / `discord:<user id>`.

The message is updated with the outcome, buttons removed: Slack through the click's
`response_url` (after the click is acknowledged: Slack wants an answer within 3 s), Discord in the
interaction's own answer (UPDATE_MESSAGE). A decision the CAS refuses (expired, already decided)
updates the message with the reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qs

import httpx
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.asyncio import Redis
from slack_sdk.signature import Clock as SlackClock
from slack_sdk.signature import SignatureVerifier

from agents.alert.interactions_http import Answer
from agents.alert.message import slack_escape
from shared import keys
from shared.approvals import Proposal, decide
from shared.backoff import backoff_delay
from shared.clock import Clock
from shared.errors import ApprovalError, BusError
from shared.events import Decision
from shared.log import Logger
from shared.model import describe_validation_error
from shared.redaction import Redactor
from shared.redis_client import CONNECTION_ERRORS

__all__ = [
    "DISCORD_PATH",
    "MAX_AGE_S",
    "SLACK_PATH",
    "DiscordInteraction",
    "DiscordVerifier",
    "Interactions",
    "Outcome",
    "SlackClick",
    "SlackVerifier",
]

SLACK_PATH = "/slack/interactions"
DISCORD_PATH = "/discord/interactions"
MAX_AGE_S = 300  # Slack's bound on a request's timestamp (either way), applied to Discord too
# A signature whose timestamp is MAX_AGE_S ahead of our clock still passes MAX_AGE_S after it:
# remembering it twice that long covers every moment it could be replayed.
REPLAY_TTL_S = 2 * MAX_AGE_S
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_PROPOSAL_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_VERBS = {keys.CHAT_APPROVE: Decision.APPROVED, keys.CHAT_DENY: Decision.DENIED}
_UPDATE_ATTEMPTS = 3


# ---------------------------------------------------------------- verification (pure)


class _SlackClockAdapter(SlackClock):
    """slack_sdk's verifier reads our clock, so it and our staleness check agree."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def now(self) -> float:
        return self._clock.time()


def _stale(timestamp: str | None, now: float) -> str | None:
    if not timestamp or not _TIMESTAMP.fullmatch(timestamp):
        return "missing or malformed request timestamp"
    if abs(now - int(timestamp)) > MAX_AGE_S:
        return f"stale request: its timestamp is more than {MAX_AGE_S}s from now"
    return None


class SlackVerifier:
    """`X-Slack-Signature` over `v0:<timestamp>:<body>` with the signing secret."""

    platform = "slack"

    def __init__(self, signing_secret: str, clock: Clock) -> None:
        self._clock = clock
        self._verifier = SignatureVerifier(signing_secret, clock=_SlackClockAdapter(clock))

    def refusal(self, headers: dict[str, str], body: bytes) -> str | None:
        """None when the request is Slack's and fresh; otherwise why not."""
        signature = headers.get("x-slack-signature")
        timestamp = headers.get("x-slack-request-timestamp")
        if not signature:
            return "missing X-Slack-Signature"
        stale = _stale(timestamp, self._clock.time())
        if stale:
            return stale
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return "bad signature"  # Slack signs UTF-8 text; these bytes were not signed by it
        if not self._verifier.is_valid(text, timestamp, signature):
            return "bad signature"
        return None

    @staticmethod
    def signature(headers: dict[str, str]) -> str:
        return headers.get("x-slack-signature", "")


class DiscordVerifier:
    """`X-Signature-Ed25519` over `<X-Signature-Timestamp><body>` with the public key."""

    platform = "discord"

    def __init__(self, public_key_hex: str, clock: Clock) -> None:
        self._clock = clock
        self._key = VerifyKey(bytes.fromhex(public_key_hex))

    def refusal(self, headers: dict[str, str], body: bytes) -> str | None:
        signature = headers.get("x-signature-ed25519")
        timestamp = headers.get("x-signature-timestamp")
        if not signature:
            return "missing X-Signature-Ed25519"
        stale = _stale(timestamp, self._clock.time())
        if stale:
            return stale
        assert timestamp is not None
        try:
            self._key.verify(timestamp.encode() + body, bytes.fromhex(signature))
        except (BadSignatureError, ValueError):  # ValueError: not hex, or not 64 bytes
            return "bad signature"
        return None

    @staticmethod
    def signature(headers: dict[str, str]) -> str:
        return headers.get("x-signature-ed25519", "")


Verifier = SlackVerifier | DiscordVerifier


# ---------------------------------------------------------------- payloads (validated)


class _External(BaseModel):
    # The platforms add fields over time: tolerate them, validate what we use.
    model_config = ConfigDict(frozen=True, extra="ignore")


class _Id(_External):
    id: str = Field(min_length=1, max_length=64)


class _SlackAction(_External):
    action_id: str
    value: str = ""


class _SlackMessage(_External):
    blocks: list[dict[str, Any]] = []


class SlackClick(_External):
    type: Literal["block_actions"]
    user: _Id
    actions: list[_SlackAction] = Field(min_length=1, max_length=5)
    response_url: str = Field(pattern=r"^https?://", max_length=2048)
    message: _SlackMessage | None = None


class _DiscordMember(_External):
    user: _Id


class _DiscordData(_External):
    custom_id: str = Field(default="", max_length=100)


class DiscordInteraction(_External):
    type: int
    member: _DiscordMember | None = None  # in a server
    user: _Id | None = None  # in a direct message
    data: _DiscordData | None = None

    @property
    def user_id(self) -> str | None:
        if self.member is not None:
            return self.member.user.id
        return self.user.id if self.user is not None else None


DISCORD_PING, DISCORD_COMPONENT = 1, 3
DISCORD_PONG, DISCORD_UPDATE_MESSAGE = 1, 7


@dataclass(frozen=True)
class Outcome:
    decision: Decision
    proposal_id: str
    mention: str  # how the platform names the user (`<@U123>`)
    proposal: Proposal | None = None  # decided: the proposal as it now is
    refused: str = ""  # not decided: why (the CAS's reason)

    def text(self, redactor: Redactor, escape: bool) -> str:
        def clean(value: str) -> str:
            value = redactor.text(value)
            return slack_escape(value) if escape else value

        verb = "approve" if self.decision is Decision.APPROVED else "deny"
        if self.refused:
            return f"⚠️ {self.mention} could not {verb}: {clean(self.refused)}"
        icon = "✅" if self.decision is Decision.APPROVED else "⛔"
        what = f"proposal {self.proposal_id}"
        if self.proposal is not None:
            p = self.proposal
            target = p.container_name or p.container_id[:12]
            what = clean(f"{p.action_type} ({p.action_id}) on {target}") + f" · {what}"
        return f"{icon} {self.decision.value.capitalize()} by {self.mention}: {what}"


# ---------------------------------------------------------------- the endpoint


class Interactions:
    """Answers the platforms' interaction requests; each configured platform has a path."""

    def __init__(
        self,
        *,
        redis: Redis,
        http: httpx.AsyncClient,
        redactor: Redactor,
        log: Logger,
        slack: SlackVerifier | None = None,
        slack_approvers: frozenset[str] = frozenset(),
        discord: DiscordVerifier | None = None,
        discord_approvers: frozenset[str] = frozenset(),
        update_timeout_s: float = 10.0,
    ) -> None:
        self.redis = redis
        self.http = http
        self.redactor = redactor
        self.log = log
        self.slack = slack
        self.discord = discord
        self.approvers = {"slack": slack_approvers, "discord": discord_approvers}
        self.update_timeout_s = update_timeout_s
        self.counts: dict[str, int] = {}
        self._updates: set[asyncio.Task[None]] = set()

    @property
    def paths(self) -> frozenset[str]:
        paths = set()
        if self.slack is not None:
            paths.add(SLACK_PATH)
        if self.discord is not None:
            paths.add(DISCORD_PATH)
        return frozenset(paths)

    async def aclose(self, timeout: float = 10.0) -> None:
        """Let the Slack message updates still under way finish (bounded)."""
        if self._updates:
            await asyncio.wait(self._updates, timeout=timeout)

    async def handle(self, path: str, headers: dict[str, str], body: bytes) -> Answer:
        verifier: Verifier | None = self.slack if path == SLACK_PATH else None
        if path == DISCORD_PATH:
            verifier = self.discord
        if verifier is None:
            return Answer(404, {"error": f"{path} is not configured"})
        refusal = verifier.refusal(headers, body)
        if refusal:
            return self._refuse(verifier.platform, 401, refusal)
        try:
            if not await self._first_sight(verifier.platform, verifier.signature(headers)):
                return self._refuse(verifier.platform, 401, "replayed request")
            if isinstance(verifier, SlackVerifier):
                return await self._slack(body)
            return await self._discord(body)
        except CONNECTION_ERRORS as exc:
            self.log.warning("alert.interaction_unavailable", error=str(exc))
            return Answer(503, {"error": "Redis is unavailable; try again"})

    # ------------------------------------------------------------ common steps

    def _count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def _refuse(self, platform: str, status: int, reason: str, **fields: Any) -> Answer:
        self._count(f"{platform}_refused")
        self.log.warning(
            "alert.interaction_refused", platform=platform, status=status, reason=reason, **fields
        )
        return Answer(status, {"error": reason})

    async def _first_sight(self, platform: str, signature: str) -> bool:
        """Remember a verified signature; False if it was already seen (a replay)."""
        digest = hashlib.sha256(signature.encode()).hexdigest()[:32]
        key = f"{keys.INTERACTION_SEEN}{platform}:{digest}"
        return bool(await self.redis.set(key, "1", nx=True, ex=REPLAY_TTL_S))

    async def _decide(
        self, platform: str, user_id: str, mention: str, decision: Decision, proposal_id: str
    ) -> Outcome:
        actor = f"{platform}:{user_id}"
        reason = "" if decision is Decision.APPROVED else f"denied in {platform.capitalize()}"
        try:
            proposal = await decide(self.redis, proposal_id, decision, actor, reason, via=platform)
        except ApprovalError as exc:
            self._count(f"{platform}_decision_refused")
            self.log.info(
                "alert.interaction_decision_refused",
                actor=actor,
                proposal=proposal_id,
                decision=decision.value,
                reason=str(exc),
            )
            return Outcome(decision, proposal_id, mention, refused=str(exc))
        except BusError as exc:
            # The CAS held (the publish comes after it); the Responder's sweep runs it anyway.
            self.log.warning(
                "alert.interaction_publish_failed", proposal=proposal_id, error=str(exc)
            )
            proposal = None
        self._count(f"{platform}_{decision.value}")
        self.log.info(
            "alert.interaction_decided", actor=actor, proposal=proposal_id, decision=decision.value
        )
        return Outcome(decision, proposal_id, mention, proposal=proposal)

    def _allowed(self, platform: str, user_id: str | None) -> bool:
        return user_id is not None and user_id in self.approvers[platform]

    # ------------------------------------------------------------ Slack

    async def _slack(self, body: bytes) -> Answer:
        try:
            form = parse_qs(body.decode("utf-8"), max_num_fields=20)
        except ValueError:
            return self._refuse("slack", 400, "too many form fields")
        raw = form.get("payload")
        if not raw:
            return self._refuse("slack", 400, "no payload field in the form")
        try:
            click = SlackClick.model_validate(json.loads(raw[0]))
        except (json.JSONDecodeError, ValidationError) as exc:
            why = describe_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
            return self._refuse("slack", 400, f"not a block_actions payload: {why}")
        action = click.actions[0]
        decision = _VERBS.get(action.action_id)
        if decision is None or not _PROPOSAL_ID.fullmatch(action.value):
            return self._refuse("slack", 400, f"not a HemoStat button: {action.action_id[:64]}")
        if not self._allowed("slack", click.user.id):
            return self._refuse("slack", 403, "user not allowed to decide", user=click.user.id)
        mention = f"<@{click.user.id}>"
        outcome = await self._decide("slack", click.user.id, mention, decision, action.value)
        blocks = click.message.blocks if click.message else []
        update = _slack_update(blocks, outcome.text(self.redactor, escape=True))
        task = asyncio.create_task(self._post_update(click.response_url, update))
        self._updates.add(task)
        task.add_done_callback(self._updates.discard)
        return Answer(200)  # the acknowledgement; the message changes through response_url

    async def _post_update(self, url: str, body: dict[str, Any]) -> None:
        detail = ""
        for attempt in range(1, _UPDATE_ATTEMPTS + 1):
            try:
                response = await self.http.post(url, json=body, timeout=self.update_timeout_s)
            except httpx.HTTPError as exc:
                detail = f"transport error: {type(exc).__name__}"
            else:
                if response.status_code < 300:
                    self._count("slack_updated")
                    return
                detail = f"HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code != 429:
                    break  # Slack will not change its mind (an expired or used-up response_url)
            if attempt < _UPDATE_ATTEMPTS:
                await asyncio.sleep(backoff_delay(attempt, base=0.5, cap=5.0))
        self._count("slack_update_failed")
        self.log.warning("alert.interaction_update_failed", platform="slack", detail=detail)

    # ------------------------------------------------------------ Discord

    async def _discord(self, body: bytes) -> Answer:
        try:
            interaction = DiscordInteraction.model_validate(json.loads(body))
        except (json.JSONDecodeError, UnicodeDecodeError, ValidationError) as exc:
            why = describe_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
            return self._refuse("discord", 400, f"not an interaction: {why}")
        if interaction.type == DISCORD_PING:
            return Answer(200, {"type": DISCORD_PONG})  # Discord checks the endpoint with it
        if interaction.type != DISCORD_COMPONENT or interaction.data is None:
            return self._refuse("discord", 400, f"unsupported interaction type {interaction.type}")
        verb, _, proposal_id = interaction.data.custom_id.rpartition(":")
        decision = _VERBS.get(verb)
        if decision is None or not _PROPOSAL_ID.fullmatch(proposal_id):
            return self._refuse("discord", 400, "not a HemoStat button")
        user_id = interaction.user_id
        if not self._allowed("discord", user_id):
            return self._refuse("discord", 403, "user not allowed to decide", user=user_id)
        assert user_id is not None
        outcome = await self._decide("discord", user_id, f"<@{user_id}>", decision, proposal_id)
        return Answer(
            200,
            {
                "type": DISCORD_UPDATE_MESSAGE,
                "data": {
                    "content": outcome.text(self.redactor, escape=False),
                    "components": [],  # the buttons go: the question is answered
                    "allowed_mentions": {"parse": []},  # names the user, pings nobody
                },
            },
        )


def _slack_update(blocks: list[dict[str, Any]], text: str) -> dict[str, Any]:
    """The original message without its buttons, the outcome below it."""
    kept = [b for b in blocks if b.get("type") != "actions"][:49]  # Slack allows 50 blocks
    outcome = {"type": "section", "text": {"type": "mrkdwn", "text": text[:2900]}}
    return {"replace_original": True, "text": text[:3000], "blocks": [*kept, outcome]}

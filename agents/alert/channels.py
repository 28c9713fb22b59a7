"""Notification channels: Slack and Discord webhooks, ntfy, and every other service through
apprise. Each retries timeouts and 5xx with backoff, honours 429's Retry-After, runs at most N
messages at once, and rests after repeated failures so it never holds the others back.

A channel's sender is a `Notifier` (a bus stream is `shared.events.Channel`); its `name` is the
channel name that routes, settings and the `hemostat:notifications` rows use."""

from __future__ import annotations

import asyncio
import email.utils
import time
from dataclasses import dataclass
from typing import Any

import httpx

from agents.alert import message
from agents.alert.message import Notification
from shared.backoff import backoff_delay
from shared.errors import NotificationError
from shared.log import get_logger
from shared.redaction import Redactor

__all__ = [
    "AppriseNotifier",
    "Delivery",
    "DiscordNotifier",
    "HttpNotifier",
    "Limits",
    "Notifier",
    "NtfyNotifier",
    "SlackNotifier",
    "retry_after",
]

log = get_logger(__name__)


@dataclass(frozen=True)
class Delivery:
    channel: str
    status: str  # sent | failed | skipped
    attempts: int
    detail: str
    latency_ms: float


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0
    max_attempts: int = 4
    retry_after_cap_s: float = 60.0
    concurrency: int = 4
    failure_limit: int = 5
    rest_s: float = 60.0
    backoff_base_s: float = 0.5


class _Retryable(NotificationError):
    def __init__(self, detail: str, delay: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.delay = delay


class Notifier:
    """Delivery with retries, a concurrency bound and a rest after repeated failures."""

    name = "channel"

    def __init__(self, limits: Limits, redactor: Redactor) -> None:
        self.limits = limits
        self.redactor = redactor
        self._slots = asyncio.Semaphore(limits.concurrency)
        self._failures = 0
        self._rest_until = 0.0

    async def deliver(self, n: Notification) -> Delivery:
        started = time.monotonic()
        if time.monotonic() < self._rest_until:
            return Delivery(
                self.name, "skipped", 0, "channel is resting after repeated failures", 0
            )
        attempts = 0
        detail = ""
        async with self._slots:
            while attempts < self.limits.max_attempts:
                attempts += 1
                try:
                    detail = await self._send(n)
                    self._failures = 0
                    return Delivery(self.name, "sent", attempts, detail, _ms(started))
                except _Retryable as exc:
                    detail = exc.detail
                    if attempts >= self.limits.max_attempts:
                        break
                    delay = exc.delay
                    if delay is None:
                        delay = backoff_delay(attempts, base=self.limits.backoff_base_s, cap=10)
                    if delay > self.limits.retry_after_cap_s:
                        detail += f"; Retry-After {delay:.0f}s exceeds the cap"
                        break
                    await asyncio.sleep(delay)
                except _Permanent as exc:
                    detail = str(exc)
                    break
        self._failures += 1
        if self._failures >= self.limits.failure_limit:
            self._rest_until = time.monotonic() + self.limits.rest_s
            log.warning("alert.channel_resting", channel=self.name, rest_s=self.limits.rest_s)
        return Delivery(self.name, "failed", attempts, detail, _ms(started))

    async def _send(self, n: Notification) -> str:
        raise NotImplementedError


class _Permanent(NotificationError):
    """A failure retrying cannot fix (a 4xx other than 429: a wrong or revoked webhook)."""


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


def retry_after(response: httpx.Response) -> float | None:
    """Seconds to wait from a 429: Retry-After (seconds or HTTP date), or Discord's JSON body."""
    header = response.headers.get("Retry-After")
    if header:
        try:
            return max(0.0, float(header))
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(header)
            if parsed is not None:
                return max(0.0, parsed.timestamp() - time.time())
    try:
        body = response.json()
    except ValueError:
        return None
    value = body.get("retry_after") if isinstance(body, dict) else None
    return float(value) if isinstance(value, int | float) else None


class HttpNotifier(Notifier):
    def __init__(
        self,
        http: httpx.AsyncClient,
        url: str,
        limits: Limits,
        redactor: Redactor,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(limits, redactor)
        self.http = http
        self.url = url
        self.headers = headers or {}

    def payload(self, n: Notification) -> dict[str, Any]:
        raise NotImplementedError

    async def _send(self, n: Notification) -> str:
        body = self.payload(n.redacted(self.redactor))
        try:
            response = await self.http.post(
                self.url, json=body, headers=self.headers, timeout=self.limits.timeout_s
            )
        except httpx.TimeoutException as exc:
            raise _Retryable(f"timed out after {self.limits.timeout_s:.0f}s") from exc
        except httpx.TransportError as exc:
            raise _Retryable(f"transport error: {type(exc).__name__}") from exc
        status = response.status_code
        if 200 <= status < 300:
            return f"HTTP {status}"
        if status == 429:
            raise _Retryable("HTTP 429 rate limited", retry_after(response) or 1.0)
        if status >= 500:
            raise _Retryable(f"HTTP {status}")
        raise _Permanent(f"HTTP {status}: {self.redactor.clip(response.text, 200)}")


class SlackNotifier(HttpNotifier):
    name = "slack"

    def __init__(self, *args: Any, buttons: bool = False, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.buttons = buttons  # Approve / Deny on approval requests

    def payload(self, n: Notification) -> dict[str, Any]:
        return message.slack(n, self.buttons)


class DiscordNotifier(HttpNotifier):
    name = "discord"

    def __init__(
        self, *args: Any, mention_critical: bool = True, buttons: bool = False, **kw: Any
    ) -> None:
        super().__init__(*args, **kw)
        self.mention_critical = mention_critical
        self.buttons = buttons  # Approve / Deny on approval requests

    def payload(self, n: Notification) -> dict[str, Any]:
        return message.discord(n, self.mention_critical, self.buttons)


class NtfyNotifier(HttpNotifier):
    name = "ntfy"

    def __init__(self, *args: Any, topic: str, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.topic = topic

    def payload(self, n: Notification) -> dict[str, Any]:
        return message.ntfy(n, self.topic)


class AppriseNotifier(Notifier):
    """Any service apprise knows (email, Telegram, PagerDuty, Teams, json://, ...)."""

    name = "apprise"

    def __init__(self, urls: list[str], limits: Limits, redactor: Redactor) -> None:
        super().__init__(limits, redactor)
        import apprise  # imported here: only deployments that configure it pay for it

        self._apprise = apprise
        self.client = apprise.Apprise()
        for url in urls:
            if not self.client.add(url):
                raise ValueError("an APPRISE_URLS entry is not a URL apprise understands")

    async def _send(self, n: Notification) -> str:
        kind = {
            "critical": self._apprise.NotifyType.FAILURE,
            "warning": self._apprise.NotifyType.WARNING,
        }.get(n.severity.value, self._apprise.NotifyType.INFO)
        safe = n.redacted(self.redactor)
        title, body = safe.header, safe.plain_text()
        try:
            result = await asyncio.wait_for(
                asyncio.to_thread(self.client.notify, body=body, title=title, notify_type=kind),
                timeout=self.limits.timeout_s * 2,
            )
        except TimeoutError as exc:
            raise _Retryable("apprise timed out") from exc
        if not result:
            raise _Retryable("apprise reported a failed delivery")
        return "delivered by apprise"

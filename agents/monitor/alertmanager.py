"""Alertmanager intake: `POST /webhook/alertmanager` with a version 4 webhook payload.

Parsing and conversion are pure; `WebhookServer` is a small stdlib HTTP server in a thread that
hands each request body to a coroutine on the agent's event loop and answers with its result."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from shared.errors import InvalidPayload
from shared.events import AlertKind, AlertStatus, Detector, HealthAlert, Severity
from shared.http_thread import ThreadedServer, on_loop, reply_json
from shared.log import get_logger
from shared.model import describe_validation_error

__all__ = [
    "MAX_BODY",
    "WEBHOOK_PATH",
    "AMAlert",
    "AMPayload",
    "ExternalAlert",
    "Ingest",
    "RateLimiter",
    "Response",
    "WebhookServer",
    "convert",
    "parse_payload",
]

log = get_logger(__name__)

WEBHOOK_PATH = "/webhook/alertmanager"
MAX_BODY = 1 << 20


class _External(BaseModel):
    # Alertmanager may add fields in new versions: tolerate them, validate what we use.
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class AMAlert(_External):
    status: Literal["firing", "resolved"]
    labels: dict[str, str] = Field(min_length=1)
    annotations: dict[str, str] = {}
    starts_at: AwareDatetime = Field(alias="startsAt")
    ends_at: datetime | None = Field(default=None, alias="endsAt")
    generator_url: str = Field(default="", alias="generatorURL")
    fingerprint: str = Field(min_length=1)

    @property
    def alertname(self) -> str:
        return self.labels.get("alertname", "unnamed")

    def dedup_key(self) -> str:
        """Same alert, same episode, same status: one health alert, however often delivered."""
        raw = f"{self.fingerprint}|{self.starts_at.isoformat()}|{self.status}"
        return hashlib.sha256(raw.encode()).hexdigest()[:32]


class AMPayload(_External):
    version: Literal["4"]
    status: Literal["firing", "resolved"]
    receiver: str = ""
    group_key: str = Field(default="", alias="groupKey")
    external_url: str = Field(default="", alias="externalURL")
    alerts: list[AMAlert] = Field(min_length=1)


def parse_payload(body: bytes) -> AMPayload:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidPayload(f"body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidPayload("body must be a JSON object")
    try:
        return AMPayload.model_validate(data)
    except ValidationError as exc:
        raise InvalidPayload(describe_validation_error(exc)) from exc


_SEVERITY = {
    "critical": Severity.CRITICAL,
    "page": Severity.CRITICAL,
    "error": Severity.CRITICAL,
    "warning": Severity.WARNING,
    "warn": Severity.WARNING,
    "info": Severity.INFO,
    "none": Severity.INFO,
}


@dataclass(frozen=True)
class ExternalAlert:
    """One Alertmanager alert, converted: what the Monitor publishes for it."""

    dedup_key: str
    severity: Severity
    container_name: str | None
    container_id: str | None
    service: str | None
    payload: HealthAlert
    occurred_at: datetime


def convert(alert: AMAlert) -> ExternalAlert:
    labels = alert.labels
    container = labels.get("container") or labels.get("container_name") or labels.get("name")
    container_id = labels.get("container_id")
    if not container_id and labels.get("id", "").startswith("/docker/"):
        container_id = labels["id"].removeprefix("/docker/")  # cAdvisor's label
    summary = (
        alert.annotations.get("summary")
        or alert.annotations.get("description")
        or f"Alertmanager alert {alert.alertname}"
    )
    resolved = alert.status == "resolved"
    payload = HealthAlert(
        kind=AlertKind.EXTERNAL,
        status=AlertStatus.RESOLVED if resolved else AlertStatus.FIRING,
        detector=Detector.ALERTMANAGER,
        summary=summary,  # cut to SUMMARY_MAX by the Monitor after redaction
        labels=dict(labels),
        annotations=dict(alert.annotations),
        alertname=alert.alertname,
        fingerprint=alert.fingerprint,
        starts_at=alert.starts_at,
        ends_at=alert.ends_at if alert.ends_at and alert.ends_at.tzinfo and resolved else None,
    )
    severity = _SEVERITY.get(labels.get("severity", "").lower(), Severity.WARNING)
    return ExternalAlert(
        dedup_key=alert.dedup_key(),
        severity=Severity.INFO if resolved else severity,
        container_name=container,
        container_id=container_id,
        service=labels.get("service") or labels.get("compose_service"),
        payload=payload,
        occurred_at=payload.ends_at if payload.ends_at else alert.starts_at,
    )


# ---------------------------------------------------------------- HTTP server

Response = tuple[int, dict[str, Any]]
Ingest = Callable[[bytes], Coroutine[Any, Any, Response]]


class RateLimiter:
    """A token bucket per client address (thread-safe: the server answers from threads)."""

    def __init__(self, rate_per_s: float, burst: float) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def admit(self, client: str, now: float | None = None) -> bool:
        at = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.get(client, (self.burst, at))
            tokens = min(self.burst, tokens + (at - last) * self.rate)
            if tokens < 1:
                self._buckets[client] = (tokens, at)
                return False
            self._buckets[client] = (tokens - 1, at)
            if len(self._buckets) > 10_000:  # bounded: forget the idlest clients
                for key in sorted(self._buckets, key=lambda k: self._buckets[k][1])[:5_000]:
                    del self._buckets[key]
            return True


class WebhookServer:
    """Serves the webhook from a thread, delegating each body to `ingest` on `loop`."""

    def __init__(
        self,
        host: str,
        port: int,
        ingest: Ingest,
        loop: asyncio.AbstractEventLoop,
        token: str | None = None,
        timeout_s: float = 15.0,
        rate_per_s: float = 20.0,
        read_timeout_s: float = 10.0,
    ) -> None:
        self._ingest = ingest
        self._loop = loop
        self._token = token
        self._timeout = timeout_s
        self._read_timeout = read_timeout_s
        self._limiter = RateLimiter(rate_per_s, burst=2 * rate_per_s)
        self._server = ThreadedServer(
            host, port, self._handler_class(), name="alertmanager-webhook"
        )

    @property
    def port(self) -> int:
        return self._server.port

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop()

    def _authorised(self, header: str | None) -> bool:
        if not self._token:
            return True
        expected = f"Bearer {self._token}".encode()
        return hmac.compare_digest((header or "").encode(), expected)

    def _handle(self, body: bytes) -> Response:
        try:
            return on_loop(self._ingest(body), self._loop, self._timeout)
        except TimeoutError:
            return 503, {"error": "timed out publishing; Alertmanager will retry"}
        except Exception as exc:  # loop boundary of the HTTP thread
            log.exception("webhook.ingest_failed")
            return 500, {"error": f"internal error: {type(exc).__name__}"}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = server._read_timeout  # a slow or idle client is cut off, never waited for

            def log_message(self, format: str, *args: Any) -> None:
                pass  # our own structured log lines say what matters

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                reply_json(self, status, body)

            def do_GET(self) -> None:
                if self.path in ("/healthz", "/-/healthy"):
                    self._reply(200, {"status": "ok"})
                else:
                    self._reply(404, {"error": "not found"})

            def do_POST(self) -> None:
                # Who may talk, and how much, is decided before a byte of the body is read.
                path = self.path.split("?", 1)[0]
                if path != WEBHOOK_PATH:
                    self._reply(404, {"error": f"unknown path {path}; POST {WEBHOOK_PATH}"})
                    return
                if not server._limiter.admit(self.client_address[0]):
                    self._reply(429, {"error": "too many requests"})
                    return
                if not server._authorised(self.headers.get("Authorization")):
                    self._reply(401, {"error": "missing or wrong bearer token"})
                    return
                if self.headers.get("Transfer-Encoding"):
                    self._reply(400, {"error": "send a Content-Length, not Transfer-Encoding"})
                    return
                raw = self.headers.get("Content-Length")
                if raw is None or not raw.strip().isdigit():
                    self._reply(411 if raw is None else 400, {"error": "bad Content-Length"})
                    return
                length = int(raw)
                if length > MAX_BODY:
                    self._reply(413, {"error": f"body larger than {MAX_BODY} bytes"})
                    return
                body = self.rfile.read(length) if length else b""
                if len(body) < length:
                    self._reply(400, {"error": "the body ended before its Content-Length"})
                    return
                status, reply = server._handle(body)
                self._reply(status, reply)

        return Handler

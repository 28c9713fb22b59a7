"""The Alertmanager intake: `POST /webhook/alertmanager` (v4 payloads) into health alerts.

The whole payload is validated before anything is published; each alert is published once per
(fingerprint, startsAt, status) with a marker key kept 7 days (written atomically with the event),
so Alertmanager's re-sends publish nothing new; Redis trouble answers 503 so Alertmanager retries.
With HEMOSTAT_REDIS_WAIT_REPLICAS the 200 also means "on that many replicas": otherwise 503 with
the reason, and Alertmanager's retry asks again. Resolved alerts are resolutions and can never
trigger remediation.
"""

from __future__ import annotations

import asyncio
import ipaddress

from agents.monitor.alertmanager import (
    ExternalAlert,
    Response,
    WebhookServer,
    convert,
    parse_payload,
)
from agents.monitor.tracker import Tracker
from shared import keys
from shared.clock import Clock
from shared.errors import BusUnavailable, ConfigError, InvalidPayload, NotReplicated
from shared.eventbus import EventBus
from shared.events import HealthAlertEvent, Source, Subject, make_event
from shared.log import Logger
from shared.redaction import Redactor
from shared.replication import Replication

__all__ = ["AlertmanagerIntake", "is_loopback"]

SEEN_TTL_S = 7 * 86_400
SUMMARY_MAX = 500  # an alert summary, cut after redaction


class AlertmanagerIntake:
    def __init__(
        self,
        *,
        bus: EventBus,
        tracker: Tracker,
        redactor: Redactor,
        source: Source,
        host: str,
        clock: Clock,
        log: Logger,
        replication: Replication | None = None,
    ) -> None:
        self.bus = bus
        self.replication = replication
        self.tracker = tracker
        self.redactor = redactor
        self.source = source
        self.host = host
        self.clock = clock
        self.log = log
        self.server: WebhookServer | None = None
        self.published = 0

    def start(self, host: str, port: int, token: str | None, rate_per_s: float = 20.0) -> int:
        if not token and not is_loopback(host):
            raise ConfigError(
                f"the Alertmanager webhook would listen on {host} without a token: set "
                "HEMOSTAT_WEBHOOK_TOKEN (e.g. `openssl rand -hex 32`, and the same token in "
                "alertmanager.yml's http_config), or HEMOSTAT_WEBHOOK_HOST=127.0.0.1"
            )
        self.server = WebhookServer(
            host, port, self.ingest, asyncio.get_running_loop(), token=token, rate_per_s=rate_per_s
        )
        self.server.start()
        return self.server.port

    async def stop(self) -> None:
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)

    async def ingest(self, body: bytes) -> Response:
        """Validate the whole payload first: a malformed body publishes nothing."""
        try:
            payload = parse_payload(body)
        except InvalidPayload as exc:
            self.log.warning("monitor.webhook_rejected", reason=str(exc))
            return 400, {"error": f"invalid Alertmanager payload: {exc}"}
        published = duplicates = 0
        for external in (convert(alert) for alert in payload.alerts):
            try:
                stream_id = await self.bus.publish_once(
                    self.event(external),
                    keys.ALERTMANAGER_SEEN + external.dedup_key,
                    SEEN_TTL_S,
                    replication=self.replication,
                )
            except BusUnavailable as exc:
                return 503, {"error": f"could not publish: {exc}"}
            except NotReplicated as exc:
                # On the primary but not known to survive a failover: not acknowledged. The
                # retry finds the marker and only asks the replicas again.
                self.log.warning("monitor.webhook_not_replicated", reason=str(exc))
                return 503, {"error": f"not replicated: {exc}; Alertmanager will retry"}
            if stream_id is None:
                duplicates += 1
            else:
                published += 1
        self.published += published
        self.log.info(
            "monitor.webhook_received",
            alerts=len(payload.alerts),
            published=published,
            duplicates=duplicates,
            status=payload.status,
        )
        return 200, {"published": published, "duplicates": duplicates}

    def event(self, external: ExternalAlert) -> HealthAlertEvent:
        info = None
        if external.container_id:
            track = self.tracker.tracks.get(external.container_id)
            info = track.info if track else None
        if info is None and external.container_name:
            info = self.tracker.find_by_name(external.container_name)
        subject = Subject(
            host=self.host,
            container_id=info.id if info else external.container_id,
            container_name=info.name if info else external.container_name,
            service=(info.compose_service if info else None) or external.service,
            project=info.compose_project if info else None,
        )
        payload = external.payload.model_copy(
            update={
                "summary": self.redactor.clip(external.payload.summary, SUMMARY_MAX),
                "annotations": self.redactor.data(external.payload.annotations),
                "labels": self.redactor.data(external.payload.labels),
            }
        )
        return make_event(
            HealthAlertEvent,
            source=self.source,
            subject=subject,
            severity=external.severity,
            payload=payload,
            occurred_at=external.occurred_at,
            emitted_at=self.clock.now(),
            idempotency_key=f"alertmanager:{external.dedup_key}",
        )


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

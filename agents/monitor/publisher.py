"""Turning alert drafts into `hemostat:health_alert` events, once.

- Evidence: the container's log tail, redacted (its own environment values too) before it is
  cut, and the summary likewise.
- One alert per Docker event across Monitor replicas: the idempotency key is derived from the
  event, and a replica claims it (`SET NX`) before publishing. A claim that is never confirmed
  (its replica died between claiming and publishing) expires, and another replica's outbox
  publishes the alert then.
- Redis away: the alert waits in a bounded outbox and goes out on the next flush.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from agents.monitor.tracker import AlertDraft
from shared import keys
from shared.clock import Clock, to_datetime
from shared.docker_api import DockerGateway
from shared.errors import BusUnavailable, DockerError
from shared.eventbus import EventBus
from shared.events import HealthAlert, HealthAlertEvent, Source, Subject, make_event
from shared.log import Logger
from shared.redaction import Redactor
from shared.redis_client import CONNECTION_ERRORS

__all__ = ["AlertPublisher"]

_PUBLISH_ERRORS: tuple[type[BaseException], ...] = (BusUnavailable, *CONNECTION_ERRORS)
CLAIM_TTL_MS = 30_000  # a replica that claimed an alert must have published it by then
SENT_TTL_S = 86_400
OUTBOX_LIMIT = 1000

# 1: ours to publish; 0: published already; -1: another replica is publishing it right now.
_CLAIM = """
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], 'pending:' .. ARGV[1], 'PX', ARGV[2])
  return 1
end
if v == 'sent' then return 0 end
return -1
"""


@dataclass
class _Waiting:
    event: HealthAlertEvent
    not_before: float  # retry the claim then (another replica's claim may have lapsed)


class AlertPublisher:
    def __init__(
        self,
        *,
        bus: EventBus,
        redis: Redis,
        docker: DockerGateway,
        redactor: Redactor,
        source: Source,
        host: str,
        clock: Clock,
        log: Logger,
        log_tail_lines: int,
    ) -> None:
        self.bus = bus
        self.redis = redis
        self.docker = docker
        self.redactor = redactor
        self.source = source
        self.host = host
        self.clock = clock
        self.log = log
        self.log_tail_lines = log_tail_lines
        self.outbox: collections.deque[_Waiting] = collections.deque(maxlen=OUTBOX_LIMIT)
        self.published = 0
        self.duplicates = 0
        self._claim = redis.register_script(_CLAIM)

    async def emit_all(self, drafts: list[AlertDraft]) -> None:
        if drafts:
            await asyncio.gather(*(self.emit(d) for d in drafts))

    async def emit(self, draft: AlertDraft) -> None:
        await self.publish(await self.event(draft))

    async def event(self, draft: AlertDraft) -> HealthAlertEvent:
        info = draft.container
        logs: list[str] = []
        if draft.wants_logs and self.log_tail_lines:
            try:
                logs = await self.docker.logs_tail(info.id, self.log_tail_lines)
            except DockerError:
                logs = []  # gone or unreachable: the alert still goes out
        redactor = self.redactor.scoped(info.secret_values)
        payload = HealthAlert(
            kind=draft.kind,
            status=draft.status,
            detector=draft.detector,
            summary=redactor.clip(draft.summary, 500),
            metrics=draft.metrics,
            thresholds=draft.thresholds,
            exit_code=draft.exit_code,
            oom_killed=draft.oom_killed,
            restart_count=info.restart_count,
            uncertain=draft.uncertain,
            health_status=info.health,
            image=info.image,
            labels=redactor.data(info.labels),
            log_tail=redactor.lines(logs, max_len=500),
        )
        return make_event(
            HealthAlertEvent,
            source=self.source,
            subject=Subject(
                host=self.host,
                container_id=info.id,
                container_name=info.name,
                service=info.compose_service,
                project=info.compose_project,
            ),
            severity=draft.severity,
            payload=payload,
            occurred_at=to_datetime(draft.occurred_at),
            emitted_at=self.clock.now(),
            idempotency_key=draft.idempotency_key,
        )

    async def publish(self, event: HealthAlertEvent) -> bool:
        """True once it is out (by us or by another replica); False when it waits."""
        key = keys.MONITOR_SENT + event.idempotency_key
        try:
            claim = int(await self._claim(keys=[key], args=[self.source.instance, CLAIM_TTL_MS]))
        except CONNECTION_ERRORS as exc:
            return self._wait(event, f"Redis unavailable: {exc}", retry_in=0.0)
        if claim == 0:
            self.duplicates += 1
            return True  # another replica published this very alert
        if claim < 0:
            return self._wait(event, "another replica is publishing it", CLAIM_TTL_MS / 1000)
        try:
            await self.bus.publish(event)
            await self.redis.set(key, "sent", ex=SENT_TTL_S)
        except _PUBLISH_ERRORS as exc:
            return self._wait(event, str(exc), retry_in=0.0)
        self.published += 1
        self.log.info(
            "monitor.alert",
            kind=event.payload.kind,
            status=event.payload.status,
            severity=event.severity,
            container=event.subject.display,
            summary=event.payload.summary,
            uncertain=event.payload.uncertain or None,
        )
        return True

    def _wait(self, event: HealthAlertEvent, why: str, retry_in: float) -> bool:
        self.outbox.append(_Waiting(event, self.clock.time() + retry_in))
        self.log.warning("monitor.alert_waiting", why=why, outbox=len(self.outbox))
        return False

    async def flush(self) -> None:
        """Retry what waits (in order); stops at the first that still cannot go."""
        now = self.clock.time()
        for _ in range(len(self.outbox)):
            waiting = self.outbox.popleft()
            if waiting.not_before > now:
                self.outbox.append(waiting)
                continue
            if not await self.publish(waiting.event):
                return

    def stats(self) -> dict[str, Any]:
        return {
            "published": self.published,
            "duplicates": self.duplicates,
            "outbox": len(self.outbox),
        }

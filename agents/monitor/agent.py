"""The Monitor agent: Docker events (instant), periodic resource polls, and the Alertmanager
webhook, all turned into `hemostat:health_alert` events with evidence. It writes a snapshot of
every container to Redis for the dashboard and `hemostat status`, and nothing else."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import threading
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from agents.base import BaseAgent, background, periodic
from agents.monitor.alertmanager import (
    ExternalAlert,
    InvalidPayload,
    Response,
    WebhookServer,
    convert,
    parse_payload,
)
from agents.monitor.cgroups import CgroupReader
from agents.monitor.stats import Counters, counters_from_api, derive
from agents.monitor.tracker import AlertDraft, MonitorPolicy, Tracker, watched
from shared.backoff import backoff_delay
from shared.clock import to_datetime
from shared.container_state import (
    SNAPSHOT_INDEX,
    ContainerSnapshot,
    prune_index,
    record_death,
    write_snapshots,
)
from shared.containers import ContainerInfo, own_container_id
from shared.docker_api import DockerGateway, EventStream, connect_docker
from shared.errors import BusUnavailable, ContainerNotFound, DockerError
from shared.events import HealthAlert, HealthAlertEvent, Subject, make_event
from shared.redaction import Redactor
from shared.redis_client import CONNECTION_ERRORS
from shared.settings import Settings, StatsSource
from shared.tasks import KeyedLocks

SEEN_PREFIX = "hemostat:alertmanager:seen:"
SEEN_TTL_S = 7 * 86_400
RECONCILE_LOOKBACK_S = 300.0  # on first start, crashes this recent are still reported
EVENT_ACTIONS = ("die", "oom", "kill", "start", "destroy")
SUMMARY_MAX = 500  # an alert summary, cut after redaction (a probe's output can be 4 KiB)
_END = object()
SAMPLE_FIELDS = (
    "cpu_percent",
    "cpu_cores",
    "memory_percent",
    "memory_working_set",
    "memory_limit",
    "memory_limit_is_host",
    "net_rx_bps",
    "net_tx_bps",
    "blk_read_bps",
    "blk_write_bps",
)
_HEALTH_IN_STATUS = re.compile(r"\((healthy|unhealthy|health: starting)\)")


class MonitorAgent(BaseAgent):
    name = "monitor"

    def __init__(
        self,
        *,
        docker: DockerGateway,
        cgroups: CgroupReader | None,
        redactor: Redactor | None = None,
        own_id: str | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.docker = docker
        self.cgroups = cgroups if cgroups is not None and cgroups.available else None
        self.redactor = redactor or Redactor(self.settings.secret_values())
        self.policy = MonitorPolicy.from_settings(self.settings)
        self.tracker = Tracker(self.policy)
        self.own_id = own_id
        self.host_cores = os.cpu_count() or 1
        self.host_memory = _meminfo_total()
        self.webhook: WebhookServer | None = None
        self.outbox: collections.deque[HealthAlertEvent] = collections.deque(maxlen=1000)
        self.published = 0
        self.last_poll_s: float | None = None
        self._inspected: dict[str, tuple[tuple[str, str], ContainerInfo]] = {}
        self._last_event_at: float | None = None
        self._disconnected_at: float | None = None
        self._stream: EventStream | None = None
        self._locks = KeyedLocks()
        self._event_tasks: set[asyncio.Task[None]] = set()
        self._connected = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle

    async def on_start(self) -> None:
        await self._refresh_host_info()
        if self.settings.webhook_port:
            token = self.settings.webhook_token
            self.webhook = WebhookServer(
                self.settings.webhook_host,
                self.settings.webhook_port,
                self.ingest_alertmanager,
                asyncio.get_running_loop(),
                token=token.get_secret_value() if token else None,
            )
            self.webhook.start()
            self.log.info("monitor.webhook_listening", port=self.webhook.port)

    async def on_stop(self) -> None:
        if self._stream is not None:
            self._stream.close()
        if self.webhook is not None:
            await asyncio.to_thread(self.webhook.stop)
        if self._event_tasks:
            await asyncio.wait(self._event_tasks, timeout=5)
        self.docker.close()

    def health_details(self) -> dict[str, Any]:
        return super().health_details() | {
            "containers": len(self.tracker.tracks),
            "published": self.published,
            "outbox": len(self.outbox),
            "last_poll_s": self.last_poll_s,
            "stats_source": "cgroup" if self.cgroups else "api",
            "events_subscribed": self._connected.is_set(),
        }

    async def _refresh_host_info(self) -> None:
        try:
            info = await self.docker.info()
            self.host_cores = int(info.get("NCPU") or self.host_cores)
            self.host_memory = int(info.get("MemTotal") or self.host_memory)
        except DockerError as exc:
            self.set_degraded("docker", str(exc))

    # ------------------------------------------------------------------ Docker events

    @background
    async def docker_events(self) -> None:
        """Follow the daemon's event stream; on every (re)connect, re-list and reconcile."""
        attempt = 0
        while not self.stopping:
            if not await self.docker.ping():
                attempt += 1
                self._connected.clear()
                self._disconnected_at = self._disconnected_at or self.clock.time()
                self.set_degraded("docker", "Docker daemon unreachable")
                await self.sleep(backoff_delay(attempt, base=0.5, cap=10.0))
                continue
            attempt = 0
            since = self._last_event_at
            # Subscribe first, then reconcile: nothing can fall between the two.
            stream = self.docker.events(since=since, label=self.settings.watch_label)
            self._stream = stream
            try:
                await asyncio.to_thread(stream.open)
            except DockerError as exc:
                self.set_degraded("docker", str(exc))
                await self.sleep(0.5)
                continue
            queue: asyncio.Queue[Any] = asyncio.Queue()
            pump = self._start_pump(stream, queue)
            await self._refresh_host_info()
            await self._reconcile()
            self.clear_degraded("docker")
            self._connected.set()
            self.log.info("monitor.events_subscribed", since=since)
            closer = asyncio.create_task(self._close_on_stop(stream))
            try:
                await self._drain_events(queue)
            finally:
                closer.cancel()
                stream.close()
                await asyncio.to_thread(pump.join, 2)
            if not self.stopping:
                self._connected.clear()
                self._disconnected_at = self.clock.time()
                self.set_degraded("docker", "event stream ended (daemon restarted?)")
                await self.sleep(0.5)

    async def _close_on_stop(self, stream: EventStream) -> None:
        await self.wait_stopped()
        stream.close()  # ends the pump thread, which ends _drain_events

    def _start_pump(self, stream: EventStream, queue: asyncio.Queue[Any]) -> threading.Thread:
        loop = asyncio.get_running_loop()

        def pump() -> None:
            try:
                for event in stream:
                    loop.call_soon_threadsafe(queue.put_nowait, event)
            except Exception as exc:  # thread boundary: hand the error to the loop
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _END)

        thread = threading.Thread(target=pump, name="docker-events", daemon=True)
        thread.start()
        return thread

    async def _drain_events(self, queue: asyncio.Queue[Any]) -> None:
        while True:
            item = await queue.get()
            if item is _END:
                return
            if isinstance(item, Exception):
                self.log.warning("monitor.events_error", error=str(item))
                continue
            task = asyncio.create_task(self._on_docker_event(item))
            self._event_tasks.add(task)
            task.add_done_callback(self._event_tasks.discard)

    async def _on_docker_event(self, event: dict[str, Any]) -> None:
        actor = event.get("Actor") or {}
        container_id = actor.get("ID") or event.get("id")
        action = str(event.get("Action") or event.get("status") or "")
        if not container_id or not (action in EVENT_ACTIONS or action.startswith("health_status")):
            return
        time_nano = int(event.get("timeNano") or int(event.get("time", 0)) * 1_000_000_000)
        at = time_nano / 1e9
        self._last_event_at = max(self._last_event_at or 0.0, at)
        attrs = {str(k): str(v) for k, v in (actor.get("Attributes") or {}).items()}
        async with self._locks.hold(container_id):
            try:
                await self._handle_docker_event(container_id, action, attrs, at, time_nano)
            except Exception:  # loop boundary: one odd event never stops the stream
                self.log.exception(
                    "monitor.event_failed", action=action, container=container_id[:12]
                )

    async def _handle_docker_event(
        self, container_id: str, action: str, attrs: dict[str, str], at: float, time_nano: int
    ) -> None:
        if action == "destroy":
            self.tracker.forget(container_id)
            self._inspected.pop(container_id, None)
            if self.cgroups:
                self.cgroups.forget(container_id)
            await self.redis.zrem(SNAPSHOT_INDEX, container_id)
            return
        self._inspected.pop(container_id, None)  # state changed: inspect afresh next time
        info = await self._inspect_or_guess(container_id, attrs, fresh=action != "kill")
        if not watched(info, self.policy, self.own_id):
            return
        drafts = self.tracker.on_event(action, attrs | {"_time_nano": str(time_nano)}, at, info)
        track = self.tracker.tracks.get(container_id)
        if action == "die" and track is not None and track.deaths and track.deaths[-1] == at:
            try:
                await record_death(self.redis, container_id, at)
            except CONNECTION_ERRORS as exc:
                self.log.warning("monitor.death_not_recorded", error=str(exc))
        await self._emit_all(drafts)

    async def _inspect_or_guess(
        self, container_id: str, attrs: dict[str, str], fresh: bool
    ) -> ContainerInfo:
        track = self.tracker.tracks.get(container_id)
        if not fresh and track is not None:
            return track.info
        try:
            return await self.docker.inspect(container_id)
        except DockerError as exc:
            if track is not None:
                return track.info
            # Gone already (e.g. --rm): the event's attributes carry name, image and labels.
            if not isinstance(exc, ContainerNotFound):
                self.log.warning(
                    "monitor.inspect_failed", container=container_id[:12], error=str(exc)
                )
            labels = {k: v for k, v in attrs.items() if k not in ("name", "image", "exitCode")}
            return ContainerInfo(
                id=container_id,
                name=attrs.get("name", container_id[:12]),
                image=attrs.get("image", ""),
                labels=labels,
                state="exited",
            )

    async def _reconcile(self) -> None:
        """Problems that arose while we were not listening (first start or reconnect)."""
        now = self.clock.time()
        since = self._disconnected_at or (now - RECONCILE_LOOKBACK_S)
        try:
            infos = await self._inventory()
        except DockerError as exc:
            self.log.warning("monitor.reconcile_failed", error=str(exc))
            return
        drafts: list[AlertDraft] = []
        for info in infos:
            if watched(info, self.policy, self.own_id):
                drafts += self.tracker.reconcile(info, now, since)
        self._disconnected_at = None
        await self._emit_all(drafts)

    # ------------------------------------------------------------------ polling

    @periodic(lambda self: self.settings.monitor_poll_interval_s)
    async def poll(self) -> None:
        started = self.clock.monotonic()
        await self._flush_outbox()
        try:
            infos = await self._inventory()
        except DockerError as exc:
            self.set_degraded("docker", str(exc))
            return
        now = self.clock.time()
        mono = self.clock.monotonic()
        monitored = {i.id for i in infos if watched(i, self.policy, self.own_id)}
        counters = await self._collect([i for i in infos if i.id in monitored and i.running], mono)
        drafts: list[AlertDraft] = []
        snapshots = []
        seen = {i.id for i in infos}
        for info in infos:
            is_watched = info.id in monitored
            sample = None
            if is_watched:
                track = self.tracker.track(info)
                drafts += self.tracker.on_inventory(info, now)
                cur = counters.get(info.id)
                if cur is not None:
                    sample = derive(
                        track.counters,
                        cur,
                        cpu_limit=info.cpu_limit,
                        host_cores=self.host_cores,
                        memory_limit=info.memory_limit,
                        host_memory=self.host_memory,
                    )
                    track.counters = cur
                    drafts += self.tracker.on_sample(info, sample, now)
                elif not info.running:
                    track.counters = None
            snapshots.append(self._snapshot(info, sample, is_watched, now))
        for gone in set(self.tracker.tracks) - seen:
            self.tracker.forget(gone)
        await self._emit_all(drafts)
        ttl = max(3 * self.settings.monitor_poll_interval_s, 60.0)
        try:
            await write_snapshots(self.redis, snapshots, ttl)
            await prune_index(self.redis, now - ttl)
        except CONNECTION_ERRORS as exc:
            self.log.warning("monitor.snapshots_failed", error=str(exc))
        self.clear_degraded("docker")
        self.last_poll_s = round(self.clock.monotonic() - started, 4)
        self.log.debug("monitor.polled", containers=len(infos), seconds=self.last_poll_s)

    async def _inventory(self) -> list[ContainerInfo]:
        """Every container; inspected only when new or changed since the last look."""
        raw = await self.docker.list_raw(all=True, label=self.settings.watch_label)
        keys: dict[str, tuple[str, str]] = {}
        for entry in raw:
            health = _HEALTH_IN_STATUS.search(entry.get("Status") or "")
            keys[entry["Id"]] = (entry.get("State") or "", health.group(1) if health else "")
        stale = [cid for cid, key in keys.items() if self._inspected.get(cid, (None,))[0] != key]

        async def inspect(cid: str) -> None:
            try:
                self._inspected[cid] = (keys[cid], await self.docker.inspect(cid))
            except ContainerNotFound:
                keys.pop(cid, None)

        await asyncio.gather(*(inspect(cid) for cid in stale))
        for cid in set(self._inspected) - set(keys):
            del self._inspected[cid]
        return [self._inspected[cid][1] for cid in keys if cid in self._inspected]

    async def _collect(self, running: list[ContainerInfo], at: float) -> dict[str, Counters]:
        """Counters for every running container: cgroup files when visible (one thread, no
        API calls), the stats API with bounded concurrency for the rest."""
        out: dict[str, Counters] = {}
        cgroups = self.cgroups
        if cgroups is not None and self.settings.monitor_stats_source is not StatsSource.API:

            def read_all() -> dict[str, Counters]:
                found = {}
                for info in running:
                    counters = cgroups.read(info.id, info.pid, at)
                    if counters is not None:
                        found[info.id] = counters
                return found

            out = await asyncio.to_thread(read_all)
        if self.settings.monitor_stats_source is StatsSource.CGROUP:
            return out
        missing = [i for i in running if i.id not in out]

        async def from_api(info: ContainerInfo) -> None:
            try:
                stats = await self.docker.stats_once(info.id)
            except DockerError as exc:
                self.log.debug("monitor.stats_failed", container=info.short_id, error=str(exc))
                return
            out[info.id] = counters_from_api(stats, self.clock.monotonic())

        await asyncio.gather(*(from_api(i) for i in missing))
        return out

    def _snapshot(
        self, info: ContainerInfo, sample: Any, monitored: bool, now: float
    ) -> ContainerSnapshot:
        track = self.tracker.tracks.get(info.id)
        metrics: dict[str, Any] = {}
        if sample is not None:
            metrics = {k: getattr(sample, k) for k in SAMPLE_FIELDS}
            metrics["stats_source"] = sample.source
        return ContainerSnapshot(
            id=info.id,
            name=info.name,
            image=info.image,
            host=self.settings.host_name,
            state=info.state,
            health=info.health,
            monitored=monitored,
            restart_count=info.restart_count,
            exit_code=info.exit_code,
            oom_killed=info.oom_killed,
            started_at=info.started_at.timestamp() if info.started_at else None,
            compose_project=info.compose_project,
            compose_service=info.compose_service,
            active_alerts=sorted(k.value for k in track.active) if track else [],
            labels=self.redactor.data(info.labels),
            updated_at=now,
            **metrics,
        )

    # ------------------------------------------------------------------ publishing

    async def _emit_all(self, drafts: list[AlertDraft]) -> None:
        if drafts:
            await asyncio.gather(*(self._emit(d) for d in drafts))

    async def _emit(self, draft: AlertDraft) -> None:
        info = draft.container
        logs: list[str] = []
        if draft.wants_logs and self.settings.monitor_log_tail_lines:
            try:
                logs = await self.docker.logs_tail(info.id, self.settings.monitor_log_tail_lines)
            except DockerError:
                logs = []  # gone or unreachable: the alert still goes out
        redactor = self.redactor.scoped(info.secret_values)
        payload = HealthAlert(
            kind=draft.kind,
            status=draft.status,
            detector=draft.detector,
            summary=redactor.clip(draft.summary, SUMMARY_MAX),
            metrics=draft.metrics,
            thresholds=draft.thresholds,
            exit_code=draft.exit_code,
            oom_killed=draft.oom_killed,
            restart_count=info.restart_count,
            health_status=info.health,
            image=info.image,
            labels=redactor.data(info.labels),
            log_tail=redactor.lines(logs, max_len=500),
        )
        event = make_event(
            HealthAlertEvent,
            source=self.source,
            subject=Subject(
                host=self.settings.host_name,
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
        await self._publish(event)

    async def _publish(self, event: HealthAlertEvent) -> None:
        try:
            await self.bus.publish(event)
        except BusUnavailable as exc:
            self.outbox.append(event)  # retried on the next poll; bounded
            self.log.error("monitor.publish_failed", error=str(exc), outbox=len(self.outbox))
            return
        self.published += 1
        self.log.info(
            "monitor.alert",
            kind=event.payload.kind,
            status=event.payload.status,
            severity=event.severity,
            container=event.subject.display,
            summary=event.payload.summary,
        )

    async def _flush_outbox(self) -> None:
        while self.outbox:
            event = self.outbox[0]
            try:
                await self.bus.publish(event)
            except BusUnavailable:
                return
            self.outbox.popleft()
            self.published += 1

    # ------------------------------------------------------------------ Alertmanager

    async def ingest_alertmanager(self, body: bytes) -> Response:
        """Validate the whole payload first: a malformed body publishes nothing."""
        try:
            payload = parse_payload(body)
        except InvalidPayload as exc:
            self.log.warning("monitor.webhook_rejected", reason=str(exc))
            return 400, {"error": f"invalid Alertmanager payload: {exc}"}
        published = duplicates = 0
        for external in (convert(alert) for alert in payload.alerts):
            key = SEEN_PREFIX + external.dedup_key
            try:
                first = await self.redis.set(key, "1", nx=True, ex=SEEN_TTL_S)
            except CONNECTION_ERRORS as exc:
                return 503, {"error": f"Redis unavailable: {exc}"}
            if not first:
                duplicates += 1
                continue
            try:
                await self.bus.publish(self._external_event(external))
            except BusUnavailable as exc:
                await _forget(self.redis, key)
                return 503, {"error": f"could not publish: {exc}"}
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

    def _external_event(self, external: ExternalAlert) -> HealthAlertEvent:
        info = None
        if external.container_id:
            track = self.tracker.tracks.get(external.container_id)
            info = track.info if track else None
        if info is None and external.container_name:
            info = self.tracker.find_by_name(external.container_name)
        subject = Subject(
            host=self.settings.host_name,
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


async def _forget(redis: Redis, key: str) -> None:
    # If this fails too, the dedup key expires by itself (Alertmanager's retry may be dropped).
    with contextlib.suppress(*CONNECTION_ERRORS):
        await redis.delete(key)


def _meminfo_total() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def build(settings: Settings, redis: Redis) -> MonitorAgent:
    client = connect_docker(settings)
    cgroups = None
    if settings.monitor_stats_source is not StatsSource.API:
        cgroups = CgroupReader(settings.cgroup_root, settings.proc_root)
    return MonitorAgent(
        settings=settings,
        redis=redis,
        docker=DockerGateway(client, concurrency=settings.monitor_stats_concurrency),
        cgroups=cgroups,
        own_id=own_container_id(),
    )

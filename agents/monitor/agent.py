"""The Monitor agent: Docker events (instant), periodic resource polls, and the Alertmanager
webhook, all turned into `hemostat:health_alert` events with evidence. It writes a snapshot of
every container to Redis for the dashboard and `hemostat status`, and nothing else.

It composes four components, one concept each: `DockerEventFollower` (event_stream.py: the
daemon's events, the catch-up cursor, stalls), `Poller` (poller.py: inventory, counters,
snapshots), `AlertPublisher` (publisher.py: evidence, one alert per event across replicas, the
outbox) and `AlertmanagerIntake` (intake.py). The rules themselves are the pure `Tracker`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from agents.base import BaseAgent, background, periodic
from agents.monitor.cgroups import CgroupReader
from agents.monitor.event_stream import Cursor, DockerEventFollower, History, event_nano
from agents.monitor.intake import AlertmanagerIntake
from agents.monitor.poller import Poller, latest_change
from agents.monitor.publisher import AlertPublisher
from agents.monitor.tracker import AlertDraft, MonitorPolicy, Tracker
from shared import keys
from shared.container_state import prune_index, record_death, write_snapshots
from shared.containers import ContainerInfo, own_container_id
from shared.docker_api import DockerGateway, connect_docker
from shared.errors import ContainerNotFound, DockerError
from shared.redaction import Redactor
from shared.redis_client import CONNECTION_ERRORS
from shared.replication import Replication
from shared.settings import Settings, StatsSource
from shared.tasks import KeyedLocks

__all__ = ["MonitorAgent", "build"]

FIRST_START_LOOKBACK_S = 300.0  # with no cursor yet, deaths this recent are still judged
EVENT_ACTIONS = ("die", "oom", "kill", "start", "destroy")


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
        s = self.settings
        self.docker = docker
        self.redactor = redactor or Redactor(s.secret_values())
        self.policy = MonitorPolicy.from_settings(s)
        self.tracker = Tracker(self.policy)
        self.own_id = own_id
        self.last_poll_s: float | None = None
        self._locks = KeyedLocks()
        self.poller = Poller(
            docker=docker,
            cgroups=cgroups if cgroups is not None and cgroups.available else None,
            tracker=self.tracker,
            policy=self.policy,
            redactor=self.redactor,
            clock=self.clock,
            log=self.log,
            host=s.host_name,
            label=s.watch_label,
            stats_source=s.monitor_stats_source,
            own_id=own_id,
        )
        self.poller.host_cores = os.cpu_count() or 1
        self.poller.host_memory = _meminfo_total()
        self.publisher = AlertPublisher(
            bus=self.bus,
            redis=self.redis,
            docker=docker,
            redactor=self.redactor,
            source=self.source,
            host=s.host_name,
            clock=self.clock,
            log=self.log,
            log_tail_lines=s.monitor_log_tail_lines,
        )
        self.intake = AlertmanagerIntake(
            bus=self.bus,
            tracker=self.tracker,
            redactor=self.redactor,
            source=self.source,
            host=s.host_name,
            clock=self.clock,
            log=self.log,
            replication=Replication.from_settings(s),
        )
        self.events = DockerEventFollower(
            docker=docker,
            cursor=Cursor(self.redis, s.host_name),
            label=s.watch_label,
            lookback_s=FIRST_START_LOOKBACK_S,
            log=self.log,
            on_event=self._on_docker_event,
            on_catch_up=self._catch_up,
            on_state=self._on_events_state,
            stopping=lambda: self.stopping,
            sleep=self.sleep,
        )
        self._connected = self.events.connected

    # ------------------------------------------------------------------ lifecycle

    async def on_start(self) -> None:
        await self._refresh_host_info()
        if self.settings.webhook_port:
            token = self.settings.webhook_token
            port = self.intake.start(
                self.settings.webhook_host,
                self.settings.webhook_port,
                token.get_secret_value() if token else None,
                self.settings.webhook_rate_per_s,
            )
            self.log.info("monitor.webhook_listening", port=port)

    async def on_stopping(self) -> None:
        # The event follower blocks on Docker's stream, not on the agent's sleep: release it now
        # (a stop otherwise lasts the whole grace period while this Monitor still looks alive).
        self.events.close()

    async def on_stop(self) -> None:
        self.events.close()
        await self.intake.stop()
        await self.events.wait_idle(timeout=5)
        self.docker.close()

    def health_details(self) -> dict[str, Any]:
        return (
            super().health_details()
            | self.publisher.stats()
            | {
                "containers": len(self.tracker.tracks),
                "last_poll_s": self.last_poll_s,
                "stats_source": "cgroup" if self.poller.cgroups else "api",
                "events_subscribed": self.events.connected.is_set(),
                "events_reconnects": self.events.reconnects,
                "events_stalls": self.events.stalls,
            }
        )

    async def _refresh_host_info(self) -> None:
        try:
            info = await self.docker.info()
            self.poller.host_cores = int(info.get("NCPU") or self.poller.host_cores)
            self.poller.host_memory = int(info.get("MemTotal") or self.poller.host_memory)
        except DockerError as exc:
            self.set_degraded("docker", str(exc))

    def _on_events_state(self, connected: bool, reason: str) -> None:
        if connected:
            self.clear_degraded("docker")
        else:
            self.set_degraded("docker", reason)

    # ------------------------------------------------------------------ Docker events

    @background
    async def docker_events(self) -> None:
        await self.events.run()

    async def _on_docker_event(self, event: dict[str, Any]) -> None:
        actor = event.get("Actor") or {}
        container_id = actor.get("ID") or event.get("id")
        action = str(event.get("Action") or event.get("status") or "")
        if not container_id or not (action in EVENT_ACTIONS or action.startswith("health_status")):
            return
        nano = event_nano(event)
        attrs = {str(k): str(v) for k, v in (actor.get("Attributes") or {}).items()}
        async with self._locks.hold(container_id):
            try:
                await self._handle_docker_event(container_id, action, attrs, nano)
            except Exception:  # loop boundary: one odd event never stops the stream
                self.log.exception(
                    "monitor.event_failed", action=action, container=container_id[:12]
                )

    async def _handle_docker_event(
        self, container_id: str, action: str, attrs: dict[str, str], nano: int
    ) -> None:
        at = nano / 1e9
        self.poller.changed(container_id)  # state changed: inspect afresh next time
        if action == "destroy":
            track = self.tracker.tracks.get(container_id)
            self.poller.forget(container_id)
            await self.redis.zrem(keys.CONTAINERS, container_id)
            if track is None:
                return
            drafts = self.tracker.on_event(
                action, attrs | {"_time_nano": str(nano)}, at, track.info
            )
            await self.publisher.emit_all(drafts)
            return
        info = await self._inspect_or_guess(container_id, attrs, fresh=action != "kill")
        if not self.poller.is_watched(info):
            return
        drafts = self.tracker.on_event(action, attrs | {"_time_nano": str(nano)}, at, info)
        track = self.tracker.tracks.get(container_id)
        if action == "die" and track is not None and track.deaths and track.deaths[-1] == at:
            try:
                await record_death(self.redis, self.settings.host_name, container_id, at)
            except CONNECTION_ERRORS as exc:
                self.log.warning("monitor.death_not_recorded", error=str(exc))
        await self.publisher.emit_all(drafts)

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

    async def _catch_up(self, history: History | None, since: float) -> None:
        """What happened while we were not listening (first start, reconnect, a stall)."""
        await self._refresh_host_info()
        now = self.clock.time()
        try:
            infos = await self.poller.inventory()
        except DockerError as exc:
            self.log.warning("monitor.catch_up_failed", error=str(exc))
            return
        drafts: list[AlertDraft] = []
        for info in infos:
            if self.poller.is_watched(info):
                seen = (history or {}).get(info.id, [])
                drafts += self.tracker.reconcile(info, now, since, seen)
        await self.publisher.emit_all(drafts)

    # ------------------------------------------------------------------ polling

    @periodic(lambda self: self.settings.monitor_poll_interval_s)
    async def poll(self) -> None:
        started = self.clock.monotonic()
        await self.publisher.flush()
        try:
            result = await self.poller.poll()
        except DockerError as exc:
            self.set_degraded("docker", str(exc))
            return
        self._check_stall(result.infos)
        await self.publisher.emit_all(result.drafts)
        now = self.clock.time()
        ttl = max(3 * self.settings.monitor_poll_interval_s, 60.0)
        try:
            await write_snapshots(self.redis, result.snapshots, ttl)
            await prune_index(self.redis, now - ttl)
        except CONNECTION_ERRORS as exc:
            self.log.warning("monitor.snapshots_failed", error=str(exc))
        if self.events.connected.is_set():
            self.clear_degraded("docker")
        self.last_poll_s = round(self.clock.monotonic() - started, 4)
        self.log.debug("monitor.polled", containers=len(result.infos), seconds=self.last_poll_s)

    def _check_stall(self, infos: list[ContainerInfo]) -> None:
        """A start or stop newer than every event received, and older than the grace: the
        stream missed it (open, silent, no error). Reconnect; the catch-up covers the gap."""
        subscribed = self.events.subscribed_at
        if subscribed is None or not self.events.connected.is_set():
            return
        change = latest_change(infos)
        grace = self.settings.monitor_events_stall_grace_s
        newest = self.events.newest_event_at
        # Both times are the daemon's own clock: a change during this subscription that no
        # event (of that moment or later) told us about.
        if change > subscribed and change > newest + 0.5 and self.clock.time() - change > grace:
            self.events.report_stall(
                f"a container changed {self.clock.time() - change:.0f}s ago and no event said so"
            )


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

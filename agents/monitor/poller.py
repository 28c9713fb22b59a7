"""The periodic look at every container: one list call, an inspect only for containers that are
new or changed, resource counters (cgroup files when visible, else the stats API), the tracker's
threshold and recovery rules, and the snapshot every other component reads."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

from agents.monitor.cgroups import CgroupReader
from agents.monitor.stats import Counters, Sample, counters_from_api, derive
from agents.monitor.tracker import AlertDraft, MonitorPolicy, Tracker, watched
from shared.clock import Clock
from shared.container_state import ContainerSnapshot
from shared.containers import ContainerInfo
from shared.docker_api import DockerGateway
from shared.errors import ContainerNotFound, DockerError
from shared.log import Logger
from shared.redaction import Redactor
from shared.settings import StatsSource

__all__ = ["PollResult", "Poller", "latest_change"]

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


@dataclass(frozen=True)
class PollResult:
    infos: list[ContainerInfo]
    drafts: list[AlertDraft]
    snapshots: list[ContainerSnapshot]


class Poller:
    def __init__(
        self,
        *,
        docker: DockerGateway,
        cgroups: CgroupReader | None,
        tracker: Tracker,
        policy: MonitorPolicy,
        redactor: Redactor,
        clock: Clock,
        log: Logger,
        host: str,
        label: str | None,
        stats_source: StatsSource,
        own_id: str | None,
    ) -> None:
        self.docker = docker
        self.cgroups = cgroups
        self.tracker = tracker
        self.policy = policy
        self.redactor = redactor
        self.clock = clock
        self.log = log
        self.host = host
        self.label = label
        self.stats_source = stats_source
        self.own_id = own_id
        self.host_cores = 1
        self.host_memory = 0
        self._inspected: dict[str, tuple[tuple[str, str], ContainerInfo]] = {}

    def is_watched(self, info: ContainerInfo) -> bool:
        return watched(info, self.policy, self.own_id)

    def changed(self, container_id: str) -> None:
        """An event said its state changed: inspect it afresh next time."""
        self._inspected.pop(container_id, None)

    def forget(self, container_id: str) -> None:
        self._inspected.pop(container_id, None)
        if self.cgroups:
            self.cgroups.forget(container_id)

    async def poll(self) -> PollResult:
        infos = await self.inventory()
        now = self.clock.time()
        mono = self.clock.monotonic()
        monitored = {i.id for i in infos if self.is_watched(i)}
        counters = await self.collect([i for i in infos if i.id in monitored and i.running], mono)
        drafts: list[AlertDraft] = []
        snapshots = []
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
            snapshots.append(self.snapshot(info, sample, is_watched, now))
        seen = {i.id for i in infos}
        for gone in set(self.tracker.tracks) - seen:
            self.tracker.forget(gone)
        return PollResult(infos, drafts, snapshots)

    async def inventory(self) -> list[ContainerInfo]:
        """Every container; inspected only when new or changed since the last look."""
        raw = await self.docker.list_raw(all=True, label=self.label)
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

    async def collect(self, running: list[ContainerInfo], at: float) -> dict[str, Counters]:
        """Counters for every running container: cgroup files when visible (one thread, no
        API calls), the stats API with bounded concurrency for the rest."""
        out: dict[str, Counters] = {}
        cgroups = self.cgroups
        if cgroups is not None and self.stats_source is not StatsSource.API:

            def read_all() -> dict[str, Counters]:
                found = {}
                for info in running:
                    counters = cgroups.read(info.id, info.pid, at)
                    if counters is not None:
                        found[info.id] = counters
                return found

            out = await asyncio.to_thread(read_all)
        if self.stats_source is StatsSource.CGROUP:
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

    def snapshot(
        self, info: ContainerInfo, sample: Sample | None, monitored: bool, now: float
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
            host=self.host,
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


def latest_change(infos: list[ContainerInfo]) -> float:
    """The newest start or stop among these containers (the daemon's clock)."""
    newest = 0.0
    for info in infos:
        for at in (info.started_at, info.finished_at):
            if at is not None:
                newest = max(newest, at.timestamp())
    return newest

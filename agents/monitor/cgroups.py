"""Reading a container's resource counters straight from the cgroup filesystem, the way cAdvisor
does: microseconds per container where the Docker stats API takes a second or two.

Supports cgroup v1 (per-controller hierarchies) and v2 (unified), with the cgroupfs and systemd
drivers. A container's cgroup is found from /proc/<pid>/cgroup when the host's /proc is visible,
else from the paths Docker uses; the result is cached per container."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agents.monitor.stats import Counters

__all__ = ["CgroupPaths", "CgroupReader"]

_UNLIMITED = 1 << 62  # v1 reports "no limit" as a huge number


@dataclass(frozen=True)
class CgroupPaths:
    version: int
    cpu: Path  # v1: cpuacct dir; v2: the unified dir
    memory: Path
    io: Path


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _int(path: Path) -> int | None:
    text = _read(path)
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _keyed(path: Path) -> dict[str, int]:
    """`key value` lines (memory.stat, cpu.stat)."""
    out: dict[str, int] = {}
    for line in (_read(path) or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


class CgroupReader:
    def __init__(self, root: Path = Path("/sys/fs/cgroup"), proc: Path = Path("/proc")) -> None:
        self.root = root
        self.proc = proc
        if (root / "cgroup.controllers").exists():
            self.version: int | None = 2
        elif (root / "memory").is_dir() and (root / "cpuacct").is_dir():
            self.version = 1
        else:
            self.version = None
        self._paths: dict[str, CgroupPaths | None] = {}

    @property
    def available(self) -> bool:
        return self.version is not None

    def forget(self, container_id: str) -> None:
        self._paths.pop(container_id, None)

    def locate(self, container_id: str, pid: int = 0) -> CgroupPaths | None:
        if container_id in self._paths:
            return self._paths[container_id]
        found = self._from_proc(pid) if pid else None
        found = found or self._from_layout(container_id)
        if found is not None:
            self._paths[container_id] = found  # only cache hits: a new container may appear later
        return found

    def _from_proc(self, pid: int) -> CgroupPaths | None:
        text = _read(self.proc / str(pid) / "cgroup")
        if not text:
            return None
        rel: dict[str, str] = {}
        for line in text.splitlines():
            parts = line.split(":", 2)
            if len(parts) != 3:
                continue
            for controller in parts[1].split(",") if parts[1] else [""]:
                rel[controller] = parts[2].lstrip("/")
        if self.version == 2 and "" in rel:
            unified = self.root / rel[""]
            return CgroupPaths(2, unified, unified, unified) if unified.is_dir() else None
        if self.version == 1 and "memory" in rel:
            cpu_rel = rel.get("cpuacct", rel.get("cpu", rel["memory"]))
            paths = CgroupPaths(
                1,
                self.root / "cpuacct" / cpu_rel,
                self.root / "memory" / rel["memory"],
                self.root / "blkio" / rel.get("blkio", rel["memory"]),
            )
            return paths if paths.memory.is_dir() else None
        return None

    def _from_layout(self, container_id: str) -> CgroupPaths | None:
        candidates = (f"docker/{container_id}", f"system.slice/docker-{container_id}.scope")
        for rel in candidates:
            if self.version == 2 and (self.root / rel).is_dir():
                unified = self.root / rel
                return CgroupPaths(2, unified, unified, unified)
            if self.version == 1 and (self.root / "memory" / rel).is_dir():
                return CgroupPaths(
                    1,
                    self.root / "cpuacct" / rel,
                    self.root / "memory" / rel,
                    self.root / "blkio" / rel,
                )
        return None

    def read(self, container_id: str, pid: int, at: float) -> Counters | None:
        """Counters of one container, or None when its cgroup cannot be found or read."""
        paths = self.locate(container_id, pid)
        if paths is None:
            return None
        read = self._read_v2 if paths.version == 2 else self._read_v1
        counters = read(paths, at)
        if counters is None:
            self.forget(container_id)  # the container went away or was recreated
            return None
        rx, tx = self._net(pid)
        return Counters(
            at=counters.at,
            source="cgroup",
            cpu_ns=counters.cpu_ns,
            memory_usage=counters.memory_usage,
            memory_inactive_file=counters.memory_inactive_file,
            memory_limit=counters.memory_limit,
            net_rx=rx,
            net_tx=tx,
            blk_read=counters.blk_read,
            blk_write=counters.blk_write,
        )

    def _read_v1(self, paths: CgroupPaths, at: float) -> Counters | None:
        cpu = _int(paths.cpu / "cpuacct.usage")
        usage = _int(paths.memory / "memory.usage_in_bytes")
        if cpu is None or usage is None:
            return None
        mstat = _keyed(paths.memory / "memory.stat")
        limit = _int(paths.memory / "memory.limit_in_bytes")
        read = write = 0
        for line in (_read(paths.io / "blkio.throttle.io_service_bytes") or "").splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] == "Read":
                read += int(parts[2])
            elif len(parts) == 3 and parts[1] == "Write":
                write += int(parts[2])
        return Counters(
            at=at,
            source="cgroup",
            cpu_ns=cpu,
            memory_usage=usage,
            memory_inactive_file=mstat.get("total_inactive_file", mstat.get("inactive_file")),
            memory_limit=limit if limit is not None and limit < _UNLIMITED else None,
            blk_read=read,
            blk_write=write,
        )

    def _read_v2(self, paths: CgroupPaths, at: float) -> Counters | None:
        cpu_stat = _keyed(paths.cpu / "cpu.stat")
        usage = _int(paths.memory / "memory.current")
        if "usage_usec" not in cpu_stat or usage is None:
            return None
        mstat = _keyed(paths.memory / "memory.stat")
        read = write = 0
        for line in (_read(paths.io / "io.stat") or "").splitlines():
            for field in line.split()[1:]:
                key, _, value = field.partition("=")
                if key == "rbytes":
                    read += int(value)
                elif key == "wbytes":
                    write += int(value)
        return Counters(
            at=at,
            source="cgroup",
            cpu_ns=cpu_stat["usage_usec"] * 1000,
            memory_usage=usage,
            memory_inactive_file=mstat.get("inactive_file"),
            memory_limit=_int(paths.memory / "memory.max"),
            blk_read=read,
            blk_write=write,
        )

    def _net(self, pid: int) -> tuple[int | None, int | None]:
        """Bytes received/sent on every interface but loopback, from the container's netns."""
        if not pid:
            return None, None
        text = _read(self.proc / str(pid) / "net" / "dev")
        if text is None:
            return None, None
        rx = tx = 0
        for line in text.splitlines()[2:]:
            name, _, data = line.partition(":")
            fields = data.split()
            if name.strip() == "lo" or len(fields) < 9:
                continue
            rx += int(fields[0])
            tx += int(fields[8])
        return rx, tx

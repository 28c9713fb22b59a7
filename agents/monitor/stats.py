"""Resource samples: raw cumulative counters (from cgroups or the stats API) and the rates and
percentages derived from two of them. `derive` is pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Counters", "Sample", "counters_from_api", "derive"]


@dataclass(frozen=True)
class Counters:
    """Cumulative counters of one container at one instant (`at`: monotonic seconds)."""

    at: float
    source: str  # "cgroup" or "api"
    cpu_ns: int | None = None
    memory_usage: int | None = None
    memory_inactive_file: int | None = None
    memory_limit: int | None = None  # as the kernel sees it (may be "unlimited")
    net_rx: int | None = None
    net_tx: int | None = None
    blk_read: int | None = None
    blk_write: int | None = None


@dataclass(frozen=True)
class Sample:
    source: str
    cpu_percent: float | None = None  # of the container's CPU allowance (limit, else all cores)
    cpu_cores: float | None = None  # cores in use
    memory_percent: float | None = None  # working set / limit (or host memory, see flag)
    memory_working_set: int | None = None  # usage minus inactive file cache
    memory_usage: int | None = None
    memory_limit: int | None = None
    memory_limit_is_host: bool = False
    net_rx_bps: float | None = None
    net_tx_bps: float | None = None
    blk_read_bps: float | None = None
    blk_write_bps: float | None = None

    def metrics(self) -> dict[str, float]:
        """The non-empty numeric fields, for alert evidence and snapshots."""
        out: dict[str, float] = {}
        for key, value in self.__dict__.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[key] = round(float(value), 3)
        return out


def _rate(prev: int | None, cur: int | None, dt: float) -> float | None:
    if prev is None or cur is None or dt <= 0 or cur < prev:
        return None  # a counter that went backwards means the container restarted
    return (cur - prev) / dt


def derive(
    prev: Counters | None,
    cur: Counters,
    *,
    cpu_limit: float | None,
    host_cores: int,
    memory_limit: int | None,
    host_memory: int,
) -> Sample:
    """Turn two counter readings into a sample.

    CPU is normalised against what the container may use: its limit in cores when it has one,
    otherwise every core of the host, so 100 % always means "saturated". Memory percent uses the
    working set (the kernel's view minus reclaimable file cache, as the kubelet and `docker
    stats` do) against the container's limit, or the host's memory when it has none (flagged).
    """
    dt = cur.at - prev.at if prev else 0.0
    cpu_cores = None
    cpu_percent = None
    if prev is not None:
        ns_rate = _rate(prev.cpu_ns, cur.cpu_ns, dt)
        if ns_rate is not None:
            cpu_cores = ns_rate / 1e9
            allowance = cpu_limit if cpu_limit else float(host_cores)
            cpu_percent = min(100.0 * cpu_cores / allowance, 100.0 * host_cores)
    working_set = None
    if cur.memory_usage is not None:
        working_set = max(0, cur.memory_usage - (cur.memory_inactive_file or 0))
    limit = memory_limit
    is_host = False
    if not limit:
        limit, is_host = host_memory, True
    memory_percent = 100.0 * working_set / limit if working_set is not None and limit else None
    return Sample(
        source=cur.source,
        cpu_percent=cpu_percent,
        cpu_cores=cpu_cores,
        memory_percent=memory_percent,
        memory_working_set=working_set,
        memory_usage=cur.memory_usage,
        memory_limit=limit,
        memory_limit_is_host=is_host,
        net_rx_bps=_rate(prev.net_rx, cur.net_rx, dt) if prev else None,
        net_tx_bps=_rate(prev.net_tx, cur.net_tx, dt) if prev else None,
        blk_read_bps=_rate(prev.blk_read, cur.blk_read, dt) if prev else None,
        blk_write_bps=_rate(prev.blk_write, cur.blk_write, dt) if prev else None,
    )


def counters_from_api(stats: dict[str, Any], at: float) -> Counters:
    """Counters from one Engine API stats document (cgroup v1 or v2 daemon)."""
    cpu = (stats.get("cpu_stats") or {}).get("cpu_usage") or {}
    memory = stats.get("memory_stats") or {}
    mstats = memory.get("stats") or {}
    inactive = mstats.get("total_inactive_file", mstats.get("inactive_file"))
    networks = stats.get("networks") or {}
    rx = sum(int(n.get("rx_bytes", 0)) for n in networks.values()) if networks else None
    tx = sum(int(n.get("tx_bytes", 0)) for n in networks.values()) if networks else None
    read = write = None
    for entry in (stats.get("blkio_stats") or {}).get("io_service_bytes_recursive") or []:
        op = str(entry.get("op", "")).lower()
        if op == "read":
            read = (read or 0) + int(entry.get("value", 0))
        elif op == "write":
            write = (write or 0) + int(entry.get("value", 0))
    return Counters(
        at=at,
        source="api",
        cpu_ns=int(cpu["total_usage"]) if "total_usage" in cpu else None,
        memory_usage=int(memory["usage"]) if "usage" in memory else None,
        memory_inactive_file=int(inactive) if inactive is not None else None,
        memory_limit=int(memory["limit"]) if "limit" in memory else None,
        net_rx=rx,
        net_tx=tx,
        blk_read=read if read is not None else (0 if "blkio_stats" in stats else None),
        blk_write=write if write is not None else (0 if "blkio_stats" in stats else None),
    )

"""What HemoStat knows about a container, parsed from `docker inspect`, and the label policy
every agent applies (monitoring opt-out, remediation opt-in, protection, the stack itself)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = [
    "COMPOSE_PROJECT",
    "COMPOSE_SERVICE",
    "LABEL_CLONE_OF",
    "LABEL_CPU_THRESHOLD",
    "LABEL_MEMORY_THRESHOLD",
    "LABEL_MONITOR",
    "LABEL_PROTECT",
    "LABEL_REMEDIATE",
    "LABEL_STACK",
    "SWARM_SERVICE",
    "ContainerInfo",
    "env_secret_values",
    "matches_label",
    "own_container_id",
    "parse_inspect",
    "parse_time",
]

LABEL_MONITOR = "hemostat.monitor"  # "false": never watched
LABEL_REMEDIATE = "hemostat.remediate"  # "true": HemoStat may act on it (unless scope is all)
LABEL_PROTECT = "hemostat.protect"  # "true": never touched, whatever else says
LABEL_STACK = "hemostat.stack"  # set on HemoStat's own services
LABEL_CLONE_OF = "hemostat.clone-of"  # a scale-up clone: the container it copies (the socket
# proxy fills the clone's environment values, which it masks in inspections, from that one)
LABEL_CPU_THRESHOLD = "hemostat.cpu_threshold"
LABEL_MEMORY_THRESHOLD = "hemostat.memory_threshold"
COMPOSE_PROJECT = "com.docker.compose.project"
COMPOSE_SERVICE = "com.docker.compose.service"
SWARM_SERVICE = "com.docker.swarm.service.name"

_ZERO_TIME = "0001-01-01T00:00:00Z"


def matches_label(labels: Mapping[str, str], selector: str | None) -> bool:
    """`KEY` (present) or `KEY=VALUE` (equal); no selector matches everything."""
    if not selector:
        return True
    key, sep, value = selector.partition("=")
    if not sep:
        return key in labels
    return labels.get(key) == value


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    name: str
    image: str
    labels: dict[str, str] = field(default_factory=dict)
    state: str = "unknown"  # created, running, paused, restarting, exited, dead
    health: str | None = None  # starting, healthy, unhealthy; None without a HEALTHCHECK
    restart_count: int = 0
    exit_code: int | None = None
    oom_killed: bool = False
    pid: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    memory_limit: int | None = None  # bytes; None = no limit
    cpu_limit: float | None = None  # cores; None = no limit
    restart_policy: str = ""
    health_output: str | None = None  # output of the last health check probe (unredacted)
    stop_signal: str | None = None  # Config.StopSignal: also a deliberate stop when sent
    # The values of its environment: secrets until proven otherwise; never shown, only masked.
    secret_values: tuple[str, ...] = field(default=(), repr=False)

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def compose_project(self) -> str | None:
        return self.labels.get(COMPOSE_PROJECT)

    @property
    def compose_service(self) -> str | None:
        return self.labels.get(COMPOSE_SERVICE) or self.labels.get(SWARM_SERVICE)

    @property
    def has_healthcheck(self) -> bool:
        return self.health is not None

    def label_true(self, key: str) -> bool:
        return self.labels.get(key, "").strip().lower() in ("1", "true", "yes", "on")

    def label_false(self, key: str) -> bool:
        return self.labels.get(key, "").strip().lower() in ("0", "false", "no", "off")

    @property
    def is_stack(self) -> bool:
        return self.label_true(LABEL_STACK)

    @property
    def is_protected(self) -> bool:
        return self.label_true(LABEL_PROTECT)

    def label_float(self, key: str) -> float | None:
        raw = self.labels.get(key)
        if raw is None:
            return None
        try:
            value = float(raw)
        except ValueError:
            return None
        return value if 0 < value <= 100 else None


def parse_time(raw: str | None) -> datetime | None:
    """Docker's RFC 3339 times (nanoseconds, `Z` or an offset); None for the zero time."""
    if not raw or raw.startswith(_ZERO_TIME[:4]):
        return None
    text = raw.strip()
    offset = "+00:00"
    if text.endswith("Z"):
        text = text[:-1]
    elif len(text) > 6 and text[-6] in "+-" and text[-3] == ":":
        text, offset = text[:-6], text[-6:]
    # Docker gives nanoseconds; Python parses at most microseconds.
    if "." in text:
        head, frac = text.split(".", 1)
        frac = "".join(ch for ch in frac if ch.isdigit())[:6]
        text = f"{head}.{frac}"
    try:
        return datetime.fromisoformat(text + offset)
    except ValueError:
        return None


def parse_inspect(data: dict[str, Any]) -> ContainerInfo:
    """A ContainerInfo from the Engine API's container inspect JSON."""
    state = data.get("State") or {}
    config = data.get("Config") or {}
    host = data.get("HostConfig") or {}
    health = (state.get("Health") or {}).get("Status") or None
    cpu_limit: float | None = None
    if host.get("NanoCpus"):
        cpu_limit = host["NanoCpus"] / 1e9
    elif host.get("CpuQuota") and host.get("CpuQuota", 0) > 0:
        cpu_limit = host["CpuQuota"] / (host.get("CpuPeriod") or 100_000)
    elif host.get("CpusetCpus"):
        cpu_limit = float(_count_cpuset(host["CpusetCpus"]))
    exit_code = state.get("ExitCode")
    probes = (state.get("Health") or {}).get("Log") or []
    # Not cut here: Docker keeps at most 4 KiB, and the Monitor redacts before it cuts.
    health_output = str(probes[-1].get("Output", "")).strip() if probes else None
    return ContainerInfo(
        id=data["Id"],
        name=(data.get("Name") or "").lstrip("/"),
        image=config.get("Image") or data.get("Image") or "",
        labels=dict(config.get("Labels") or {}),
        state=state.get("Status") or "unknown",
        health=health if health != "none" else None,
        restart_count=int(data.get("RestartCount") or 0),
        exit_code=int(exit_code) if exit_code is not None else None,
        oom_killed=bool(state.get("OOMKilled")),
        pid=int(state.get("Pid") or 0),
        started_at=parse_time(state.get("StartedAt")),
        finished_at=parse_time(state.get("FinishedAt")),
        memory_limit=int(host["Memory"]) if host.get("Memory") else None,
        cpu_limit=cpu_limit,
        restart_policy=(host.get("RestartPolicy") or {}).get("Name") or "",
        health_output=health_output or None,
        stop_signal=config.get("StopSignal") or None,
        secret_values=env_secret_values(config.get("Env") or []),
    )


# Environment variables whose values are not secret and too common to mask usefully.
_PLAIN_ENV = {"PATH", "HOME", "HOSTNAME", "LANG", "LC_ALL", "TERM", "PWD", "SHLVL", "TZ", "USER"}


def env_secret_values(env: list[str]) -> tuple[str, ...]:
    values = []
    for entry in env:
        key, sep, value = str(entry).partition("=")
        if sep and key not in _PLAIN_ENV and len(value) >= 6:
            values.append(value)
    return tuple(values)


def _count_cpuset(spec: str) -> int:
    count = 0
    for part in spec.split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            count += int(hi) - int(lo) + 1
        elif part.strip():
            count += 1
    return count


def own_container_id(proc: Path = Path("/proc")) -> str | None:
    """Our own container id when we run in one (so we never alert about ourselves)."""
    patterns = (
        ("self/cgroup", re.compile(r"(?:/docker/|docker-)([0-9a-f]{64})")),
        ("self/mountinfo", re.compile(r"/containers/([0-9a-f]{64})/")),
    )
    for name, pattern in patterns:
        try:
            match = pattern.search((proc / name).read_text())
        except OSError:
            continue
        if match:
            return match.group(1)
    return None

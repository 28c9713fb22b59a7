"""Before the compose stack starts (`make up`, `make demo`): refuse example secrets, then give each
service only its own settings.

- Any password, token or secret in `.env` that is empty where the stack needs one, or still
  holds its example value (`change-me-...`), stops the start with the variable's name and a
  freshly generated strong value to paste.
- `.env` is split into one env file per service under `.state/env/` (a folder only the owner can
  enter): an agent receives the core, bus and agent sections plus its own — the LLM keys reach
  only the Analyzer, the webhook URLs only the Alert agent, the dashboard password only the
  dashboard. The webhook token is also written as a file Alertmanager mounts as a secret.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel

from shared.settings import (
    AgentSettings,
    AlertSettings,
    AnalyzerSettings,
    BusSettings,
    CoreSettings,
    DashboardSettings,
    MetricsSettings,
    MonitorSettings,
    ResponderSettings,
    env_name,
)

__all__ = [
    "EDGE_ROLES",
    "REQUIRED",
    "ROLES",
    "Problem",
    "check",
    "check_edge",
    "read_env_file",
    "role_env",
    "write",
]

_COMMON: tuple[type[BaseModel], ...] = (CoreSettings, BusSettings, AgentSettings)
ROLES: dict[str, tuple[type[BaseModel], ...]] = {
    "monitor": (*_COMMON, MonitorSettings),
    "analyzer": (*_COMMON, AnalyzerSettings),
    "responder": (*_COMMON, ResponderSettings),
    "alert": (*_COMMON, AlertSettings),
    "metrics": (*_COMMON, MetricsSettings),
    "dashboard": (CoreSettings, DashboardSettings),
}
# What an edge host (docker-compose.edge.yml) runs: the rest is the central host's.
EDGE_ROLES = ("monitor", "responder")
# What the stack cannot run without (each one guards something reachable on its networks).
REQUIRED = ("REDIS_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "HEMOSTAT_WEBHOOK_TOKEN")
_SECRET_SUFFIXES = ("_PASSWORD", "_TOKEN", "_SECRET", "_KEY")
_EXAMPLE = "change-me"


@dataclass(frozen=True)
class Problem:
    name: str
    why: str
    suggestion: str


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (`export`, comments and blank lines allowed; quotes stripped)."""
    env: dict[str, str] = {}
    if not path.is_file():
        return env
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        key = key.removeprefix("export ").strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key] = value
    return env


def check(env: Mapping[str, str]) -> list[Problem]:
    """Every secret still at its example value, and every required one that is empty."""
    problems = []
    for name in sorted(set(env) | set(REQUIRED)):
        value = env.get(name, "")
        secret = name.endswith(_SECRET_SUFFIXES)
        if secret and value.lower().startswith(_EXAMPLE):
            problems.append(Problem(name, "still has its example value", _strong()))
        elif name in REQUIRED and not value:
            problems.append(Problem(name, "is empty, and the stack needs it", _strong()))
    return problems


def check_edge(env: Mapping[str, str]) -> list[Problem]:
    """An edge has no Redis of its own: REDIS_URL (or the sentinels) must name the central one,
    and the secrets it carries must not be example values."""
    problems = [p for p in check(env) if p.name not in REQUIRED]
    url = env.get("REDIS_URL", "")
    if not url and not env.get("HEMOSTAT_REDIS_SENTINELS"):
        problems.append(
            Problem(
                "REDIS_URL",
                "is empty: an edge reports to the central Redis",
                "rediss://:PASSWORD@central.example:6379/0",
            )
        )
    elif url and not env.get("HEMOSTAT_REDIS_SENTINELS"):
        host = urlsplit(url).hostname or ""
        if host in ("", "localhost", "redis") or host.startswith("127.") or host == "::1":
            problems.append(
                Problem(
                    "REDIS_URL",
                    f"names {host or 'no host'}, which is not the central Redis from an "
                    "edge's containers",
                    "rediss://:PASSWORD@central.example:6379/0",
                )
            )
    return problems


def role_env(role: str, env: Mapping[str, str]) -> dict[str, str]:
    """The variables of `env` that belong to `role`'s settings sections, and nothing else."""
    names = {env_name(field) for section in ROLES[role] for field in section.model_fields}
    return {k: v for k, v in env.items() if k in names and v != ""}


def write(env: Mapping[str, str], out: Path, roles: Iterable[str] = ROLES) -> list[Path]:
    # Every service of the stack runs on this machine: one host name for all of them (a
    # container's own hostname is its id, and the Responder acts only for its host's requests).
    if not env.get("HEMOSTAT_HOST_NAME"):
        env = {**env, "HEMOSTAT_HOST_NAME": socket.gethostname()}
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o700)  # the files hold secrets; the folder keeps other users out
    written = []
    for role in roles:
        path = out / f"{role}.env"
        lines = [f"{k}={v}" for k, v in sorted(role_env(role, env).items())]
        _write(path, "\n".join(lines) + "\n", 0o600)
        written.append(path)
    token = out / "webhook-token"
    # Read by Alertmanager (an unprivileged user in its container) through a secret mount.
    _write(token, env.get("HEMOSTAT_WEBHOOK_TOKEN", ""), 0o644)
    written.append(token)
    return written


def _write(path: Path, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    path.chmod(mode)


def _strong() -> str:
    return secrets.token_urlsafe(32)

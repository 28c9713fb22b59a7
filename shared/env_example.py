"""Render `.env.example` from the settings model, so the file documents every setting with its
real default (`hemostat config env-example > .env.example`; a test keeps the file in step)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic_core import PydanticUndefined

from shared.settings import SECTIONS, env_name

__all__ = ["COMPOSE_ONLY", "render"]

# Variables read by docker compose only (not by the agents), documented alongside.
COMPOSE_ONLY: list[tuple[str, str, str]] = [
    ("REDIS_PASSWORD", "change-me-redis-password", "Redis password of the stack (change it)."),
    ("GRAFANA_ADMIN_PASSWORD", "change-me-grafana-password", "Grafana admin password (change it)."),
    ("BIND_ADDRESS", "127.0.0.1", "Host address the stack's web UIs are published on."),
    ("PIP_NO_INDEX", "", "1 to build the image from deploy/wheelhouse only (air-gapped)."),
]


def _default_text(field: Any, name: str) -> str:
    if name == "host_name":
        return ""  # the machine's hostname, computed at start
    default = field.default
    if default is PydanticUndefined and field.default_factory is not None:
        default = field.default_factory()
    if default is None or default is PydanticUndefined:
        return ""
    if isinstance(default, SecretStr):
        return ""
    if isinstance(default, Enum):
        return str(default.value)
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, list | tuple):
        return ",".join(str(v) for v in default)
    if isinstance(default, Path):
        return str(default)
    return str(default)


def render() -> str:
    out = [
        "# HemoStat settings. Copy to .env and change what you need; every line shows the default.",
        "# Empty values mean 'unset'. Generated from shared/settings.py by",
        "#   hemostat config env-example > .env.example",
        "",
    ]
    for section in SECTIONS:
        title = (section.__doc__ or section.__name__).strip().splitlines()[0]
        out.append(f"# ---- {title}")
        for name, field in section.model_fields.items():
            description = field.description or ""
            out.append(f"# {description}")
            out.append(f"{env_name(name)}={_default_text(field, name)}")
        out.append("")
    if COMPOSE_ONLY:
        out.append("# ---- docker compose only")
        for key, default, description in COMPOSE_ONLY:
            out.append(f"# {description}")
            out.append(f"{key}={default}")
        out.append("")
    return "\n".join(out)

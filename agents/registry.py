"""Which agents exist and how to build each one. Imports happen only when an agent is built."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from shared.errors import ConfigError

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from agents.base import BaseAgent
    from shared.settings import Settings

__all__ = ["AGENTS", "AgentFactory", "load_factory"]

AgentFactory = Callable[["Settings", "Redis"], "BaseAgent"]

# name -> "module:function" building the agent with its real collaborators.
AGENTS: dict[str, str] = {
    "monitor": "agents.monitor.agent:build",
    "analyzer": "agents.analyzer.agent:build",
    "responder": "agents.responder.agent:build",
    "alert": "agents.alert.agent:build",
    "metrics": "agents.metrics.agent:build",
}


def load_factory(name: str) -> AgentFactory:
    """A known agent name, or an explicit `package.module:function` (plugins, tests)."""
    target = AGENTS.get(name, name if ":" in name else None)
    if target is None:
        known = ", ".join(sorted(AGENTS)) or "none"
        raise ConfigError(f"unknown agent {name!r} (known: {known})")
    module_name, _, attr = target.partition(":")
    try:
        factory: AgentFactory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load agent {name!r} from {target!r}: {exc}") from exc
    return factory

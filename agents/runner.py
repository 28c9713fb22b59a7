"""The runner owns the process: logging configuration, the event loop and signals. Agents only
get `stop()` called on them."""

from __future__ import annotations

import asyncio
import signal
from typing import Protocol

from agents.registry import AgentFactory
from shared.errors import AgentCrashed
from shared.log import configure_logging, get_logger
from shared.redaction import Redactor
from shared.redis_client import connect
from shared.settings import Settings

__all__ = ["Service", "run_agent", "run_service", "setup_logging"]

log = get_logger(__name__)


def setup_logging(settings: Settings) -> Redactor:
    redactor = Redactor(settings.secret_values())
    configure_logging(settings.log_level, settings.log_format, redactor)
    return redactor


def run_agent(factory: AgentFactory, settings: Settings) -> int:
    """Run one agent until SIGTERM/SIGINT; exit code 0 on a clean stop, 1 if it crashed."""
    setup_logging(settings)
    return asyncio.run(_serve(factory, settings))


async def _serve(factory: AgentFactory, settings: Settings) -> int:
    redis = connect(settings)
    agent = factory(settings, redis)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stop)
    try:
        await agent.run()
        return 0
    except AgentCrashed as exc:
        log.error("agent.crashed", agent=agent.name, error=str(exc))
        return 1
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await redis.aclose()


class Service(Protocol):
    """A long-running part that is not an agent (no Redis, no heartbeat): the socket proxy."""

    name: str

    async def run(self) -> None: ...

    def stop(self) -> None: ...


def run_service(service: Service, settings: Settings) -> int:
    """Run `service` until SIGTERM/SIGINT; exit code 0 on a clean stop."""
    setup_logging(settings)
    return asyncio.run(_serve_service(service))


async def _serve_service(service: Service) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stop)
    try:
        await service.run()
        return 0
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)

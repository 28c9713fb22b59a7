"""A small agent for testing BaseAgent and the runner. `build` is importable by the CLI:
`hemostat agent tests.support.agents:build`. ECHO_DELAY_S makes each handler slow and
ECHO_LOG names a file where handled event ids are appended."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from redis.asyncio import Redis

from agents.base import BaseAgent, background, periodic
from shared.events import Channel, Event
from shared.settings import Settings


class EchoAgent(BaseAgent):
    name = "echo"
    consumes = (Channel.HEALTH_ALERT,)

    def __init__(self, *, delay_s: float = 0.0, log_path: str | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.delay_s = delay_s
        self.log_path = log_path
        self.handled: list[str] = []
        self.ticks = 0
        self.fail_ticks = 0
        self.hooks: list[str] = []
        self.background_exited = False

    async def on_start(self) -> None:
        self.hooks.append("start")

    async def on_started(self) -> None:
        self.hooks.append("started")

    async def on_stop(self) -> None:
        self.hooks.append("stop")

    async def handle(self, event: Event) -> None:
        if self.log_path:
            self._append(f"start {event.id}")
        await asyncio.sleep(self.delay_s)
        self.handled.append(event.id)
        if self.log_path:
            self._append(f"done {event.id}")

    def _append(self, line: str) -> None:
        with open(self.log_path or os.devnull, "a") as fh:
            fh.write(line + "\n")

    @periodic(0.05)
    async def tick(self) -> None:
        self.ticks += 1
        if self.fail_ticks:
            self.fail_ticks -= 1
            raise RuntimeError("tick failed on purpose")

    @background
    async def waiter(self) -> None:
        while await self.sleep(3600):
            pass
        self.background_exited = True


def build(settings: Settings, redis: Redis) -> EchoAgent:
    return EchoAgent(
        settings=settings,
        redis=redis,
        delay_s=float(os.environ.get("ECHO_DELAY_S", "0")),
        log_path=os.environ.get("ECHO_LOG"),
    )

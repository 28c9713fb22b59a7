"""Running agents on a StubBus (no Redis for the bus): start, let a test publish and join, stop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from agents.base import BaseAgent
from shared.settings import Settings
from tests.conftest import make_settings

# Nothing listens here: an agent on a StubBus with redis=None never connects.
NO_REDIS = "redis://stub.invalid:6379/0"


def stub_settings(**overrides: Any) -> Settings:
    return make_settings(NO_REDIS, **overrides)


@contextlib.asynccontextmanager
async def started(agent: BaseAgent) -> AsyncIterator[asyncio.Task[None]]:
    """Run the agent until the block ends; yields once its consumer exists (its groups do)."""
    task = asyncio.create_task(agent.run())
    while agent.consumes and agent.consumer is None and not task.done():  # noqa: ASYNC110
        await asyncio.sleep(0)
    try:
        yield task
    finally:
        agent.stop()
        await asyncio.wait_for(task, 10)

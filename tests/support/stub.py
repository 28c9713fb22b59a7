"""Running agents on a StubBus (no Redis for the bus): start, let a test publish and join, stop.

Agents that keep state (the Analyzer's incidents and claims, the Alert agent's deduplication,
storms and delivery log) get `memory_redis()`: fakeredis, an in-memory Redis that runs the stores'
own Lua scripts, so their handler tests need no service. The same stores are tested on a real
redis-server by the real-bus test modules."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fakeredis import FakeAsyncRedis, FakeServer

from agents.base import BaseAgent
from shared.settings import Settings
from tests.conftest import make_settings

# Nothing listens here: an agent on a StubBus with redis=None never connects.
NO_REDIS = "redis://stub.invalid:6379/0"


def memory_redis() -> FakeAsyncRedis:
    """A private in-memory Redis (its own server: nothing is shared between tests)."""
    return FakeAsyncRedis(server=FakeServer(), decode_responses=True)


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

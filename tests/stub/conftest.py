"""Handler tests on the StubBus: no service at all.

Events are delivered in memory (shared/stub_bus.py). An agent that keeps state (the Analyzer's
incidents and claims, the Alert agent's deduplication, storms and delivery log) gets `redis`: an
in-memory Redis (fakeredis) that runs the stores' own Lua scripts, a private one per test. Its
settings' `redis_url` names an address where nothing listens, so an agent that tried to reach a
Redis server of its own would fail. The same stores and delivery itself are tested on a real
redis-server by the modules in tests/."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from fakeredis import FakeAsyncRedis

from tests.support.stub import NO_REDIS, memory_redis


@pytest.fixture
async def redis() -> AsyncIterator[FakeAsyncRedis]:
    client = memory_redis()
    yield client
    await client.aclose()


@pytest.fixture
def redis_url() -> str:
    return NO_REDIS

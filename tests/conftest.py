from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from shared.settings import Settings
from tests.support.docker_events import docker_events
from tests.support.services import (
    TEST_LABEL,
    RedisServer,
    docker_client,
    ensure_test_image,
    redis_server,
    remove_test_containers,
)

# Fixtures shared by several test modules (e.g. `runbooks` for the Responder tests).
pytest_plugins = ["tests.support.responder"]


@pytest.fixture(scope="session")
def redis_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = redis_server(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_service: RedisServer) -> Iterator[str]:
    import redis as sync_redis

    client = sync_redis.Redis.from_url(redis_service.url)
    client.flushall()
    client.close()
    yield redis_service.url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


def make_settings(redis_url: str, **overrides: Any) -> Settings:
    defaults: dict[str, Any] = {
        "redis_url": redis_url,
        "instance": "test-1",
        "host_name": "test-host",
        "bus_block_ms": 100,
        "bus_claim_idle_ms": 1_000,
        "bus_reclaim_interval_s": 0.2,
        "bus_retry_backoff_s": 0.05,
        "heartbeat_interval_s": 0.2,
        "heartbeat_ttl_s": 2.0,
        "shutdown_grace_s": 5.0,
        # Test containers only: nothing else on this engine is watched or touched.
        "watch_label": "hemostat.test",
    }
    return Settings(_env_file=None, **(defaults | overrides))  # type: ignore[call-arg]


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return make_settings(redis_url)


@pytest.fixture(scope="session")
def docker() -> Any:
    client = docker_client()
    docker_events()  # follow Docker's live event stream from the first test that uses Docker
    yield client
    remove_test_containers(client)
    client.close()


@pytest.fixture(scope="session")
def test_image(docker: Any) -> str:
    return ensure_test_image(docker)


@pytest.fixture
def run_label(docker: Any) -> Iterator[dict[str, str]]:
    """Labels for containers a test creates; they are removed when the test ends."""
    run_id = uuid.uuid4().hex[:12]
    yield {TEST_LABEL: run_id}
    remove_test_containers(docker, run_id)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path

"""Building Redis clients. Connections are lazy: nothing connects until the first command."""

from __future__ import annotations

from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from shared.settings import Settings

# Errors that mean "Redis is not reachable right now" (retry later), as opposed to a bad command.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    OSError,
)


def connect(settings: Settings, url: str | None = None) -> Redis:
    """An asyncio client; the socket timeout leaves room for the bus's blocking reads."""
    return Redis.from_url(
        url or settings.effective_redis_url(),
        decode_responses=True,
        socket_connect_timeout=5,
        socket_timeout=settings.bus_block_ms / 1000 + 10,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=2),
    )


def connect_sync(settings: Settings, url: str | None = None) -> SyncRedis:
    """A blocking client for the CLI and the dashboard."""
    return SyncRedis.from_url(
        url or settings.effective_redis_url(),
        decode_responses=True,
        socket_connect_timeout=3,
        socket_timeout=5,
    )

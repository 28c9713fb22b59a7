"""Building Redis clients, in one place for every shape the settings allow:

- a plain URL (`redis://`), or TLS (`rediss://` with HEMOSTAT_REDIS_TLS_CA_FILE and, for mutual
  TLS, a client certificate and key);
- Redis Sentinel (HEMOSTAT_REDIS_SENTINELS): redis-py's Sentinel client asks the sentinels where
  the primary is whenever it opens a connection, so after a failover the next connection goes to
  the new primary. The URL still gives the scheme (TLS, for the sentinels too), user, password
  and db.

Connections are lazy: nothing connects until the first command. A failover shows up as the
errors in `CONNECTION_ERRORS`, which every loop treats as "Redis unavailable, retry".
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel as SyncSentinel

from shared.settings import Settings

__all__ = [
    "CONNECTION_ERRORS",
    "SentinelRedis",
    "SyncSentinelRedis",
    "client_key",
    "connect",
    "connect_sync",
    "describe",
]

# Errors that mean "Redis is not reachable right now" (retry later), as opposed to a bad command.
# A failover adds two: MasterNotFoundError (a ConnectionError: no sentinel knows a healthy
# primary yet) and ReadOnlyError (a write reached a primary that was demoted to a replica; the
# Sentinel client turns it into a ConnectionError itself, a plain URL's client does not).
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ReadOnlyError,
    ConnectionError,
    OSError,
)

# Asking a sentinel is quick or it is down: a short timeout moves on to the next one.
_SENTINEL_TIMEOUT_S = 2.0


def _tls_options(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if settings.redis_tls_ca_file is not None:
        options["ssl_ca_certs"] = str(settings.redis_tls_ca_file)
    if settings.redis_tls_cert_file is not None and settings.redis_tls_key_file is not None:
        options["ssl_certfile"] = str(settings.redis_tls_cert_file)
        options["ssl_keyfile"] = str(settings.redis_tls_key_file)
    return options


def _is_tls(url: str) -> bool:
    return urlsplit(url).scheme == "rediss"


def _sentinel_options(settings: Settings, url: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(options for the primary's connections, options for the sentinels' connections)."""
    parsed = parse_url(url)  # type: ignore[no-untyped-call]
    primary = {k: v for k, v in parsed.items() if k not in ("host", "port")}
    primary.pop("connection_class", None)
    password = settings.redis_sentinel_password
    sentinel: dict[str, Any] = {
        "password": password.get_secret_value() if password else None,
        "socket_connect_timeout": _SENTINEL_TIMEOUT_S,
        "socket_timeout": _SENTINEL_TIMEOUT_S,
        "decode_responses": True,
    }
    if _is_tls(url):
        tls = _tls_options(settings)
        primary |= {"ssl": True, **tls}
        sentinel |= {"ssl": True, **tls}
    return primary, sentinel


class SentinelRedis(Redis):
    """The primary's client; closing it also closes its connections to the sentinels."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        manager = getattr(self.connection_pool, "sentinel_manager", None)
        await super().aclose(close_connection_pool)
        if isinstance(manager, Sentinel):
            await manager.aclose()


class SyncSentinelRedis(SyncRedis):
    def close(self) -> None:
        manager = getattr(self.connection_pool, "sentinel_manager", None)
        super().close()
        if isinstance(manager, SyncSentinel):
            manager.close()


def connect(settings: Settings, url: str | None = None) -> Redis:
    """An asyncio client; the socket timeout leaves room for the bus's blocking reads and for a
    WAIT (both end server-side first)."""
    url = url or settings.effective_redis_url()
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": 5,
        "socket_timeout": max(settings.bus_block_ms, settings.redis_wait_timeout_ms) / 1000 + 10,
        "health_check_interval": 15,
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=2),
    }
    if settings.redis_sentinels:
        primary, sentinel = _sentinel_options(settings, url)
        manager = Sentinel(  # type: ignore[no-untyped-call]
            settings.redis_sentinel_addresses(), sentinel_kwargs=sentinel
        )
        client: Redis = manager.master_for(
            settings.redis_sentinel_service, redis_class=SentinelRedis, **(options | primary)
        )
        return client
    if _is_tls(url):
        options |= _tls_options(settings)
    return Redis.from_url(url, **options)


def connect_sync(settings: Settings, url: str | None = None) -> SyncRedis:
    """A blocking client for the CLI and the dashboard."""
    url = url or settings.effective_redis_url()
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": 3,
        "socket_timeout": max(5.0, settings.redis_wait_timeout_ms / 1000 + 2),
    }
    if settings.redis_sentinels:
        primary, sentinel = _sentinel_options(settings, url)
        manager = SyncSentinel(  # type: ignore[no-untyped-call]
            settings.redis_sentinel_addresses(), sentinel_kwargs=sentinel
        )
        client: SyncRedis = manager.master_for(  # type: ignore[no-untyped-call]
            settings.redis_sentinel_service, redis_class=SyncSentinelRedis, **(options | primary)
        )
        return client
    if _is_tls(url):
        options |= _tls_options(settings)
    return SyncRedis.from_url(url, **options)


def describe(settings: Settings) -> str:
    """Where Redis is, for logs and error messages: never a password."""
    url = urlsplit(settings.effective_redis_url())
    if settings.redis_sentinels:
        tls = " over TLS" if url.scheme == "rediss" else ""
        return (
            f"primary {settings.redis_sentinel_service!r} via sentinels "
            f"{settings.redis_sentinels}{tls}"
        )
    host = url.hostname or ""
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{host}{port}{url.path}"


def client_key(settings: Settings) -> str:
    """A digest of everything a client is built from: equal keys, interchangeable clients."""
    fields = [name for name in type(settings).model_fields if name.startswith("redis_")]
    parts = [settings.effective_redis_url()]
    for name in sorted(fields):
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        parts.append(f"{name}={value}")
    parts.append(f"bus_block_ms={settings.bus_block_ms}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()

"""A Redis Sentinel group on loopback ports: a primary, replicas, sentinels, all real processes.
Waits are for facts the servers report (a replica's link is up, every sentinel knows its peers and
the replicas, every sentinel names the new primary), never for a fixed time."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis as sync_redis

from shared.redis_server import RedisServer, SentinelServer, ServerTLS
from tests.support.services import unavailable

__all__ = ["SentinelGroup", "confirms", "sentinel_group"]

SERVICE = "hemostat"


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(sync_redis.RedisError, OSError):
            if condition():
                return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def confirms(primary: sync_redis.Redis, replicas: int) -> bool:
    """Whether `replicas` replicas confirm a write now (WAIT). A replica whose link is up, even one
    the primary lists as online, may not answer WAIT for a few hundred milliseconds after its full
    sync; this is the fact that counts. The probe key is the only trace."""
    primary.incr("hemostat:test:replication-probe")
    return int(primary.wait(replicas, 100)) >= replicas


@dataclass
class SentinelGroup:
    primary: RedisServer
    replicas: list[RedisServer]
    sentinels: list[SentinelServer]
    password: str | None = None
    sentinel_password: str | None = None
    tls: ServerTLS | None = None
    service: str = SERVICE
    servers: list[RedisServer] = field(default_factory=list)

    @property
    def addresses(self) -> str:
        """HEMOSTAT_REDIS_SENTINELS for this group."""
        return ",".join(s.address for s in self.sentinels)

    @property
    def url(self) -> str:
        """REDIS_URL for this group: its host is never used (the sentinels name the primary)."""
        auth = f":{self.password}@" if self.password else ""
        return f"{'rediss' if self.tls else 'redis'}://{auth}primary.invalid/0"

    def settings(self) -> dict[str, Any]:
        """Settings overrides that point HemoStat at this group."""
        return {
            "redis_url": self.url,
            "redis_sentinels": self.addresses,
            "redis_sentinel_service": self.service,
            "redis_sentinel_password": self.sentinel_password,
            "redis_tls_ca_file": self.tls.ca if self.tls else None,
        }

    def _options(self) -> dict[str, Any]:
        if self.tls is None:
            return {}
        return {
            "ssl": True,
            "ssl_ca_certs": str(self.tls.ca),
            "ssl_certfile": str(self.tls.cert),
            "ssl_keyfile": str(self.tls.key),
        }

    def client(self, server: RedisServer) -> sync_redis.Redis:
        """A direct client of one data server (not through the sentinels)."""
        return sync_redis.Redis(
            port=server.port,
            password=self.password,
            decode_responses=True,
            socket_timeout=2,
            **self._options(),
        )

    def sentinel_client(self, sentinel: SentinelServer) -> sync_redis.Redis:
        return sync_redis.Redis(
            port=sentinel.port,
            password=self.sentinel_password,
            decode_responses=True,
            socket_timeout=2,
            **self._options(),
        )

    def _ask(self, sentinel: SentinelServer, *args: Any) -> Any:
        with self.sentinel_client(sentinel) as client:
            return client.execute_command(*args)

    def primary_port(self) -> set[int]:
        """The primary's port as each live sentinel names it."""
        ports = set()
        for sentinel in self.sentinels:
            if sentinel.proc is None:
                continue
            with self.sentinel_client(sentinel) as client:
                _, port = client.sentinel_get_master_addr_by_name(self.service)
                ports.add(int(port))
        return ports

    def is_linked(self, replica: RedisServer, primary: RedisServer) -> bool:
        """Replicating `primary`, with every replica confirming writes (see `confirms`)."""
        with self.client(replica) as client:
            info = client.info("replication")
        if not (
            info.get("role") == "slave"
            and int(info.get("master_port", 0)) == primary.port
            and info.get("master_link_status") == "up"
        ):
            return False
        with self.client(primary) as client:
            return confirms(client, len(self.replicas))

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Every replica linked; every sentinel knows the primary, the replicas and its peers (a
        failover needs all three)."""
        for replica in self.replicas:
            _wait(lambda r=replica: self.is_linked(r, self.primary), timeout, "replication")

        def sentinels_ready() -> bool:
            for sentinel in self.sentinels:
                with self.sentinel_client(sentinel) as client:
                    state = client.sentinel_master(self.service)
                if int(state["num-slaves"]) < len(self.replicas):
                    return False
                if int(state["num-other-sentinels"]) < len(self.sentinels) - 1:
                    return False
            return True

        _wait(sentinels_ready, timeout, "sentinels to know the replicas and each other")

    def wait_promoted(self, server: RedisServer, timeout: float = 60.0) -> None:
        """Every live sentinel names `server` the primary, and `server` says it is one."""

        def promoted() -> bool:
            with self.client(server) as client:
                role = client.info("replication")["role"]
            return role == "master" and self.primary_port() == {server.port}

        _wait(promoted, timeout, f"sentinels to promote 127.0.0.1:{server.port}")

    def wait_linked(self, replica: RedisServer, primary: RedisServer, timeout: float = 60) -> None:
        _wait(lambda: self.is_linked(replica, primary), timeout, "replica linked to the primary")

    def stop(self) -> None:
        for process in [*self.sentinels, *self.servers]:
            with contextlib.suppress(Exception):
                process.stop(kill=True)


@contextlib.contextmanager
def sentinel_group(
    workdir: Path,
    *,
    replicas: int = 1,
    sentinels: int = 3,
    quorum: int = 2,
    password: str | None = None,
    sentinel_password: str | None = None,
    tls: ServerTLS | None = None,
    down_after_ms: int = 1_000,
) -> Iterator[SentinelGroup]:
    """Start the group and wait until it can fail over; stop every process afterwards."""
    if shutil.which("redis-server") is None:
        unavailable("redis-server binary not found (make test installs it)")
    group: SentinelGroup | None = None
    servers: list[RedisServer] = []
    started: list[SentinelServer] = []
    try:
        primary = RedisServer(workdir / "primary", password=password, tls=tls).start()
        servers.append(primary)
        for i in range(replicas):
            replica = RedisServer(
                workdir / f"replica{i}",
                password=password,
                tls=tls,
                replica_of=primary.port,
            )
            servers.append(replica.start())
        # Replicas first: a sentinel lists the replicas from the primary's first INFO reply,
        # instead of at its next periodic INFO (every 10 s).
        for i in range(sentinels):
            sentinel = SentinelServer(
                workdir / f"sentinel{i}",
                service=SERVICE,
                primary_port=primary.port,
                quorum=quorum,
                down_after_ms=down_after_ms,
                password=password,
                sentinel_password=sentinel_password,
                tls=tls,
            )
            started.append(sentinel.start())
        group = SentinelGroup(
            primary=primary,
            replicas=servers[1:],
            sentinels=started,
            password=password,
            sentinel_password=sentinel_password,
            tls=tls,
            servers=servers,
        )
        group.wait_ready()
        yield group
    finally:
        if group is not None:
            group.stop()
        else:
            for process in [*started, *servers]:
                process.stop(kill=True)

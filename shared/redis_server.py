"""Private redis-server processes: `hemostat run` starts one when no REDIS_URL is configured, and
tests and benchmarks use the same classes (a primary, a replica of it, a sentinel, over TLS or
not). Persistence (AOF) is on; data lives in `workdir`. Everything listens on loopback only."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from shared.errors import ConfigError

__all__ = ["RedisServer", "SentinelServer", "ServerTLS", "free_port"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class ServerTLS:
    """What a TLS-only server presents (`cert`, `key`) and trusts (`ca`). The same certificate
    is its client certificate when it connects out (a replica to its primary, a sentinel to the
    servers it watches), as redis-server does without `tls-client-cert-file`."""

    cert: Path
    key: Path
    ca: Path
    auth_clients: bool = False  # True: clients must present a certificate the CA signed

    def args(self, port: int) -> list[str]:
        return [
            "--port", "0",
            "--tls-port", str(port),
            "--tls-cert-file", str(self.cert.resolve()),
            "--tls-key-file", str(self.key.resolve()),
            "--tls-ca-cert-file", str(self.ca.resolve()),
            "--tls-auth-clients", "yes" if self.auth_clients else "no",
            "--tls-replication", "yes",
        ]  # fmt: skip

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.cert), str(self.key))
        return context


class _Process:
    """One redis-server process (a data server or a sentinel) and how to tell it answers."""

    kind = "redis-server"

    def __init__(
        self,
        workdir: Path,
        port: int | None,
        binary: str | None,
        password: str | None,
        tls: ServerTLS | None,
    ) -> None:
        found = binary or shutil.which("redis-server")
        if found is None:
            raise ConfigError("redis-server not found: install it (apt-get install redis-server)")
        self.binary = found
        self.workdir = workdir
        self.port = port or free_port()
        self.password = password
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 10.0) -> _Process:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            self.argv(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal must not kill it before we flush
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ConfigError(
                    f"{self.kind} exited with {self.proc.returncode}; see {self.log_path}"
                )
            if self.ping():
                return self
            time.sleep(0.05)
        self.stop(kill=True)
        raise ConfigError(f"{self.kind} did not answer on port {self.port} within {timeout}s")

    @property
    def log_path(self) -> Path:
        return (self.workdir / f"{self.kind}.log").resolve()

    def _private_file(self, name: str, text: str) -> Path:
        """Passwords go in a file only its owner reads, never on the command line (where `ps`
        shows them to every local user)."""
        path = (self.workdir / name).resolve()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        path.chmod(0o600)
        return path

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw:
                if self.tls is None:
                    return self._ping(raw)
                context = self.tls.client_context()
                with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                    return self._ping(sock)
        except OSError:  # ssl.SSLError included: a server still starting its TLS listener
            return False

    def _ping(self, sock: socket.socket) -> bool:
        if self.password:
            sock.sendall(f"AUTH {self.password}\r\n".encode())
            if not sock.recv(16).startswith(b"+OK"):
                return False
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        self.resume()  # a paused process cannot act on SIGTERM
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()  # SIGTERM: Redis flushes the AOF and exits
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: no flush, no goodbye to replicas or clients (a crashed machine, roughly)."""
        self.stop(kill=True)

    def pause(self) -> None:
        """SIGSTOP: alive, connections open, answering nothing (a stuck or partitioned node)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)


class RedisServer(_Process):
    """A data server: a primary, or a replica of the primary on loopback port `replica_of`."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        binary: str | None = None,
        password: str | None = None,
        *,
        replica_of: int | None = None,
        tls: ServerTLS | None = None,
    ) -> None:
        super().__init__(workdir, port, binary, password, tls)
        self.replica_of = replica_of

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        super().start(timeout)
        return self

    def argv(self) -> list[str]:
        config = []
        if self.password:
            # masterauth too: any server of a group may be a replica after a failover.
            config = [str(self._private_file(
                "auth.conf", f"requirepass {self.password}\nmasterauth {self.password}\n"
            ))]  # fmt: skip
        listen = self.tls.args(self.port) if self.tls else ["--port", str(self.port)]
        replica = ["--replicaof", "127.0.0.1", str(self.replica_of)] if self.replica_of else []
        return [
            self.binary,
            *config,  # a config file must come first
            *listen,
            *replica,
            "--bind", "127.0.0.1",
            "--dir", str(self.workdir.resolve()),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            # A replica (re)joining is served at once, not after the default 5 s wait for others.
            "--repl-diskless-sync-delay", "0",
            "--daemonize", "no",
            "--logfile", str((self.workdir / "redis.log").resolve()),
        ]  # fmt: skip

    @property
    def log_path(self) -> Path:
        return (self.workdir / "redis.log").resolve()

    def restart(self, downtime_s: float = 0.0, *, kill: bool = False) -> None:
        """Stop (SIGTERM, or SIGKILL with `kill`), wait `downtime_s`, start on the same port and
        data directory."""
        self.stop(kill=kill)
        time.sleep(downtime_s)
        self.start()


class SentinelServer(_Process):
    """A Redis Sentinel watching the primary on loopback port `primary_port` as `service`.

    `password` is the data servers' (`sentinel auth-pass`), `sentinel_password` the sentinel's own
    (`requirepass`; sentinels of one group share it and use it with each other). Sentinel rewrites
    its configuration file as the group changes, so the file lives in `workdir`."""

    kind = "redis-sentinel"

    def __init__(
        self,
        workdir: Path,
        *,
        service: str,
        primary_port: int,
        quorum: int = 2,
        down_after_ms: int = 1_000,
        failover_timeout_ms: int = 10_000,
        password: str | None = None,
        sentinel_password: str | None = None,
        tls: ServerTLS | None = None,
        port: int | None = None,
        binary: str | None = None,
    ) -> None:
        super().__init__(workdir, port, binary, sentinel_password, tls)
        self.service = service
        self.primary_port = primary_port
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.auth_pass = password

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> SentinelServer:
        super().start(timeout)
        return self

    def argv(self) -> list[str]:
        s = self.service
        lines = [
            f"sentinel monitor {s} 127.0.0.1 {self.primary_port} {self.quorum}",
            f"sentinel down-after-milliseconds {s} {self.down_after_ms}",
            f"sentinel failover-timeout {s} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {s} 1",
        ]
        if self.auth_pass:
            lines.append(f"sentinel auth-pass {s} {self.auth_pass}")
        if self.password:
            lines.append(f"requirepass {self.password}")
        config = (self.workdir / "sentinel.conf").resolve()
        if not config.exists():  # a restarted sentinel keeps what it learnt about the group
            config = self._private_file("sentinel.conf", "\n".join(lines) + "\n")
        listen = self.tls.args(self.port) if self.tls else ["--port", str(self.port)]
        return [
            self.binary,
            str(config),
            "--sentinel",
            *listen,
            "--bind", "127.0.0.1",
            "--dir", str(self.workdir.resolve()),
            "--daemonize", "no",
            "--logfile", str(self.log_path),
        ]  # fmt: skip

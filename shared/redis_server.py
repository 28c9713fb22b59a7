"""A private redis-server process: `hemostat run` starts one when no REDIS_URL is configured, and
tests and benchmarks use the same class. Persistence (AOF) is on; data lives in `workdir`."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from shared.errors import ConfigError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        binary: str | None = None,
        password: str | None = None,
    ) -> None:
        found = binary or shutil.which("redis-server")
        if found is None:
            raise ConfigError("redis-server not found: install it (apt-get install redis-server)")
        self.binary = found
        self.workdir = workdir
        self.port = port or free_port()
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                self.binary,
                # A config file must come first; it carries only the password.
                *([str(self._auth_file())] if self.password else []),
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.workdir.resolve()),
                "--appendonly", "yes",
                "--appendfsync", "everysec",
                "--save", "",
                "--daemonize", "no",
                "--logfile", str((self.workdir / "redis.log").resolve()),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal must not kill it before we flush
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ConfigError(
                    f"redis-server exited with {self.proc.returncode}; see {self.workdir}/redis.log"
                )
            if self.ping():
                return self
            time.sleep(0.05)
        self.stop(kill=True)
        raise ConfigError(f"redis-server did not answer on port {self.port} within {timeout}s")

    def _auth_file(self) -> Path:
        """The password goes in a file only its owner reads, never on the command line (where
        `ps` shows it to every local user). redis-server reads it as an extra config file."""
        path = (self.workdir / "auth.conf").resolve()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"requirepass {self.password}\n")
        path.chmod(0o600)
        return path

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                if self.password:
                    sock.sendall(f"AUTH {self.password}\r\n".encode())
                    if not sock.recv(16).startswith(b"+OK"):
                        return False
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
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

    def restart(self, downtime_s: float = 0.0) -> None:
        self.stop()
        time.sleep(downtime_s)
        self.start()

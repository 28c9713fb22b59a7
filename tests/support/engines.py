"""Docker engines a test starts (and stops, and restarts) itself — never the host's dockerd.

Each engine is a separate `dockerd` with its own socket, data root, exec root, pid file and
bridge, so a test can kill its daemon mid-stream, or run a fleet of hosts on one machine, while
every other test (and every other session on this machine) keeps its engine. Needs root and the
`dockerd` binary; under CI=true their absence fails the test."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.support.services import ensure_test_image, unavailable

_SUBNETS = iter(range(200, 250))


class PrivateEngine:
    def __init__(self, name: str, root: Path | None = None) -> None:
        self.name = name
        # Short paths: a unix socket path must stay under 108 bytes.
        self.root = root or Path(f"/tmp/hs-engine-{name}-{os.getpid()}")
        self.socket = self.root / "docker.sock"
        self.bridge = f"hs{name[:6]}{os.getpid() % 10000}"[:15]
        self.subnet = next(_SUBNETS)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @staticmethod
    def check() -> None:
        if os.geteuid() != 0 or not shutil.which("dockerd") or not shutil.which("ip"):
            unavailable("a private Docker engine needs root, dockerd and iproute2")

    def start(self, timeout: float = 60.0) -> PrivateEngine:
        self.check()
        for folder in ("data", "exec"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        if not Path(f"/sys/class/net/{self.bridge}").exists():
            subprocess.run(["ip", "link", "add", self.bridge, "type", "bridge"], check=True)
            subprocess.run(
                ["ip", "addr", "add", f"10.{self.subnet}.0.1/24", "dev", self.bridge], check=True
            )
            subprocess.run(["ip", "link", "set", self.bridge, "up"], check=True)
        log = (self.root / "dockerd.log").open("ab")
        self.proc = subprocess.Popen(
            [
                "dockerd",
                "-H",
                self.host,
                "--data-root",
                str(self.root / "data"),
                "--exec-root",
                str(self.root / "exec"),
                "--pidfile",
                str(self.root / "docker.pid"),
                "--bridge",
                self.bridge,
                # The host's engine owns iptables; ours needs no outside network.
                "--iptables=false",
                "--ip-masq=false",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self.ping():
                return self
            time.sleep(0.2)
        tail = (self.root / "dockerd.log").read_text(errors="replace")[-2000:]
        self.stop()
        unavailable(f"private dockerd {self.name} did not start:\n{tail}")
        raise AssertionError("unreachable")

    def ping(self) -> bool:
        # A plain socket: docker-py leaks its Unix socket when the connect itself fails (the
        # daemon is still starting), which the suite's ResourceWarning check turns into errors.
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(str(self.socket))
                sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                reply = b""
                while chunk := sock.recv(4096):
                    reply += chunk
        except OSError:
            return False
        return reply.startswith(b"HTTP/1.") and reply.split(b"\r\n\r\n", 1)[-1] == b"OK"

    def client(self, timeout: int = 60) -> Any:
        import docker

        return docker.DockerClient(base_url=self.host, timeout=timeout)

    def ensure_test_image(self) -> str:
        with contextlib.closing(self.client()) as client:
            return ensure_test_image(client)

    def kill(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> None:
        """Stop the daemon (its containers stay on disk; `start()` brings it back)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        """Stop the daemon, remove its containers' leftovers, its bridge and its files."""
        with contextlib.suppress(Exception):
            if self.proc is not None and self.proc.poll() is None and self.ping():
                with contextlib.closing(self.client()) as client:
                    for c in client.containers.list(all=True):
                        with contextlib.suppress(Exception):
                            c.remove(force=True, v=True)
        self.kill()
        subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True)
        # Mounts left by a killed daemon would make rmtree fail: unmount first.
        subprocess.run(
            [
                "sh",
                "-c",
                f"grep -o ' {self.root}[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l",
            ],
            capture_output=True,
        )
        shutil.rmtree(self.root, ignore_errors=True)

"""`hemostat run`: every agent and the dashboard as separate supervised processes on this host.

With no REDIS_URL (and no sentinels) it starts a private redis-server (AOF persistence, data under
the state folder) and stops it on exit. A process that dies is restarted with backoff.
SIGINT/SIGTERM stop the children in order (agents, then Redis), each with its own grace period."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from shared.backoff import backoff_delay
from shared.redaction import Redactor
from shared.redis_client import describe
from shared.redis_server import RedisServer
from shared.settings import Settings

__all__ = [
    "AGENT_ORDER",
    "DASHBOARD",
    "LOCAL_REDIS_FILE",
    "Child",
    "Supervisor",
    "local_redis_url",
    "publish_local_redis",
    "run",
    "withdraw_local_redis",
]

AGENT_ORDER = ("monitor", "analyzer", "responder", "alert", "metrics")
DASHBOARD = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
# In the state folder while `hemostat run` runs a private Redis: its URL, password included, for
# the CLI in another shell (`hemostat status`). Owner-readable only, like the server's auth.conf.
LOCAL_REDIS_FILE = "redis.url"


def publish_local_redis(state_dir: Path, url: str) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / LOCAL_REDIS_FILE
    path.unlink(missing_ok=True)  # a file left by a run that was killed may have other modes
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(url + "\n")


def withdraw_local_redis(state_dir: Path) -> None:
    (state_dir / LOCAL_REDIS_FILE).unlink(missing_ok=True)


def local_redis_url(state_dir: Path) -> str | None:
    """The URL of the private Redis `hemostat run` keeps in this state folder, if it runs one."""
    try:
        return (state_dir / LOCAL_REDIS_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = 0.0
    log: IO[bytes] | None = field(default=None, repr=False)


class Supervisor:
    def __init__(
        self, settings: Settings, *, dashboard: bool = True, out: IO[str] | None = None
    ) -> None:
        self.settings = settings
        self.state_dir = settings.state_dir.resolve()
        self.logs = self.state_dir / "logs"
        self.out = out or sys.stdout
        self.redis: RedisServer | None = None
        self.redis_url = settings.redis_url.get_secret_value() if settings.redis_url else None
        self.children: list[Child] = []
        self.with_dashboard = dashboard
        self._stopping = False

    # ------------------------------------------------------------------ start

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        if self.redis_url is None and not self.settings.redis_sentinels:
            # Loopback only, and a fresh random password at every start: another local user
            # (or a container on this host) cannot talk to it.
            password = secrets.token_urlsafe(24)
            self.redis = RedisServer(self.state_dir / "redis", password=password).start()
            self.redis_url = self.redis.url
            publish_local_redis(self.state_dir, self.redis.url)
        for name in AGENT_ORDER:
            argv = [sys.executable, "-m", "agents.cli", "agent", name]
            self.children.append(Child(name, argv, self.logs / f"{name}.log"))
        if self.with_dashboard:
            self.children.append(
                Child(
                    "dashboard",
                    [
                        sys.executable,
                        "-m",
                        "streamlit",
                        "run",
                        str(DASHBOARD),
                        "--server.headless",
                        "true",
                        "--server.address",
                        self.settings.dashboard_host,
                        "--server.port",
                        str(self.settings.dashboard_port),
                        "--browser.gatherUsageStats",
                        "false",
                        "--server.fileWatcherType",
                        "none",
                    ],
                    self.logs / "dashboard.log",
                )
            )
        for child in self.children:
            self._spawn(child)
        self._banner()

    def _env(self, child: Child) -> dict[str, str]:
        env = dict(os.environ)
        if self.redis_url is not None:  # None: the sentinels say where Redis is
            env["REDIS_URL"] = self.redis_url
        if child.name in AGENT_ORDER:
            # A stable instance name lets a restarted agent resume its own pending messages.
            env["HEMOSTAT_INSTANCE"] = f"{self.settings.host_name}-{child.name}"
            env.setdefault("HEMOSTAT_LOG_FORMAT", "json")
        return env

    def _spawn(self, child: Child) -> None:
        if child.log is None:
            child.log = child.log_path.open("ab")
        child.proc = subprocess.Popen(
            child.argv,
            env=self._env(child),
            stdout=child.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches us only; we stop the children in order
        )
        child.started_at = time.monotonic()

    def _banner(self) -> None:
        s = self.settings
        mode = (
            "DRY-RUN: everything is evaluated and recorded, nothing is changed "
            "(set HEMOSTAT_DRY_RUN=false to act)"
            if s.dry_run
            else "LIVE: HemoStat WILL act on containers that opted in (hemostat.remediate=true)"
        )
        redis = (
            f"private redis-server on {Redactor().text(self.redis.url)}, "
            f"data in {self.redis.workdir}"
            if self.redis
            else describe(self.settings)
        )
        lines = [
            f"HemoStat is running (supervisor pid {os.getpid()}) — {mode}",
            f"  dashboard  http://{s.dashboard_host}:{s.dashboard_port}"
            + ("" if self.with_dashboard else " (not started)"),
            "  metrics    "
            + (f"http://127.0.0.1:{s.metrics_port}/metrics" if s.metrics_port else "off"),
            "  webhook    "
            + (
                f"http://127.0.0.1:{s.webhook_port}/webhook/alertmanager"
                if s.webhook_port
                else "off"
            ),
            f"  redis      {redis}",
            *(
                ["             (hemostat status, audit, approve... run here find it by themselves)"]
                if self.redis
                else []
            ),
            f"  logs       {self.logs}/<agent>.log",
            "Ctrl-C stops everything.",
        ]
        print("\n".join(lines), file=self.out, flush=True)

    # ------------------------------------------------------------------ supervise

    def supervise(self, tick: float = 0.5) -> None:
        """Restart what dies (with backoff) until stop() is called."""
        while not self._stopping:
            now = time.monotonic()
            for child in self.children:
                if child.proc is None or child.proc.poll() is None:
                    continue
                if child.next_start == 0.0:
                    ran_for = now - child.started_at
                    # A process that ran a while before dying starts over with a short backoff.
                    child.restarts = 1 if ran_for > 60 else child.restarts + 1
                    delay = backoff_delay(child.restarts, base=1.0, cap=30.0, jitter=0)
                    child.next_start = now + delay
                    print(
                        f"[hemostat] {child.name} exited with {child.proc.returncode}; "
                        f"restarting in {delay:.0f}s (see {child.log_path})",
                        file=self.out,
                        flush=True,
                    )
                elif now >= child.next_start:
                    child.next_start = 0.0
                    self._spawn(child)
            time.sleep(tick)

    def stop(self, grace_s: float | None = None) -> None:
        self._stopping = True
        grace = self.settings.shutdown_grace_s + 5 if grace_s is None else grace_s
        running = [c for c in self.children if c.proc is not None and c.proc.poll() is None]
        for child in running:
            assert child.proc is not None
            child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in running:
            assert child.proc is not None
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
        for child in self.children:
            if child.log is not None:
                child.log.close()
                child.log = None
        if self.redis is not None:
            withdraw_local_redis(self.state_dir)
            self.redis.stop()
        print("[hemostat] stopped", file=self.out, flush=True)

    def request_stop(self, *_: Any) -> None:
        self._stopping = True


def run(settings: Settings, *, dashboard: bool = True) -> int:
    supervisor = Supervisor(settings, dashboard=dashboard)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, supervisor.request_stop)
    supervisor.start()
    try:
        supervisor.supervise()
    finally:
        supervisor.stop()
    return 0

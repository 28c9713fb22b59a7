"""The five agents as separate OS processes started through the CLI (each restartable on its
own), plus helpers that read what they did from the outside: the streams, Docker's own events."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis as sync_redis
from redis.client import NEVER_DECODE

from shared.errors import InvalidEventError
from shared.events import Channel, parse_event
from shared.redis_server import free_port
from tests.support.streams import settled
from tests.support.webhooks import Receiver

__all__ = ["AGENTS", "Stack", "events", "monitor_subscribed", "quiet", "wait"]

AGENTS = ("monitor", "analyzer", "responder", "alert", "metrics")


class Stack:
    """Five agent processes plus what they talk to. `env` adds to (or overrides) the defaults:
    quick loops, JSON logs, Slack and Discord at `receiver`, no LLM."""

    def __init__(
        self,
        redis_url: str,
        folder: Path,
        receiver: Receiver,
        *,
        host_name: str,
        watch_label: str,
        env: dict[str, str] | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.folder = folder
        self.receiver = receiver
        self.metrics_port = free_port()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs = folder / "logs"
        self.logs.mkdir(exist_ok=True)
        self.env = (
            {k: v for k, v in os.environ.items() if not k.startswith("HEMOSTAT_")}
            | {
                "REDIS_URL": redis_url,
                "HEMOSTAT_DRY_RUN": "false",
                "HEMOSTAT_RUNBOOKS_DIR": str(folder / "runbooks"),
                "HEMOSTAT_LOG_FORMAT": "json",
                "HEMOSTAT_HOST_NAME": host_name,
                "HEMOSTAT_BUS_BLOCK_MS": "200",
                "HEMOSTAT_BUS_CLAIM_IDLE_MS": "3000",
                "HEMOSTAT_BUS_RECLAIM_INTERVAL_S": "0.5",
                "HEMOSTAT_HEARTBEAT_INTERVAL_S": "1",
                "HEMOSTAT_MONITOR_POLL_INTERVAL_S": "1",
                "HEMOSTAT_MONITOR_MIN_ALERT_GAP_S": "0",
                "HEMOSTAT_MONITOR_RECOVERY_WINDOW_S": "5",
                "HEMOSTAT_MONITOR_BASELINE_ENABLED": "false",
                "HEMOSTAT_WEBHOOK_PORT": "0",
                "HEMOSTAT_METRICS_PORT": str(self.metrics_port),
                "HEMOSTAT_METRICS_HOST": "127.0.0.1",
                "HEMOSTAT_RESPONDER_VERIFY_STABLE_S": "1",
                "HEMOSTAT_RESPONDER_LEASE_TTL_S": "5",
                "SLACK_WEBHOOK_URL": receiver.url("/slack"),
                "DISCORD_WEBHOOK_URL": receiver.url("/discord"),
                "HEMOSTAT_LLM_PROVIDER": "none",
                "HEMOSTAT_WATCH_LABEL": watch_label,
            }
            | (env or {})
        )

    def write_runbooks(self, documents: str) -> None:
        folder = self.folder / "runbooks"
        folder.mkdir(exist_ok=True)
        for n, doc in enumerate(documents.split("---")):
            (folder / f"{n}.yaml").write_text(doc)

    def start(self, name: str, key: str | None = None, **extra: str) -> None:
        """Start agent `name` (known as `key` here: two hosts' Monitors are two processes)."""
        key = key or name
        env = self.env | {"HEMOSTAT_INSTANCE": f"{self.env['HEMOSTAT_HOST_NAME']}-{key}"} | extra
        log = (self.logs / f"{key}.log").open("ab")
        self.procs[key] = subprocess.Popen(
            [sys.executable, "-m", "agents.cli", "agent", name],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()

    def start_all(self) -> None:
        for name in AGENTS:
            self.start(name)
        client = sync_redis.Redis.from_url(self.redis_url, decode_responses=True)
        try:
            wait(lambda: len(list(client.scan_iter("hemostat:heartbeat:*"))) >= 5, 30, "beats")
            wait(lambda: monitor_subscribed(client), 30, "the Monitor follows Docker's events")
        finally:
            client.close()

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        proc.wait(30)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-4000:]


def wait(condition: Any, timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s: {what}")


def monitor_subscribed(client: sync_redis.Redis) -> bool:
    for key in client.scan_iter("hemostat:heartbeat:monitor:*"):
        beat = json.loads(client.get(key) or "{}")
        if beat.get("details", {}).get("events_subscribed"):
            return True
    return False


def quiet(r: sync_redis.Redis, what: str = "") -> None:
    """Wait until every agent has handled every event so far (see `settled`)."""
    wait(lambda: settled(r), 60, f"every event handled {what}")


def events(r: sync_redis.Redis, channel: Channel) -> list[Any]:
    """Every valid event on the channel (read as bytes: a test writes garbage in there too)."""
    raw = r.execute_command("XRANGE", str(channel), "-", "+", **{NEVER_DECODE: True})
    out = []
    for _, fields in raw:
        if not isinstance(fields, dict):
            fields = dict(zip(fields[::2], fields[1::2], strict=False))
        try:
            out.append(parse_event(fields.get(b"event")))
        except InvalidEventError:
            continue
    return out


@contextlib.contextmanager
def stack_on_clean_redis(
    redis_url: str,
    folder: Path,
    runbooks: str,
    *,
    host_name: str,
    watch_label: str,
    env: dict[str, str] | None = None,
    start_all: bool = True,
) -> Iterator[Stack]:
    """A module's stack on an emptied Redis with its own webhook receiver and runbooks: every
    agent started (unless `start_all` is False), and everything stopped afterwards."""
    client = sync_redis.Redis.from_url(redis_url)
    client.flushall()
    client.close()
    receiver = Receiver().start()
    stack = Stack(
        redis_url, folder, receiver, host_name=host_name, watch_label=watch_label, env=env
    )
    stack.write_runbooks(runbooks)
    try:
        if start_all:
            stack.start_all()
        yield stack
    finally:
        stack.stop_all()
        receiver.stop()

"""A burst (Responder-core issue): 30 containers turn unhealthy at the same moment — a shared
dependency disappears (here: a file on a shared read-only mount that their health checks test) —
and must be running again. Monitor, Analyzer and Responder as separate processes, rules only,
dry-run off.

Measured per container from Docker's own clock: its `health_status: unhealthy` event to the
`start` event of its restart (it runs again). Baseline in the same run: a poll-based healer that
lists unhealthy containers every 5 s and restarts them one after the other (autoheal's shape).
Targets: p95 <= 1 s, and >= 20x faster than the baseline's p95."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import docker
import redis as sync_redis

from bench.common import (
    BENCH_LABEL,
    StartAfter,
    agent_env,
    header,
    percentile,
    private_redis,
    summary_ms,
    verdict,
)
from shared import keys
from tests.support.services import ensure_test_image

COUNT = 30
RUNBOOKS = Path(__file__).parent.parent / "runbooks"
LABELS = {BENCH_LABEL: "burst", "hemostat.remediate": "true"}
# Healthy while the shared file exists; after a restart it is healthy on its own (/tmp persists
# across a restart), so each container is restarted once. Stops promptly on SIGTERM.
SCRIPT = (
    "if [ -f /tmp/ran ]; then touch /tmp/restarted; fi; touch /tmp/ran; "
    "trap 'exit 0' TERM; sleep 3600 & wait"
)
HEALTHCHECK = {
    "test": ["CMD-SHELL", "test -f /shared/ok || test -f /tmp/restarted"],
    "interval": 500_000_000,
    "retries": 1,
}


def _burst(client: Any, image: str, timeout: float) -> tuple[list[float], list[float]]:
    """(unhealthy -> restart issued, unhealthy -> running again) per container."""
    shared = Path(tempfile.mkdtemp(prefix="hemostat-burst-"))
    (shared / "ok").touch()
    made: list[Any] = []
    recorder = StartAfter(client, f"{BENCH_LABEL}=burst", "health_status: unhealthy")
    recorder.start()
    issued = StartAfter(client, f"{BENCH_LABEL}=burst", "health_status: unhealthy", until="kill")
    issued.start()
    try:
        for _ in range(COUNT):
            made.append(
                client.containers.run(
                    image,
                    ["sh", "-c", SCRIPT],
                    labels=LABELS,
                    detach=True,
                    healthcheck=HEALTHCHECK,
                    volumes={str(shared): {"bind": "/shared", "mode": "ro"}},
                )
            )
        deadline = time.monotonic() + 60
        while any(
            client.api.inspect_container(c.id)["State"]["Health"]["Status"] != "healthy"
            for c in made
        ):
            if time.monotonic() > deadline:
                raise TimeoutError("the containers never became healthy")
            time.sleep(0.2)
        (shared / "ok").unlink()  # the shared dependency goes away: all of them fail at once
        ids = [c.id for c in made]
        running = recorder.latencies(ids, timeout)
        return issued.latencies(ids, timeout), running
    finally:
        recorder.stream.close()
        issued.stream.close()
        for c in made:
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True)
        shutil.rmtree(shared, ignore_errors=True)


class SerialPollHealer(threading.Thread):
    """Every 5 s, list unhealthy containers and restart them one after the other."""

    def __init__(self, client: Any, interval: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                sick = self.client.containers.list(
                    filters={"health": "unhealthy", "label": f"{BENCH_LABEL}=burst"},
                    ignore_removed=True,
                )
                for container in sick:
                    with contextlib.suppress(docker.errors.NotFound):
                        container.restart(timeout=10)
            except docker.errors.APIError:
                continue


def run() -> bool:
    header(f"Burst: {COUNT} containers unhealthy at once -> running again (agents as processes)")
    client = docker.from_env(timeout=120)
    image = ensure_test_image(client)
    with private_redis() as server:
        env = agent_env(
            server.url,
            HEMOSTAT_DRY_RUN="false",
            HEMOSTAT_RUNBOOKS_DIR=str(RUNBOOKS),
            HEMOSTAT_WEBHOOK_PORT="0",
            HEMOSTAT_LLM_PROVIDER="none",
            HEMOSTAT_MONITOR_MIN_ALERT_GAP_S="0",
        )
        procs = [
            subprocess.Popen([sys.executable, "-m", "agents.cli", "agent", name], env=env)
            for name in ("monitor", "analyzer", "responder")
        ]
        r = sync_redis.Redis.from_url(server.url, decode_responses=True)
        try:
            deadline = time.monotonic() + 30
            while len(list(r.scan_iter(f"{keys.HEARTBEAT}*"))) < 3:
                if time.monotonic() > deadline:
                    raise TimeoutError("agents did not start")
                time.sleep(0.2)
            time.sleep(1.0)  # the Monitor subscribes to events right after its first beat
            ours_issued, ours = _burst(client, image, timeout=60)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(30)
            r.close()
    healer = SerialPollHealer(client)
    healer.start()
    try:
        theirs_issued, theirs = _burst(client, image, timeout=300)
    finally:
        healer.stopped.set()
        healer.join(30)
    client.close()
    print(f"   restart issued (Docker's kill event), hemostat       {summary_ms(ours_issued)}")
    print(f"   restart issued (Docker's kill event), poll-5s serial {summary_ms(theirs_issued)}")
    print(f"   running again (Docker's start event), hemostat       {summary_ms(ours)}")
    print(f"   running again (Docker's start event), poll-5s serial {summary_ms(theirs)}")
    # Between the two is Docker's own work: 30 restarts at once on this machine's engine.
    p95, base = percentile(ours, 0.95), percentile(theirs, 0.95)
    print(f"   p95 ours {p95 * 1000:.0f} ms vs baseline {base * 1000:.0f} ms -> {base / p95:.1f}x")
    ok = verdict("unhealthy -> running again p95", p95 * 1000, 1000, False, "ms")
    return verdict("speed-up over the serial 5 s poller (p95)", base / p95, 20, True, "x") and ok


if __name__ == "__main__":
    sys.exit(0 if run() else 1)

"""End-to-end healing latency (issue: the whole system): the Monitor, Analyzer and Responder as
separate processes (rules only, dry-run off), against real containers.

- die → restart issued: from the Docker `die` event's timestamp to the first event of the restart
  (`kill`, or `start` for an already exited container) — both the daemon's own clock;
- unhealthy → restart issued: from the `health_status: unhealthy` event likewise;
- baseline in the same run: a poll-based healer over the same kind of containers — a loop that
  lists unhealthy (and exited-with-error) containers every 5 s and restarts them, which is how
  poll-based healers work — and our ratio to it;
- resident memory of each agent process after the run (target <= 80 MB each).

Target: p95 <= 1 s over 30 trials."""

from __future__ import annotations

import contextlib
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import docker
import redis as sync_redis

from bench.common import (
    BENCH_LABEL,
    agent_env,
    header,
    percentile,
    private_redis,
    rss_kb,
    summary_ms,
    verdict,
)
from shared import keys
from tests.support.services import ensure_test_image

TRIALS = 30
BATCH = 10
RUNBOOKS = Path(__file__).parent.parent / "runbooks"
CRASH_ONCE = "if [ -f /tmp/ran ]; then sleep 3600; else touch /tmp/ran; sleep {delay}; exit 3; fi"
UNHEALTHY_ONCE = (
    "if [ -f /tmp/ran ]; then touch /tmp/ok; sleep 3600; else touch /tmp/ran; sleep 3600; fi"
)
HEALTHCHECK = {"test": ["CMD", "test", "-f", "/tmp/ok"], "interval": 1_000_000_000, "retries": 1}
LABELS = {BENCH_LABEL: "e2e", "hemostat.remediate": "true"}


def _make(client: Any, image: str, kind: str) -> Any:
    if kind == "die":
        script = CRASH_ONCE.format(delay=round(random.uniform(1.0, 3.0), 2))
        return client.containers.run(image, ["sh", "-c", script], labels=LABELS, detach=True)
    return client.containers.run(
        image, ["sh", "-c", UNHEALTHY_ONCE], labels=LABELS, detach=True, healthcheck=HEALTHCHECK
    )


class EventRecorder(threading.Thread):
    """Follows the daemon's event stream (the `since` buffer only keeps the last 256 events, which
    health-check probes of ten containers fill in seconds) and records, per container, the first
    failure and the first restart event after it."""

    def __init__(self, client: Any) -> None:
        super().__init__(daemon=True)
        self.stream = client.api.events(
            decode=True, filters={"type": "container", "label": f"{BENCH_LABEL}=e2e"}
        )
        self.failed: dict[str, float] = {}
        self.restarted: dict[str, float] = {}
        self.lock = threading.Lock()

    def run(self) -> None:
        for event in self.stream:
            cid, action = event.get("id", ""), event.get("Action", "")
            at = int(event["timeNano"]) / 1e9
            with self.lock:
                if cid not in self.failed and (
                    action == "die" or action == "health_status: unhealthy"
                ):
                    self.failed[cid] = at
                elif (
                    cid in self.failed and cid not in self.restarted and action in ("kill", "start")
                ):
                    self.restarted[cid] = at

    def latency(self, container_id: str, timeout: float = 60) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if container_id in self.restarted:
                    return self.restarted[container_id] - self.failed[container_id]
            time.sleep(0.1)
        raise TimeoutError(f"{container_id[:12]}: no restart after its failure within {timeout}s")

    def close(self) -> None:
        self.stream.close()


def _trials(client: Any, image: str, kind: str, n: int) -> list[float]:
    latencies: list[float] = []
    recorder = EventRecorder(client)
    recorder.start()
    try:
        for start in range(0, n, BATCH):
            made = [_make(client, image, kind) for _ in range(min(BATCH, n - start))]
            for container in made:
                latencies.append(recorder.latency(container.id))
            for container in made:
                container.remove(force=True)
    finally:
        recorder.close()
    return latencies


class PollHealer(threading.Thread):
    """The baseline: every 5 s, list unhealthy / exited-with-error containers and restart them."""

    def __init__(self, client: Any, interval: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        label = f"{BENCH_LABEL}=e2e"
        while not self.stopped.wait(self.interval):
            try:
                sick = self.client.containers.list(
                    filters={"health": "unhealthy", "label": label}, ignore_removed=True
                )
                exited = self.client.containers.list(
                    all=True, filters={"status": "exited", "label": label}, ignore_removed=True
                )
                for container in sick + [c for c in exited if c.attrs["State"]["ExitCode"] != 0]:
                    with contextlib.suppress(docker.errors.NotFound):
                        container.restart(timeout=1)
            except docker.errors.APIError:
                continue  # a container went away mid-cycle; the next cycle sees the rest


def run() -> bool:
    header(f"End to end: failure -> restart issued, agents as processes, {TRIALS} trials each")
    client = docker.from_env(timeout=120)
    image = ensure_test_image(client)
    random.seed(7)
    results: dict[str, list[float]] = {}
    rss: dict[str, tuple[int, int]] = {}
    with private_redis() as server:
        env = agent_env(
            server.url,
            HEMOSTAT_DRY_RUN="false",
            HEMOSTAT_RUNBOOKS_DIR=str(RUNBOOKS),
            HEMOSTAT_WEBHOOK_PORT="0",
            HEMOSTAT_LLM_PROVIDER="none",
            HEMOSTAT_METRICS_PORT="0",
        )
        procs = {
            name: subprocess.Popen([sys.executable, "-m", "agents.cli", "agent", name], env=env)
            for name in ("monitor", "analyzer", "responder", "alert", "metrics")
        }
        r = sync_redis.Redis.from_url(server.url, decode_responses=True)
        try:
            deadline = time.monotonic() + 30
            while len(list(r.scan_iter(f"{keys.HEARTBEAT}*"))) < 5:
                if time.monotonic() > deadline:
                    raise TimeoutError("agents did not start")
                time.sleep(0.2)
            time.sleep(1.0)
            for kind in ("die", "unhealthy"):
                results[f"hemostat {kind}"] = _trials(client, image, kind, TRIALS)
            rss = {name: rss_kb(p.pid) for name, p in procs.items()}
        finally:
            for p in procs.values():
                p.terminate()
            for p in procs.values():
                p.wait(30)
            r.close()
    healer = PollHealer(client)
    healer.start()
    try:
        for kind in ("die", "unhealthy"):
            results[f"poll-5s {kind}"] = _trials(client, image, kind, TRIALS)
    finally:
        healer.stopped.set()
        healer.join(10)
        for c in client.containers.list(
            all=True, filters={"label": f"{BENCH_LABEL}=e2e"}, ignore_removed=True
        ):
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True)
    for name, values in results.items():
        print(f"   {name:20s} {summary_ms(values)}")
    ok = True
    for kind in ("die", "unhealthy"):
        ours = percentile(results[f"hemostat {kind}"], 0.95)
        theirs = percentile(results[f"poll-5s {kind}"], 0.95)
        print(
            f"   {kind}: p95 ours {ours * 1000:.0f} ms vs poll-based {theirs * 1000:.0f} ms "
            f"-> ratio {ours / theirs:.3f} ({theirs / ours:.0f}x faster)"
        )
        ok = verdict(f"{kind} -> restart p95", ours * 1000, 1000, False, "ms") and ok
    for name, (now_kb, peak_kb) in rss.items():
        ok = (
            verdict(f"{name} RSS (peak {peak_kb / 1024:.1f} MB)", now_kb / 1024, 80, False, "MB")
            and ok
        )
    client.close()
    return ok


if __name__ == "__main__":
    sys.exit(0 if run() else 1)

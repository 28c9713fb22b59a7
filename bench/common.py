"""Shared benchmark plumbing: a private Redis, percentiles, and one way to print results."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from shared.redis_server import RedisServer


@contextlib.contextmanager
def private_redis() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="hemostat-bench-") as tmp:
        server = RedisServer(Path(tmp)).start()
        try:
            yield server
        finally:
            server.stop()


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary_ms(values_s: Sequence[float]) -> str:
    ms = [v * 1000 for v in values_s]
    return (
        f"n={len(ms)} p50={percentile(ms, 0.5):.1f}ms p95={percentile(ms, 0.95):.1f}ms "
        f"p99={percentile(ms, 0.99):.1f}ms max={max(ms):.1f}ms mean={statistics.fmean(ms):.1f}ms"
    )


def header(title: str) -> None:
    print(f"\n== {title}")
    print(
        f"   machine: {platform.node()} {platform.machine()} {os.cpu_count()} cpus, "
        f"python {platform.python_version()}, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC"
    )


def verdict(name: str, value: float, target: float, higher_is_better: bool, unit: str) -> bool:
    ok = value >= target if higher_is_better else value <= target
    cmp = ">=" if higher_is_better else "<="
    result = "PASS" if ok else "FAIL"
    shown = f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    print(f"   {name}: {shown} {unit} (target {cmp} {target:,.0f} {unit}) -> {result}")
    return ok


BENCH_LABEL = "hemostat.bench"
BENCH_HOST = "bench"


@contextlib.contextmanager
def containers(
    client: Any,
    image: str,
    count: int,
    cmd: list[str],
    labels_extra: dict[str, str] | None = None,
    **kw: Any,
) -> Iterator[list[Any]]:
    """`count` running containers labelled for the benchmark; removed afterwards."""
    made: list[Any] = []
    labels = {BENCH_LABEL: "1"} | (labels_extra or {})
    try:
        for _ in range(count):
            made.append(client.containers.run(image, cmd, labels=labels, detach=True, **kw))
        yield made
    finally:
        for container in client.containers.list(all=True, filters={"label": BENCH_LABEL}):
            with contextlib.suppress(Exception):
                container.remove(force=True)


def rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in kB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":", 1)
            values[key] = int(value.split()[0])
    return values["VmRSS"], values["VmHWM"]


def agent_env(redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEMOSTAT_")}
    env |= {
        "REDIS_URL": redis_url,
        "HEMOSTAT_LOG_LEVEL": "WARNING",
        "HEMOSTAT_LOG_FORMAT": "json",
        # Benchmark containers only: a test run on the same engine is never touched.
        "HEMOSTAT_WATCH_LABEL": BENCH_LABEL,
        # Every agent of a benchmark is on one host, the one benchmark requests name.
        "HEMOSTAT_HOST_NAME": BENCH_HOST,
    }
    return env | extra


class StartAfter(threading.Thread):
    """Per container carrying `label`: the first `trigger` event (`die`, `health_status:
    unhealthy`) and the first `until` event after it (`start`: running again; `kill`: the
    restart was issued), on the daemon's own clock."""

    def __init__(self, client: Any, label: str, trigger: str, until: str = "start") -> None:
        super().__init__(daemon=True)
        self.trigger = trigger
        self.until = until
        self.stream = client.api.events(decode=True, filters={"type": "container", "label": label})
        self.triggered: dict[str, float] = {}
        self.started: dict[str, float] = {}
        self.lock = threading.Lock()

    def run(self) -> None:
        with contextlib.suppress(Exception):
            for event in self.stream:
                cid, action = event.get("id", ""), event.get("Action", "")
                at = int(event["timeNano"]) / 1e9
                with self.lock:
                    if action == self.trigger and cid not in self.triggered:
                        self.triggered[cid] = at
                    elif action == self.until and cid in self.triggered and cid not in self.started:
                        self.started[cid] = at

    def latencies(self, ids: list[str], timeout: float) -> list[float]:
        """Trigger -> start for each of `ids`, waiting up to `timeout` for all of them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if all(i in self.started for i in ids):
                    return [self.started[i] - self.triggered[i] for i in ids]
            time.sleep(0.1)
        with self.lock:
            missing = [i[:12] for i in ids if i not in self.started]
        raise TimeoutError(f"not started again within {timeout}s: {missing}")

"""Shared benchmark plumbing: a private Redis, percentiles, and one way to print results."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import statistics
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

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
    print(f"   {name}: {value:,.1f} {unit} (target {cmp} {target:,.0f} {unit}) -> {result}")
    return ok

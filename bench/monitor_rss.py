"""Monitor resident memory after 10 minutes watching 100 containers (issue: Monitor): target
<= 80 MB. The Monitor runs as its own process; BENCH_RSS_SECONDS shortens the run."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import docker

from bench.common import agent_env, containers, header, private_redis, rss_kb, verdict
from tests.support.services import ensure_test_image

COUNT = 100


def run() -> bool:
    seconds = float(os.environ.get("BENCH_RSS_SECONDS", "600"))
    poll = os.environ.get("BENCH_RSS_POLL_S", "5")
    header(f"Monitor RSS after {seconds:.0f}s with {COUNT} containers (poll every {poll}s)")
    client = docker.from_env(timeout=120)
    image = ensure_test_image(client)
    with private_redis() as server, containers(client, image, COUNT, ["sleep", "3600"]):
        proc = subprocess.Popen(
            [sys.executable, "-m", "agents.cli", "agent", "monitor"],
            env=agent_env(
                server.url, HEMOSTAT_WEBHOOK_PORT="0", HEMOSTAT_MONITOR_POLL_INTERVAL_S=poll
            ),
        )
        try:
            started = time.monotonic()
            checkpoints = []
            while time.monotonic() - started < seconds:
                time.sleep(min(60.0, seconds / 5))
                rss, _ = rss_kb(proc.pid)
                checkpoints.append((time.monotonic() - started, rss))
            rss, hwm = rss_kb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)
    client.close()
    for at, value in checkpoints:
        print(f"   t={at:5.0f}s RSS {value / 1024:.1f} MB")
    print(f"   final RSS {rss / 1024:.1f} MB, peak (VmHWM) {hwm / 1024:.1f} MB")
    return verdict("monitor RSS", rss / 1024, 80, False, "MB")


if __name__ == "__main__":
    sys.exit(0 if run() else 1)

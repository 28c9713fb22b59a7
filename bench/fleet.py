"""A fleet on one machine (issue: fleet mode): three Docker engines (private `dockerd` processes,
each with its own socket, data root and bridge) with 50 running containers each, an edge
(Monitor + Responder, separate processes) per engine and one central Analyzer, one Redis.

- Polling: each Monitor's own figure for a full poll cycle of its engine (`last_poll_s` in its
  heartbeat), sampled over several cycles. Target: every cycle <= 1 s per engine.
- Healing: in each round one container on every engine crashes at the same moment (a shared
  trigger file); per container, Docker's own clock from its `die` to the `start` of its restart.
  Target: p95 <= 1 s.

Sentinel failover (time from the primary killed to the next decision) is `redis-failover`."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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
from shared.heartbeat import read_heartbeats
from tests.support.engines import PrivateEngine

HOSTS = ("fleet-a", "fleet-b", "fleet-c")
PER_ENGINE = 50
ROUNDS = 5
RUNBOOKS = Path(__file__).parent.parent / "runbooks"
LABELS = {BENCH_LABEL: "fleet", "hemostat.remediate": "true"}
IMAGE = "hemostat-test/busybox:latest"
# Dies (exit 3) when the trigger appears; once restarted it stays up (/tmp survives a restart).
CRASHER = (
    "if [ -f /tmp/ran ]; then exec sleep 3600; fi; touch /tmp/ran; "
    "while [ ! -f /trigger/go ]; do sleep 0.05; done; exit 3"
)


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what} within {timeout}s")


def run() -> bool:
    header(
        f"Fleet: {len(HOSTS)} engines x {PER_ENGINE} containers, an edge per engine, "
        "one central Analyzer"
    )
    engines: dict[str, PrivateEngine] = {}
    clients: dict[str, Any] = {}
    procs: list[subprocess.Popen[bytes]] = []
    trigger = Path(tempfile.mkdtemp(prefix="hemostat-fleet-"))
    recorders: dict[str, StartAfter] = {}
    polls: dict[str, list[float]] = {h: [] for h in HOSTS}
    heals: list[float] = []
    try:
        for i, host in enumerate(HOSTS):
            engines[host] = PrivateEngine(f"bf{i}").start()
            engines[host].ensure_test_image()
            clients[host] = engines[host].client(timeout=120)
        started = time.monotonic()
        for client in clients.values():
            for _ in range(PER_ENGINE):
                client.containers.run(
                    IMAGE, ["sleep", "3600"], labels=LABELS | {"fleet.role": "idle"}, detach=True
                )
        print(
            f"   {len(HOSTS) * PER_ENGINE} containers started in {time.monotonic() - started:.0f}s"
        )
        with private_redis() as server:
            base = agent_env(
                server.url,
                HEMOSTAT_DRY_RUN="false",
                HEMOSTAT_RUNBOOKS_DIR=str(RUNBOOKS),
                HEMOSTAT_WEBHOOK_PORT="0",
                HEMOSTAT_LLM_PROVIDER="none",
                HEMOSTAT_MONITOR_MIN_ALERT_GAP_S="0",
            )
            env = base | {"HEMOSTAT_HOST_NAME": "central", "HEMOSTAT_INSTANCE": "central-analyzer"}
            procs.append(
                subprocess.Popen([sys.executable, "-m", "agents.cli", "agent", "analyzer"], env=env)
            )
            for host, engine in engines.items():
                for agent in ("monitor", "responder"):
                    env = base | {
                        "DOCKER_HOST": engine.host,
                        "HEMOSTAT_HOST_NAME": host,
                        "HEMOSTAT_INSTANCE": f"{host}-{agent}",
                    }
                    procs.append(
                        subprocess.Popen(
                            [sys.executable, "-m", "agents.cli", "agent", agent], env=env
                        )
                    )
            r = sync_redis.Redis.from_url(server.url, decode_responses=True)
            try:
                _wait(lambda: len(read_heartbeats(r)) >= 1 + 2 * len(HOSTS), 60, "agents up")
                for host, client in clients.items():
                    recorders[host] = StartAfter(client, f"{BENCH_LABEL}=fleet", "die")
                    recorders[host].start()
                # Poll cycles: what each Monitor reports for its last full cycle.
                seen: dict[str, str] = {}
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and min(len(v) for v in polls.values()) < 5:
                    for beat in read_heartbeats(r, "monitor"):
                        value = beat.details.get("last_poll_s")
                        stamp = beat.beat_at.isoformat()
                        if value is not None and seen.get(beat.host) != stamp:
                            seen[beat.host] = stamp
                            polls[beat.host].append(float(value))
                    time.sleep(0.25)
                for round_no in range(ROUNDS):
                    go = trigger / f"r{round_no}"
                    go.mkdir()
                    crashers = {
                        host: client.containers.run(
                            IMAGE,
                            ["sh", "-c", CRASHER],
                            labels=LABELS | {"fleet.role": "crasher"},
                            volumes={str(go): {"bind": "/trigger", "mode": "ro"}},
                            detach=True,
                        )
                        for host, client in clients.items()
                    }
                    time.sleep(1.0)  # every crasher is up and waiting (the Monitor saw it start)
                    (go / "go").touch()  # all of them die at the same moment
                    for h, c in crashers.items():
                        heals += recorders[h].latencies([c.id], 60)
                    for c in crashers.values():
                        c.remove(force=True)
            finally:
                for p in procs:
                    p.terminate()
                for p in procs:
                    p.wait(30)
                r.close()
    finally:
        for recorder in recorders.values():
            recorder.stream.close()
        for client in clients.values():
            client.close()
        for engine in engines.values():
            engine.stop()
        shutil.rmtree(trigger, ignore_errors=True)
    ok = True
    for host in HOSTS:
        values = polls[host]
        print(
            f"   {host} poll cycle of {PER_ENGINE}+ containers: n={len(values)} "
            f"max={max(values) * 1000:.0f}ms mean={sum(values) / len(values) * 1000:.0f}ms"
        )
        ok = verdict(f"{host} slowest poll cycle", max(values) * 1000, 1000, False, "ms") and ok
    print(f"   die -> restart started, {len(HOSTS)} hosts at once x {ROUNDS}: {summary_ms(heals)}")
    return verdict("die -> restart p95", percentile(heals, 0.95) * 1000, 1000, False, "ms") and ok


if __name__ == "__main__":
    sys.exit(0 if run() else 1)

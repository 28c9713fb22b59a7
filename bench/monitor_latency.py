"""Monitor detection latency (issue: Monitor): from the Docker event's own timestamp (`die`,
`oom`, `health_status`) to the health_alert entry in the Redis stream (the entry id is Redis's
clock on the same host). Target p95 <= 250 ms over >= 50 trials. The Monitor runs as its own
process (`hemostat agent monitor`), as in production."""

from __future__ import annotations

import subprocess
import sys
import time

import docker
import redis as sync_redis

from bench.common import (
    BENCH_LABEL,
    agent_env,
    header,
    percentile,
    private_redis,
    summary_ms,
    verdict,
)
from shared import keys
from shared.events import Channel, parse_event
from tests.support.services import ensure_test_image

TRIALS = {"die": 40, "oom": 10, "health_status": 10}


def run() -> bool:
    header("Monitor detection latency: Docker event timestamp -> health_alert in the stream")
    client = docker.from_env()
    image = ensure_test_image(client)
    latencies: dict[str, list[float]] = {k: [] for k in TRIALS}
    with private_redis() as server:
        r = sync_redis.Redis.from_url(server.url, decode_responses=True)
        monitor = subprocess.Popen(
            [sys.executable, "-m", "agents.cli", "agent", "monitor"],
            env=agent_env(
                server.url, HEMOSTAT_WEBHOOK_PORT="0", HEMOSTAT_MONITOR_LOG_TAIL_LINES="20"
            ),
        )
        try:
            _wait_heartbeat(r)
            last_id = "0-0"
            for kind, trials in TRIALS.items():
                for _ in range(trials):
                    container = _make(client, image, kind)
                    try:
                        last_id, latency = _await_alert(r, container.id, last_id)
                        latencies[kind].append(latency)
                    finally:
                        container.remove(force=True)
        finally:
            monitor.terminate()
            monitor.wait(30)
            r.close()
    everything = [v for values in latencies.values() for v in values]
    for kind, values in latencies.items():
        print(f"   {kind:14s} {summary_ms(values)}")
    print(f"   {'all':14s} {summary_ms(everything)}")
    return verdict("detection latency p95", percentile(everything, 0.95) * 1000, 250, False, "ms")


def _make(client: docker.DockerClient, image: str, kind: str):  # type: ignore[no-untyped-def]
    labels = {BENCH_LABEL: "latency"}
    if kind == "die":
        return client.containers.run(
            image, ["sh", "-c", "sleep 0.3; exit 1"], labels=labels, detach=True
        )
    if kind == "oom":
        return client.containers.run(
            image,
            ["sh", "-c", "sleep 0.3; head -c 100m /dev/zero | tail"],
            labels=labels,
            detach=True,
            mem_limit="16m",
            memswap_limit="16m",
        )
    return client.containers.run(
        image,
        ["sleep", "60"],
        labels=labels,
        detach=True,
        healthcheck={"test": ["CMD", "false"], "interval": 200_000_000, "retries": 1},
    )


def _await_alert(r: sync_redis.Redis, container_id: str, last_id: str) -> tuple[str, float]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        reply = r.xread({Channel.HEALTH_ALERT: last_id}, block=1000)
        for _, entries in reply or []:
            for entry_id, fields in entries:
                last_id = entry_id
                event = parse_event(fields["event"])
                if event.subject.container_id == container_id and event.payload.status == "firing":
                    in_stream_ms = int(entry_id.split("-")[0])
                    return last_id, in_stream_ms / 1000 - event.occurred_at.timestamp()
    raise TimeoutError(f"no alert for {container_id[:12]} within 30 s")


def _wait_heartbeat(r: sync_redis.Redis) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if list(r.scan_iter(f"{keys.HEARTBEAT}monitor:*")):
            time.sleep(1.0)  # let it subscribe to the event stream
            return
        time.sleep(0.1)
    raise TimeoutError("monitor did not start")


if __name__ == "__main__":
    sys.exit(0 if run() else 1)

"""`hemostat run` (what `make run` calls): every agent and the dashboard as supervised processes,
a private Redis when none is configured, a crashed agent restarted, Ctrl-C stopping it all."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis as sync_redis
from redis import exceptions as redis_errors

from shared.redis_server import free_port

pytestmark = [pytest.mark.docker, pytest.mark.redis]


def wait(condition, timeout=60, what=""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out: {what}")


def test_run_starts_supervises_and_stops_everything(tmp_path, docker):
    ports = {
        "HEMOSTAT_DASHBOARD_PORT": free_port(),
        "HEMOSTAT_METRICS_PORT": free_port(),
        "HEMOSTAT_WEBHOOK_PORT": free_port(),
    }
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("HEMOSTAT_") and k != "REDIS_URL"
    }
    env |= {k: str(v) for k, v in ports.items()}
    env |= {
        "HEMOSTAT_STATE_DIR": str(tmp_path / "state"),
        "HEMOSTAT_HEARTBEAT_INTERVAL_S": "1",
        "HEMOSTAT_RUNBOOKS_DIR": os.path.abspath("runbooks"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "agents.cli", "run"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        while not lines or "Ctrl-C stops everything" not in lines[-1]:
            lines.append(proc.stdout.readline())
        banner = "".join(lines)
        assert "DRY-RUN" in banner, "dry-run is on unless configured off, and the banner says so"
        assert f"http://127.0.0.1:{ports['HEMOSTAT_DASHBOARD_PORT']}" in banner
        assert f":{ports['HEMOSTAT_METRICS_PORT']}/metrics" in banner
        assert "logs" in banner
        shown = re.search(r"private redis-server on (redis://\S+),", banner).group(1)
        assert ":***@" in shown, "the banner masks the Redis password"
        assert (tmp_path / "state" / "redis").is_dir(), "Redis data lives under the state folder"
        port = int(shown.rsplit(":", 1)[1].split("/")[0])
        with pytest.raises(redis_errors.AuthenticationError):
            sync_redis.Redis(port=port).ping()  # a random password guards the private Redis
        url = _agent_redis_url(proc.pid)
        assert ":***@" not in url
        r = sync_redis.Redis.from_url(url, decode_responses=True)
        wait(lambda: len(list(r.scan_iter("hemostat:heartbeat:*"))) == 5, 60, "5 agents")
        assert _non_loopback_listeners(proc.pid) == [], "nothing listens beyond loopback"
        assert r.config_get("appendonly")["appendonly"] == "yes", "persistence is on"
        wait(
            lambda: _ok(f"http://127.0.0.1:{ports['HEMOSTAT_DASHBOARD_PORT']}/_stcore/health"),
            60,
            "the dashboard",
        )
        metrics = httpx.get(f"http://127.0.0.1:{ports['HEMOSTAT_METRICS_PORT']}/metrics").text
        assert 'hemostat_agent_up{agent="monitor"} 1.0' in metrics

        # The operator's commands in another shell (no REDIS_URL) reach the private Redis.
        status = subprocess.run(
            [sys.executable, "-m", "agents.cli", "status"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (status.returncode, status.stderr) == (0, "")
        assert "AGENTS (5)" in status.stdout

        # A crashed agent comes back.
        beat = next(iter(r.scan_iter("hemostat:heartbeat:analyzer:*")))
        pid = int(re.search(r'"pid":(\d+)', r.get(beat)).group(1))
        os.kill(pid, signal.SIGKILL)
        wait(lambda: _new_pid(r, pid), 30, "the analyzer restarted")
        wait(lambda: len(list(r.scan_iter("hemostat:heartbeat:*"))) == 5, 30, "5 agents again")
        children = [
            int(re.search(r'"pid":(\d+)', r.get(k)).group(1))
            for k in r.scan_iter("hemostat:heartbeat:*")
        ]
        r.close()

        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(60) == 0
        rest = proc.stdout.read()
        assert "restarting" in rest or "analyzer exited" in "".join(lines) + rest
        assert "[hemostat] stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the private redis-server was stopped"
    assert not (tmp_path / "state" / "redis.url").exists(), "its connection file went with it"
    for child in children:
        assert not os.path.exists(f"/proc/{child}"), (
            f"agent process {child} outlived the supervisor"
        )


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        child, parent = (int(x) for x in line.split())
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _agent_redis_url(supervisor: int) -> str:
    for pid in _descendants(supervisor):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for entry in environ:
            if entry.startswith(b"REDIS_URL="):
                return entry.split(b"=", 1)[1].decode()
    raise AssertionError("no agent process found")


def _non_loopback_listeners(supervisor: int) -> list[str]:
    """TCP listeners of the supervisor's process tree (Redis, agents, dashboard) that are not
    on a loopback address."""
    pids = {supervisor, *_descendants(supervisor)}
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    bad = []
    for line in out.splitlines():
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        local = line.split()[3]
        if owners & pids and not local.startswith(("127.", "[::1]")):
            bad.append(line)
    return bad


def _ok(url):
    try:
        return httpx.get(url, timeout=1).text == "ok"
    except httpx.TransportError:
        return False


def _new_pid(r, old):
    beat = next(iter(r.scan_iter("hemostat:heartbeat:analyzer:*")), None)
    return beat is not None and f'"pid":{old},' not in (r.get(beat) or "")

"""The command line as an operator uses it: in a pipe that closes early, and in another shell
than `hemostat run`."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agents.supervisor import LOCAL_REDIS_FILE, publish_local_redis, withdraw_local_redis

ROOT = Path(__file__).resolve().parent.parent


def test_a_reader_that_goes_away_ends_the_command_quietly():
    """`hemostat audit | head`: the reader closes the pipe; no traceback, the shell's 141."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # closed before the command starts: its first write meets a broken pipe
    try:
        done = subprocess.run(
            [sys.executable, "-m", "agents.cli", "config", "env-example"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env={k: v for k, v in os.environ.items() if not k.startswith("HEMOSTAT_")},
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.stderr.decode() == ""
    assert done.returncode == 141


def _cli(*argv: str, state_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEMOSTAT_")}
    env.pop("REDIS_URL", None)
    env["HEMOSTAT_STATE_DIR"] = str(state_dir)
    return subprocess.run(
        [sys.executable, "-m", "agents.cli", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.mark.redis
def test_commands_in_another_shell_reach_the_private_redis_of_hemostat_run(tmp_path, redis_url):
    """`hemostat run` in one shell, `hemostat status` in another: no REDIS_URL to copy by hand
    (the banner masks the password); the CLI reads the connection file `run` keeps in its state
    folder, readable by its owner only, and gone when `run` stops."""
    state = tmp_path / "state"
    publish_local_redis(state, redis_url)
    assert stat.S_IMODE((state / LOCAL_REDIS_FILE).stat().st_mode) == 0o600
    done = _cli("status", state_dir=state)
    assert (done.returncode, done.stderr) == (0, "")
    assert "AGENTS" in done.stdout
    assert _cli("approve", "p-0123456789", state_dir=state).stderr == (
        "refused: no proposal 'p-0123456789'\n"
    )
    withdraw_local_redis(state)
    assert not (state / LOCAL_REDIS_FILE).exists()
    assert "cannot reach Redis" in _cli("status", state_dir=state).stderr

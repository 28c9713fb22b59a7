"""The command line as a Unix tool: output into a pipe that closes early is not an error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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

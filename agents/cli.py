"""`hemostat`: the one console entry point."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from shared.errors import HemoStatError
from shared.heartbeat import AgentStatus, read_heartbeats
from shared.settings import Settings, load_settings


def _cmd_agent(args: argparse.Namespace, settings: Settings) -> int:
    from agents.registry import load_factory
    from agents.runner import run_agent

    return run_agent(load_factory(args.name), settings)


def _cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    """Exit 0 only when a fresh heartbeat of the agent exists (on this host unless --any-host)."""
    from redis.exceptions import RedisError

    from shared.redis_client import connect_sync

    try:
        with connect_sync(settings) as redis:
            beats = read_heartbeats(redis, args.name)
    except RedisError as exc:
        print(f"{args.name}: cannot reach Redis: {exc}", file=sys.stderr)
        return 1
    now = datetime.now(UTC)
    live = [
        b
        for b in beats
        if b.is_fresh(now)
        and b.status is not AgentStatus.STOPPING
        and (args.any_host or b.host == settings.host_name)
        and (args.instance is None or b.instance == args.instance)
    ]
    if not live:
        print(f"{args.name}: no fresh heartbeat", file=sys.stderr)
        return 1
    for beat in live:
        age = (now - beat.beat_at).total_seconds()
        print(f"{beat.agent} {beat.instance} {beat.status} (beat {age:.1f}s ago)")
    return 0


def _cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    """Agents (heartbeats) and containers (the Monitor's snapshots), at a glance."""
    import time

    from redis.exceptions import RedisError

    from shared.container_state import read_snapshots
    from shared.redis_client import connect_sync

    try:
        with connect_sync(settings) as redis:
            beats = read_heartbeats(redis)
            snapshots = read_snapshots(redis, time.time(), args.max_age)
    except RedisError as exc:
        print(f"cannot reach Redis: {exc}", file=sys.stderr)
        return 1
    now = datetime.now(UTC)
    print(f"AGENTS ({len(beats)})")
    for beat in sorted(beats, key=lambda b: (b.agent, b.instance)):
        age = (now - beat.beat_at).total_seconds()
        print(f"  {beat.agent:10s} {beat.instance:28s} {beat.status:9s} beat {age:4.1f}s ago")
    print(f"\nCONTAINERS ({len(snapshots)})")
    columns = ("NAME", 28), ("STATE", 9), ("HEALTH", 10), ("CPU%", -6), ("MEM%", -6)
    print("  " + " ".join(f"{n:>{-w}s}" if w < 0 else f"{n:{w}s}" for n, w in columns), end="")
    print(" RESTARTS  ALERTS")
    for snap in sorted(snapshots, key=lambda s: s.name):
        cpu = f"{snap.cpu_percent:.1f}" if snap.cpu_percent is not None else "-"
        mem = f"{snap.memory_percent:.1f}" if snap.memory_percent is not None else "-"
        watched = "" if snap.monitored else " (not monitored)"
        print(
            f"  {snap.name[:28]:28s} {snap.state:9s} {snap.health or '-':10s} {cpu:>6s} {mem:>6s} "
            f"{snap.restart_count:>8d}  {','.join(snap.active_alerts) or '-'}{watched}"
        )
    return 0


def _cmd_runbooks_validate(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from shared.errors import RunbookError
    from shared.runbooks import load_runbooks

    folder = Path(args.folder) if args.folder else settings.runbooks_dir
    try:
        runbooks = load_runbooks(folder)
    except RunbookError as exc:
        print(f"invalid runbooks in {folder}:\n{exc}", file=sys.stderr)
        return 1
    for runbook in runbooks.items:
        kinds = ",".join(k.value for k in runbook.match.kinds) or "-"
        actions = ",".join(f"{a.id}({a.type})" for a in runbook.actions)
        print(f"ok  {runbook.id} v{runbook.version}  match={kinds}  actions={actions}")
    print(f"{len(runbooks)} runbook(s) valid in {folder}")
    return 0


def _cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    from shared.env_example import render

    print(render(), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hemostat", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    agent = sub.add_parser("agent", help="run one agent in the foreground")
    agent.add_argument("name", help="monitor | analyzer | responder | alert | metrics")
    agent.set_defaults(func=_cmd_agent)

    check = sub.add_parser("check", help="exit 0 when the agent has a fresh heartbeat")
    check.add_argument("name")
    check.add_argument("--instance", help="require this exact instance")
    check.add_argument("--any-host", action="store_true", help="accept instances on any host")
    check.set_defaults(func=_cmd_check)
    runbooks = sub.add_parser("runbooks", help="runbook helpers")
    runbooks_sub = runbooks.add_subparsers(dest="runbooks_command", required=True)
    validate = runbooks_sub.add_parser("validate", help="validate a folder of runbooks")
    validate.add_argument("folder", nargs="?", help="default: HEMOSTAT_RUNBOOKS_DIR")
    validate.set_defaults(func=_cmd_runbooks_validate)

    status = sub.add_parser("status", help="agents and containers at a glance")
    status.add_argument("--max-age", type=float, default=300.0, help="ignore older snapshots (s)")
    status.set_defaults(func=_cmd_status)

    config = sub.add_parser("config", help="configuration helpers")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    env_example = config_sub.add_parser("env-example", help="print .env.example")
    env_example.set_defaults(func=_cmd_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        code: int = args.func(args, settings)
    except HemoStatError as exc:
        print(f"hemostat: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())

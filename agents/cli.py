"""`hemostat`: the one console entry point."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from shared.errors import HemoStatError
from shared.heartbeat import AgentStatus, read_heartbeats
from shared.settings import Settings, load_settings

__all__ = ["build_parser", "main"]


def _cmd_agent(args: argparse.Namespace, settings: Settings) -> int:
    from agents.registry import load_factory
    from agents.runner import run_agent

    return run_agent(load_factory(args.name), settings)


def _cmd_socket_proxy(args: argparse.Namespace, settings: Settings) -> int:
    """Serve the Docker socket proxy, or (--check) probe one as a container health check."""
    from agents.socket_proxy import Mode, ProxyConfig, SocketProxy, check

    if args.check:
        ok, detail = check(args.check)
        print(detail, file=sys.stdout if ok else sys.stderr)
        return 0 if ok else 1
    if args.mode is None:
        print("hemostat socket-proxy: --mode read|act is required", file=sys.stderr)
        return 2
    from agents.runner import run_service

    config = ProxyConfig(
        listen=args.listen,
        socket_path=args.socket,
        mode=Mode(args.mode),
        allow_exec=args.allow_exec,
        allow_scale=args.allow_scale,
        allow_volume_removal=args.allow_volume_removal,
    )
    return run_service(SocketProxy(config), settings)


def _cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from agents.runner import setup_logging
    from agents.supervisor import run

    setup_logging(settings)
    return run(settings, dashboard=not args.no_dashboard)


def _cmd_dashboard(args: argparse.Namespace, settings: Settings) -> int:
    """Serve the Streamlit dashboard (replaces this process)."""
    import os

    import dashboard

    app = Path(dashboard.__file__).parent / "app.py"
    host = args.host or settings.dashboard_host
    # The app decides who may approve from the address it really listens on.
    os.environ["HEMOSTAT_DASHBOARD_HOST"] = host
    argv = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app),
        "--server.headless",
        "true",
        "--server.address",
        host,
        "--server.port",
        str(args.port or settings.dashboard_port),
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
    ]
    os.execv(sys.executable, argv)
    return 0  # not reached


def _cmd_dashboard_user(args: argparse.Namespace, settings: Settings) -> int:
    """Print a HEMOSTAT_DASHBOARD_USERS entry; the password is read without echo (or stdin)."""
    import getpass

    from dashboard.auth import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.name}: ")
        if password != getpass.getpass("again: "):
            print("hemostat: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < 12:
        print("hemostat: use at least 12 characters", file=sys.stderr)
        return 1
    print(f"{args.name}:{hash_password(password)}")
    return 0


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


def _cmd_hosts_forget(args: argparse.Namespace, settings: Settings) -> int:
    """A host taken out of the fleet on purpose: no longer reported as unwatched."""
    from redis.exceptions import RedisError

    from shared import keys
    from shared.redis_client import connect_sync

    try:
        with connect_sync(settings) as redis:
            removed = redis.hdel(keys.HOSTS, args.name)
    except RedisError as exc:
        print(f"cannot reach Redis: {exc}", file=sys.stderr)
        return 1
    if not removed:
        print(f"hemostat: no host {args.name!r} (see `hemostat status`)", file=sys.stderr)
        return 1
    print(f"forgot host {args.name}; it comes back if its agents beat again")
    return 0


def _cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    """Agents (heartbeats) and containers (the Monitor's snapshots), at a glance."""
    import time

    from redis.exceptions import RedisError

    from shared.approvals import read_pending
    from shared.container_state import read_snapshots
    from shared.hosts import read_hosts
    from shared.redis_client import connect_sync

    try:
        with connect_sync(settings) as redis:
            beats = read_heartbeats(redis)
            snapshots = read_snapshots(redis, time.time(), args.max_age)
            pending = read_pending(redis)
            hosts = read_hosts(redis)
    except RedisError as exc:
        print(f"cannot reach Redis: {exc}", file=sys.stderr)
        return 1
    now = datetime.now(UTC)
    print(f"AGENTS ({len(beats)})")
    for beat in sorted(beats, key=lambda b: (b.agent, b.host, b.instance)):
        age = (now - beat.beat_at).total_seconds()
        print(
            f"  {beat.agent:10s} {beat.host[:20]:20s} {beat.instance:28s} {beat.status:9s} "
            f"beat {age:4.1f}s ago"
        )
    print(f"\nHOSTS ({len(hosts)})")
    for record in hosts:
        since = time.time() - record.since
        seen = time.time() - record.last_seen
        print(
            f"  {record.host[:28]:28s} {record.state:10s} for {since:6.0f}s  "
            f"monitors {record.monitors}  responders {record.responders}  "
            f"last seen {seen:.0f}s ago"
        )
    print(f"\nCONTAINERS ({len(snapshots)})")
    columns = (
        ("HOST", 16),
        ("NAME", 28),
        ("STATE", 9),
        ("HEALTH", 10),
        ("CPU%", -6),
        ("MEM%", -6),
    )
    print("  " + " ".join(f"{n:>{-w}s}" if w < 0 else f"{n:{w}s}" for n, w in columns), end="")
    print(" RESTARTS  ALERTS")
    for snap in sorted(snapshots, key=lambda s: (s.host, s.name)):
        cpu = f"{snap.cpu_percent:.1f}" if snap.cpu_percent is not None else "-"
        mem = f"{snap.memory_percent:.1f}" if snap.memory_percent is not None else "-"
        watched = "" if snap.monitored else " (not monitored)"
        print(
            f"  {(snap.host or '-')[:16]:16s} {snap.name[:28]:28s} {snap.state:9s} "
            f"{snap.health or '-':10s} {cpu:>6s} {mem:>6s} "
            f"{snap.restart_count:>8d}  {','.join(snap.active_alerts) or '-'}{watched}"
        )
    print(f"\nPENDING APPROVALS ({len(pending)})")
    for proposal in pending:
        left = proposal.expires_at - time.time()
        target = proposal.container_name or proposal.container_id[:12]
        print(
            f"  {proposal.id}  {proposal.action_type}:{proposal.action_id} on {target} "
            f"(expires in {left:.0f}s) — {proposal.why}"
        )
        print(f"    {proposal.approve_command}   |   {proposal.deny_command}")
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


def _default_actor() -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _cmd_decide(args: argparse.Namespace, settings: Settings) -> int:
    """Approve or deny a proposal: the first decision wins, atomically."""
    from shared.approvals import decide_sync
    from shared.errors import ApprovalError, NotReplicated
    from shared.events import Decision

    decision = Decision.APPROVED if args.command == "approve" else Decision.DENIED
    actor = args.actor or _default_actor()
    try:
        proposal = decide_sync(settings, args.id, decision, actor, getattr(args, "reason", ""))
    except ApprovalError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    except NotReplicated as exc:
        print(f"not confirmed: {exc}", file=sys.stderr)
        return 1
    target = proposal.container_name or proposal.container_id[:12]
    print(f"{decision.value}: {proposal.action_type} {proposal.action_id} on {target} by {actor}")
    return 0


def _cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from shared import audit
    from shared.redis_client import connect_sync

    since = time.time() - args.since * 3600 if args.since else None
    with connect_sync(settings) as redis:
        records = audit.read(
            redis,
            limit=args.limit,
            container=args.container,
            since=since,
            event=args.event,
            host=args.host,
        )
    if args.json:
        for record in records:
            print(record.model_dump_json())
        return 0
    for r in records:
        stamp = datetime.fromtimestamp(r.at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        target = r.container_name or (r.container_id or "")[:12]
        if r.host:
            target = f"{r.host}/{target}"
        failed = [g.guard for g in r.guards if not g.passed]
        dry = " [dry-run]" if r.dry_run else ""
        print(
            f"{stamp}  {r.event:9s} {r.outcome:28s} {target:20s} {r.action_type or '-'}:"
            f"{r.action_id or '-'}{dry}  actor={r.actor}"
            + (f"  failed={','.join(failed)}" if failed else "")
            + (f"  proposal={r.proposal_id}" if r.proposal_id else "")
        )
        if r.reason:
            print(f"{'':22s}{r.reason[:160]}")
    if not records:
        print("no audit records match")
    return 0


def _cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    from shared.env_example import render

    print(render(), end="")
    return 0


def _cmd_stack_env(args: argparse.Namespace, settings: Settings) -> int:
    from shared import stack_env

    env = stack_env.read_env_file(Path(args.env_file))
    problems = stack_env.check_edge(env) if args.edge else stack_env.check(env)
    if problems:
        print(f"hemostat: refusing to start the stack; change these in {args.env_file}:")
        for p in problems:
            print(f"  {p.name} {p.why}; for example:\n    {p.name}={p.suggestion}")
        return 1
    roles = stack_env.EDGE_ROLES if args.edge else stack_env.ROLES
    for path in stack_env.write(env, Path(args.out), roles):
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hemostat", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    agent = sub.add_parser("agent", help="run one agent in the foreground")
    agent.add_argument("name", help="monitor | analyzer | responder | alert | metrics")
    agent.set_defaults(func=_cmd_agent)

    run = sub.add_parser("run", help="run every agent and the dashboard on this host")
    run.add_argument("--no-dashboard", action="store_true", help="agents only")
    run.set_defaults(func=_cmd_run)

    dash = sub.add_parser("dashboard", help="serve the Streamlit dashboard")
    dash.add_argument("--host", help="bind address (default HEMOSTAT_DASHBOARD_HOST)")
    dash.add_argument("--port", type=int, help="port (default HEMOSTAT_DASHBOARD_PORT)")
    dash.set_defaults(func=_cmd_dashboard)

    user = sub.add_parser(
        "dashboard-user", help="print a HEMOSTAT_DASHBOARD_USERS entry (hashed password)"
    )
    user.add_argument("name")
    user.set_defaults(func=_cmd_dashboard_user)

    proxy = sub.add_parser(
        "socket-proxy", help="the Docker socket proxy (the only process that opens the socket)"
    )
    proxy.add_argument("--listen", default="127.0.0.1:2375", help="HOST:PORT to serve on")
    proxy.add_argument(
        "--mode", choices=["read", "act"], help="read: Monitor and Analyzer; act: Responder"
    )
    proxy.add_argument("--socket", default="/var/run/docker.sock", help="the Docker socket")
    proxy.add_argument("--allow-exec", action="store_true", help="act: runbook exec actions")
    proxy.add_argument(
        "--allow-scale", action="store_true", help="act: clone containers, scale swarm services"
    )
    proxy.add_argument(
        "--allow-volume-removal", action="store_true", help="act: DELETE containers with v=true"
    )
    proxy.add_argument(
        "--check", metavar="HOST:PORT", help="health check: exit 0 when GET /_ping answers OK"
    )
    proxy.set_defaults(func=_cmd_socket_proxy)

    hosts = sub.add_parser("hosts", help="the fleet's hosts")
    hosts_sub = hosts.add_subparsers(dest="hosts_command", required=True)
    forget = hosts_sub.add_parser("forget", help="stop reporting a host taken out of the fleet")
    forget.add_argument("name")
    forget.set_defaults(func=_cmd_hosts_forget)

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

    approve = sub.add_parser("approve", help="approve a pending remediation proposal")
    approve.add_argument("id")
    approve.add_argument("--actor", help="who decides (default: user@host)")
    approve.set_defaults(func=_cmd_decide)

    deny = sub.add_parser("deny", help="deny a pending remediation proposal")
    deny.add_argument("id")
    deny.add_argument("--reason", required=True)
    deny.add_argument("--actor", help="who decides (default: user@host)")
    deny.set_defaults(func=_cmd_decide)

    audit = sub.add_parser("audit", help="print the Responder's audit log, newest first")
    audit.add_argument("--container", help="name or id prefix")
    audit.add_argument("--host", help="only this Docker host's records (fleet mode)")
    audit.add_argument(
        "--event", help="executed, dry_run, rejected, proposed, denied, expired, ..."
    )
    audit.add_argument("--since", type=float, help="hours back")
    audit.add_argument("--limit", type=int, default=50)
    audit.add_argument("--json", action="store_true", help="one JSON record per line")
    audit.set_defaults(func=_cmd_audit)

    status = sub.add_parser("status", help="agents, containers and pending approvals")
    status.add_argument("--max-age", type=float, default=300.0, help="ignore older snapshots (s)")
    status.set_defaults(func=_cmd_status)

    config = sub.add_parser("config", help="configuration helpers")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    env_example = config_sub.add_parser("env-example", help="print .env.example")
    env_example.set_defaults(func=_cmd_config)
    stack = config_sub.add_parser(
        "stack-env",
        help="refuse example secrets, then write one env file per compose service",
    )
    stack.add_argument("--env-file", default=".env")
    stack.add_argument("--out", default=".state/env")
    stack.add_argument(
        "--edge",
        action="store_true",
        help="for docker-compose.edge.yml: the Monitor and Responder, against a central Redis",
    )
    stack.set_defaults(func=_cmd_stack_env)
    return parser


# What an operator types in another shell than `hemostat run`'s.
_OPERATOR_COMMANDS = frozenset(
    {_cmd_check, _cmd_hosts_forget, _cmd_status, _cmd_decide, _cmd_audit}
)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        if args.func in _OPERATOR_COMMANDS:
            settings = _with_local_redis(settings)
        code: int = args.func(args, settings)
    except HemoStatError as exc:
        print(f"hemostat: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _reader_gone()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return _reader_gone()
    return code


def _with_local_redis(settings: Settings) -> Settings:
    """With no Redis configured, the private one `hemostat run` keeps in this state folder."""
    if settings.redis_url is not None or settings.redis_sentinels:
        return settings
    from pydantic import SecretStr

    from agents.supervisor import local_redis_url

    url = local_redis_url(settings.state_dir)
    return settings if url is None else settings.model_copy(update={"redis_url": SecretStr(url)})


def _reader_gone() -> int:
    """The reader of our output went away (`hemostat audit | head`): stop quietly, as Unix tools
    do. stdout goes to /dev/null so Python's own flush at exit does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())

"""End to end: the five agents as separate OS processes started through the CLI, a real Redis, the
real Docker engine, local HTTP receivers standing in for Slack and Discord. Everything is proven
from the outside: Docker's own events, the streams, the receivers and `/metrics`."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis as sync_redis

from shared.events import Channel
from tests.support.docker_events import count_events
from tests.support.stack import Stack, events, quiet, stack_on_clean_redis, wait

pytestmark = [pytest.mark.docker, pytest.mark.redis]
OPT_IN = {"hemostat.remediate": "true"}
# This stack's containers only: another HemoStat on the same engine (a parallel session, a
# benchmark) never sees them, and this stack never touches anyone else's.
SCOPE = {"hemostat.e2e": uuid.uuid4().hex[:12]}
# Crashes once, then (after a restart, /tmp survives) stays up.
CRASH_ONCE = "if [ -f /tmp/ran ]; then sleep 3600; else touch /tmp/ran; sleep 1; exit 3; fi"
CRASH_ALWAYS = "sleep 1; exit 1"

RUNBOOKS = """
id: e2e-crash
version: 1
priority: 10
match: {kinds: [crash]}
actions:
  - {id: restart, type: restart, params: {stop_timeout_s: 1}, guards: {cooldown_s: 0},
     verify: {timeout_s: 20}}
  - {id: notify, type: none}
default_action: restart
---
id: e2e-crash-approval
version: 1
priority: 50
match: {kinds: [crash], labels: {e2e.approval: "true"}}
actions:
  - {id: restart, type: restart, params: {stop_timeout_s: 1}, approval: {required: true, timeout_s: 600},
     verify: {timeout_s: 20}}
default_action: restart
---
id: e2e-unhealthy
version: 1
match: {kinds: [unhealthy]}
actions:
  - {id: restart, type: restart, params: {stop_timeout_s: 1}, guards: {cooldown_s: 1},
     verify: {timeout_s: 30, require_healthy: true}}
default_action: restart
---
id: e2e-loop
version: 1
match: {kinds: [restart_loop]}
actions:
  - {id: notify, type: none}
default_action: notify
"""


@pytest.fixture(scope="module")
def stack(redis_service, tmp_path_factory, docker) -> Iterator[Stack]:
    with stack_on_clean_redis(
        redis_service.url,
        tmp_path_factory.mktemp("e2e"),
        RUNBOOKS,
        host_name="e2e-host",
        watch_label="hemostat.e2e={}".format(SCOPE["hemostat.e2e"]),
        env={
            "HEMOSTAT_RESPONDER_CRASH_LOOP_LIMIT": "2",
            "HEMOSTAT_RESPONDER_CRASH_LOOP_WINDOW_S": "30",
            "HEMOSTAT_RESPONDER_CIRCUIT_MAX_ACTIONS": "10",
            "HEMOSTAT_ALERT_DEDUP_WINDOW_S": "0",
            # One message per container: these tests read each; storms have their own test.
            "HEMOSTAT_ALERT_STORM_THRESHOLD": "0",
            "HEMOSTAT_ALERT_ROUTES": "info=slack;warning=slack,discord;critical=slack,discord;"
            "escalation=slack,discord;approval_request=slack,discord",
        },
    ) as s:
        yield s


@pytest.fixture
def r(stack: Stack) -> Iterator[sync_redis.Redis]:
    client = sync_redis.Redis.from_url(stack.redis_url, decode_responses=True)
    yield client
    client.close()


def outcomes(r: sync_redis.Redis, container_id: str) -> list[Any]:
    return [
        e for e in events(r, Channel.REMEDIATION_COMPLETE) if e.subject.container_id == container_id
    ]


def restarts(docker: Any, container_id: str, since: float) -> int:
    return count_events(docker, container_id, "restart", since)


def run(docker: Any, image: str, script: str, labels: dict[str, str], **kw: Any) -> Any:
    return docker.containers.run(
        image, ["sh", "-c", script], labels=labels | SCOPE, detach=True, **kw
    )


def test_1_a_crash_is_restarted_once_notified_and_counted(stack, r, docker, test_image, run_label):
    since = time.time() - 1
    c = run(docker, test_image, CRASH_ONCE, run_label | OPT_IN)
    wait(
        lambda: any(o.payload.status == "succeeded" for o in outcomes(r, c.id)),
        60,
        f"restart of the crashed container\n{stack.log('responder')}",
    )
    quiet(r)
    assert restarts(docker, c.id, since) == 1
    c.reload()
    assert c.status == "running"
    wait(
        lambda: any(c.name in h.raw and "succeeded" in h.raw for h in stack.receiver.at("/slack")),
        30,
        "a Slack message about it",
    )
    labels = {'host="e2e-host"', 'action="restart"', 'status="succeeded"'}

    def counted() -> float:
        metrics = httpx.get(f"http://127.0.0.1:{stack.metrics_port}/metrics").text
        rows = [
            row
            for row in metrics.splitlines()
            if row.startswith("hemostat_remediations_total{")
            and labels <= set(row.split("{", 1)[1].split("}", 1)[0].split(","))
        ]
        return float(rows[0].rsplit(" ", 1)[1]) if rows else 0.0

    # The exporter reads the same outcome on its own consumer group: wait for it to count it.
    wait(
        lambda: counted() >= 1,
        30,
        "the exporter counted the restart\n"
        + httpx.get(f"http://127.0.0.1:{stack.metrics_port}/metrics").text,
    )


def test_2_a_failing_health_check_is_restarted_and_verified(
    stack, r, docker, test_image, run_label
):
    script = (
        "if [ -f /tmp/ran ]; then touch /tmp/ok; sleep 3600; else touch /tmp/ran; sleep 3600; fi"
    )
    c = run(
        docker,
        test_image,
        script,
        run_label | OPT_IN,
        healthcheck={
            "test": ["CMD", "test", "-f", "/tmp/ok"],
            "interval": 500_000_000,
            "retries": 1,
        },
    )
    wait(lambda: any(o.payload.status == "succeeded" for o in outcomes(r, c.id)), 60, "healed")
    done = next(o for o in outcomes(r, c.id) if o.payload.status == "succeeded")
    assert done.payload.verified is True
    assert "healthy" in done.payload.reason
    assert done.payload.alert_kind == "unhealthy"


def test_3_a_crash_loop_stops_being_restarted_and_is_escalated(
    stack, r, docker, test_image, run_label
):
    since = time.time() - 1
    c = run(docker, test_image, CRASH_ALWAYS, run_label | OPT_IN)

    def looped() -> bool:
        return any(o.payload.guard == "crash_loop" for o in outcomes(r, c.id))

    wait(
        looped,
        90,
        f"the crash-loop guard\n{stack.log('monitor')}\n{stack.log('analyzer')}\n{stack.log('responder')}",
    )
    assert any(
        "died again" in o.payload.reason for o in outcomes(r, c.id) if o.payload.status == "failed"
    )
    escalations = [e for e in events(r, Channel.ESCALATION) if e.subject.container_id == c.id]
    assert [e.payload.guard for e in escalations] == ["crash_loop"]
    count = restarts(docker, c.id, since)
    assert count == 2, "restarted up to the limit, then no more"
    quiet(r)
    assert restarts(docker, c.id, since) == count, "no restart after the guard held"
    wait(
        lambda: any(
            "crash_loop" in h.raw and c.name in h.raw for h in stack.receiver.at("/discord")
        ),
        30,
        "the escalation reached people",
    )


def test_4_unlabelled_and_protected_containers_are_reported_never_touched(
    stack, r, docker, test_image, run_label
):
    since = time.time() - 1
    plain = run(docker, test_image, CRASH_ONCE, run_label)
    protected = run(
        docker, test_image, CRASH_ONCE, run_label | OPT_IN | {"hemostat.protect": "true"}
    )
    for c, why in ((plain, "not opted in"), (protected, "protected")):
        wait(lambda c=c: outcomes(r, c.id), 60, f"an outcome for {c.name}")
        [done] = outcomes(r, c.id)
        assert (done.payload.status, done.payload.guard) == ("rejected", "target_policy")
        assert why in done.payload.reason
        alerts = [e for e in events(r, Channel.HEALTH_ALERT) if e.subject.container_id == c.id]
        assert alerts, "it is still reported"
        assert restarts(docker, c.id, since) == 0
        c.reload()
        assert c.status == "exited"


def test_5_with_dry_run_nothing_is_touched_but_everything_is_recorded(
    stack, r, docker, test_image, run_label
):
    stack.stop("responder")
    stack.start("responder", HEMOSTAT_DRY_RUN="true")
    try:
        since = time.time() - 1
        c = run(docker, test_image, CRASH_ONCE, run_label | OPT_IN)
        wait(lambda: outcomes(r, c.id), 60, "a dry-run outcome")
        [done] = outcomes(r, c.id)
        assert done.payload.status == "dry_run"
        assert done.payload.dry_run is True
        assert restarts(docker, c.id, since) == 0
        c.reload()
        assert c.status == "exited"
        out = subprocess.run(
            [sys.executable, "-m", "agents.cli", "audit", "--container", c.id[:12], "--json"],
            env=stack.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert '"event":"dry_run"' in out
        wait(
            lambda: any(
                "DRY-RUN" in h.raw and c.name in h.raw for h in stack.receiver.at("/slack")
            ),
            30,
        )
    finally:
        stack.stop("responder")
        stack.start("responder")
        wait(
            lambda: r.exists("hemostat:heartbeat:responder:e2e-host-responder"),
            30,
            "responder back",
        )


def test_6_an_approval_waits_is_approved_through_the_cli_then_executes(
    stack, r, docker, test_image, run_label
):
    since = time.time() - 1
    c = run(docker, test_image, CRASH_ONCE, run_label | OPT_IN | {"e2e.approval": "true"})
    wait(
        lambda: any(o.payload.status == "pending_approval" for o in outcomes(r, c.id)),
        60,
        "a proposal",
    )
    proposal = next(o.payload.proposal_id for o in outcomes(r, c.id) if o.payload.proposal_id)
    quiet(r)
    assert restarts(docker, c.id, since) == 0, "nothing happens before a human decides"
    assert any(proposal in h.raw for h in stack.receiver.at("/slack")), "people were asked"
    done = subprocess.run(
        [sys.executable, "-m", "agents.cli", "approve", proposal, "--actor", "e2e-operator"],
        env=stack.env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    wait(
        lambda: any(o.payload.status == "succeeded" for o in outcomes(r, c.id)),
        60,
        "the approved restart",
    )
    assert restarts(docker, c.id, since) == 1


def test_7_a_responder_killed_mid_stream_loses_nothing_and_repeats_nothing(
    stack, r, docker, test_image, run_label
):
    since = time.time() - 1
    made = [run(docker, test_image, CRASH_ONCE, run_label | OPT_IN) for _ in range(6)]
    ids = {c.id for c in made}
    wait(lambda: any(restarts(docker, c.id, since) for c in made), 60, "the first restart")
    stack.stop("responder", signal.SIGKILL)
    stack.start("responder")  # same instance name: it resumes its own pending messages
    wait(
        lambda: all(any(o.payload.status == "succeeded" for o in outcomes(r, i)) for i in ids),
        120,
        f"every request finished\n{stack.log('responder')}",
    )
    quiet(r)
    assert {c.id: restarts(docker, c.id, since) for c in made} == dict.fromkeys(ids, 1)
    requests = Counter(o.payload.request_id for i in ids for o in outcomes(r, i))
    assert set(requests.values()) == {1}, "one outcome per request"
    assert r.xpending(Channel.REMEDIATION_NEEDED, "responder:e2e-host")["pending"] == 0


def test_the_agent_image_runs_as_non_root_and_carries_no_secrets(docker):
    """`make images` built hemostat:latest from this tree (a set-up step with progress, outside
    every test's timeout); here it is run and looked into."""
    from docker.errors import ImageNotFound

    from tests.support.services import unavailable

    try:
        docker.images.get("hemostat:latest")
    except ImageNotFound:
        unavailable("hemostat:latest is missing: `make images` builds it")
    help_text = subprocess.run(
        ["docker", "run", "--rm", "hemostat:latest", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "agent" in help_text and "check" in help_text
    probe = "id -u; ls -A /app; test -e /app/.env && echo HAS_DOTENV || true"
    out = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "sh", "hemostat:latest", "-c", probe],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out[0] == "10001", "runs as a non-root user"
    assert "HAS_DOTENV" not in out
    assert out[1:] == ["runbooks"], "only the runbooks next to the installed package"


def test_8_bytes_that_are_not_utf8_on_every_channel_kill_no_agent(
    stack, r, docker, test_image, run_label
):
    """Anything with Redis access can write garbage: each is dead-lettered with the reason, every
    agent keeps running, and a crash right after is still healed."""
    raw = sync_redis.Redis.from_url(stack.redis_url)  # bytes in, bytes out
    try:
        before = r.xlen("hemostat:dead_letter")
        for channel in Channel:
            raw.xadd(str(channel), {b"event": b"\xff\xfe not utf-8 \xc3\x28"})
        groups = sum(len(r.xinfo_groups(str(c))) for c in Channel)
        wait(
            lambda: r.xlen("hemostat:dead_letter") >= before + groups,
            60,
            "every copy dead-lettered",
        )
    finally:
        raw.close()
    letters = [f for _, f in r.xrevrange("hemostat:dead_letter", count=groups)]
    assert all("UTF-8" in f["error"] for f in letters), {f["error"] for f in letters}
    assert all(proc.poll() is None for proc in stack.procs.values()), "every agent is alive"
    c = run(docker, test_image, CRASH_ONCE, run_label | OPT_IN)
    wait(lambda: any(o.payload.status == "succeeded" for o in outcomes(r, c.id)), 60, "healed")


def test_9_after_flushall_agents_recreate_what_they_need_and_keep_healing(
    stack, r, docker, test_image, run_label
):
    r.flushall()
    c = run(docker, test_image, CRASH_ONCE, run_label | OPT_IN)
    wait(
        lambda: any(o.payload.status == "succeeded" for o in outcomes(r, c.id)),
        90,
        f"healed after FLUSHALL\n{stack.log('responder')}",
    )
    assert all(proc.poll() is None for proc in stack.procs.values()), "every agent is alive"
    wait(lambda: len(list(r.scan_iter("hemostat:heartbeat:*"))) >= 5, 30, "5 heartbeats")


def test_10_while_the_monitor_was_down_a_crash_is_reported_and_a_stop_left_alone(
    stack, r, docker, test_image, run_label
):
    since = time.time() - 1
    stopped = run(docker, test_image, "sleep 600", run_label | OPT_IN)
    wait(lambda: r.exists(f"hemostat:container:{stopped.id}"), 30, "the Monitor saw it")
    stack.stop("monitor")
    stopped.stop(timeout=1)  # a person stops it: exit 137
    crashed = run(
        docker,
        test_image,
        "if [ -f /tmp/ran ]; then sleep 3600; else touch /tmp/ran; exit 3; fi",
        run_label | OPT_IN,
    )
    crashed.wait(timeout=30)
    stack.start("monitor")
    wait(
        lambda: any(o.payload.status == "succeeded" for o in outcomes(r, crashed.id)), 60, "healed"
    )
    [alert] = [e for e in events(r, Channel.HEALTH_ALERT) if e.subject.container_id == crashed.id][
        :1
    ]
    assert "while the Monitor was not listening" in alert.payload.summary
    quiet(r)
    assert [
        e for e in events(r, Channel.HEALTH_ALERT) if e.subject.container_id == stopped.id
    ] == []
    assert restarts(docker, stopped.id, since) == 0
    stopped.reload()
    assert stopped.status == "exited", "what a person stopped stays stopped"

"""Helpers for Responder tests: a runbook folder with every action, requests built from it,
running a Responder in-process, and counting what Docker really did."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import docker as docker_sdk
import pytest

from agents.responder.agent import ResponderAgent
from shared.docker_api import DockerGateway
from shared.events import (
    AlertKind,
    Analysis,
    AnalysisMethod,
    Channel,
    RemediationNeeded,
    RemediationNeededEvent,
    Severity,
    Source,
    Subject,
    make_event,
)
from shared.runbooks import Runbooks, load_runbooks
from tests.conftest import make_settings
from tests.support.bus import wait_until
from tests.support.docker_events import count_events
from tests.support.streams import events_on

RUNBOOK = """
id: test-actions
version: 1
match: {kinds: [crash]}
actions:
  - {id: restart, type: restart, params: {stop_timeout_s: 1}, guards: {cooldown_s: 2},
     verify: {timeout_s: 20}}
  - {id: restart-slow-verify, type: restart, params: {stop_timeout_s: 1},
     verify: {timeout_s: 60, require_healthy: true}}
  - {id: restart-approval, type: restart, params: {stop_timeout_s: 1},
     approval: {required: true, timeout_s: 600}}
  - {id: restart-approval-short, type: restart, params: {stop_timeout_s: 1},
     approval: {required: true, timeout_s: 1.5}}
  - {id: restart-limited, type: restart, params: {stop_timeout_s: 1},
     guards: {cooldown_s: 0, max_attempts: 2, window_s: 6}}
  - {id: restart-once, type: restart, params: {stop_timeout_s: 1}, guards: {cooldown_s: 600}}
  - {id: stop, type: stop, params: {timeout_s: 1}, verify: {timeout_s: 10}}
  - {id: start, type: start}
  - {id: scale-up, type: scale, params: {delta: 1}, verify: {timeout_s: 20}, guards: {cooldown_s: 0}}
  - {id: scale-down, type: scale, params: {delta: -1}, verify: {timeout_s: 20},
     guards: {cooldown_s: 0}}
  - {id: cleanup, type: cleanup, params: {scope: service}}
  - {id: exec-ok, type: exec, params: {argv: [sh, -c, "echo checked; echo password=hunter2hunter2"]}}
  - {id: exec-fail, type: exec, params: {argv: [sh, -c, "echo broken >&2; exit 4"]},
     guards: {cooldown_s: 2}}
  - {id: notify, type: none}
default_action: restart
"""


OPT_IN = {"hemostat.remediate": "true"}


@pytest.fixture
def runbooks(tmp_path: Path) -> tuple[Path, Runbooks]:
    folder = tmp_path / "runbooks"
    return folder, write_runbooks(folder)


@pytest.fixture
def sleeper(docker: Any, test_image: str, run_label: dict[str, str]) -> Any:
    """Makes a labelled container that sleeps (removed when the test ends)."""

    def make(**labels: str) -> Any:
        return docker.containers.run(
            test_image, ["sleep", "600"], detach=True, labels=run_label | labels
        )

    return make


def write_runbooks(folder: Path) -> Runbooks:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test.yaml").write_text(RUNBOOK)
    return load_runbooks(folder)


def request(
    runbooks: Runbooks,
    container: Any,
    action_id: str,
    *,
    key: str | None = None,
    needs_human: bool = False,
    emitted_at: float | None = None,
    alert_at: float | None = None,
    **action_changes: Any,
) -> RemediationNeededEvent:
    runbook = runbooks.get("test-actions")
    assert runbook is not None
    action = runbook.action(action_id)
    assert action is not None
    if action_changes:
        action = action.model_copy(update=action_changes)
    now = time.time() if emitted_at is None else emitted_at
    from shared.clock import to_datetime

    return make_event(
        RemediationNeededEvent,
        source=Source(agent="analyzer", instance="test", version="0"),
        subject=Subject(
            host="test-host",
            container_id=getattr(container, "id", container),
            container_name=getattr(container, "name", None),
        ),
        severity=Severity.CRITICAL,
        payload=RemediationNeeded(
            alert_kind=AlertKind.CRASH,
            alert_occurred_at=to_datetime(now if alert_at is None else alert_at),
            runbook_id="test-actions",
            runbook_version=1,
            action=action,
            analysis=Analysis(method=AnalysisMethod.RULES, confidence=0.9, root_cause="test"),
            needs_human=needs_human,
            reason="test request",
        ),
        occurred_at=to_datetime(now),
        emitted_at=to_datetime(now),
        incident_id="inc-test",
        idempotency_key=key,
    )


@contextlib.asynccontextmanager
async def running_responder(
    redis: Any,
    redis_url: str,
    runbooks_dir: Path,
    *,
    gateway: Any = None,
    bus: Any = None,
    clock: Any = None,
    instance: str = "test-1",
    **kw: Any,
) -> AsyncIterator[ResponderAgent]:
    """A Responder running in-process; `gateway` and `bus` replace the real collaborators (fault
    injection), `redis` may be a client behind a proxy."""
    settings = make_settings(
        redis_url,
        **{
            "dry_run": False,
            "runbooks_dir": runbooks_dir,
            "responder_verify_stable_s": 0.5,
            "responder_lease_ttl_s": 5.0,
            "instance": instance,
        }
        | kw,
    )
    agent = ResponderAgent(
        settings=settings,
        redis=redis,
        bus=bus,
        clock=clock,
        docker=gateway or DockerGateway(docker_sdk.from_env(timeout=60)),
        runbooks=load_runbooks(runbooks_dir),
    )
    task = asyncio.create_task(agent.run())
    await wait_until(lambda: redis.exists(Channel.REMEDIATION_NEEDED), what="responder group")
    try:
        yield agent
    finally:
        agent.stop()
        await asyncio.wait_for(task, 60)


async def completions(redis: Any, request_id: str | None = None) -> list[Any]:
    out = await events_on(redis, Channel.REMEDIATION_COMPLETE)
    return [e for e in out if request_id is None or e.payload.request_id == request_id]


async def outcome(
    redis: Any, request_id: str, timeout: float = 30, status: str | None = None
) -> Any:
    async def done() -> bool:
        found = await completions(redis, request_id)
        return any(status is None or e.payload.status == status for e in found)

    await wait_until(done, timeout=timeout, what=f"outcome of {request_id}")
    found = await completions(redis, request_id)
    return next(e for e in reversed(found) if status is None or e.payload.status == status)


def restart_events(client: Any, container_id: str, since: float) -> int:
    """How many times Docker really restarted the container (its live event stream)."""
    return count_events(client, container_id, "restart", since)

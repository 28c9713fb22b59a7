"""Executing the closed set of actions against the Docker API, and verifying the result.

Every action works on a container HemoStat has already cleared (target policy, lease, cooldown,
circuit breaker, crash-loop guard, dry-run); nothing here decides whether to act, only how."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from shared.actions import (
    Action,
    CleanupAction,
    ExecAction,
    RestartAction,
    ScaleAction,
    StartAction,
    StopAction,
)
from shared.containers import (
    COMPOSE_PROJECT,
    COMPOSE_SERVICE,
    LABEL_PROTECT,
    LABEL_STACK,
    SWARM_SERVICE,
    ContainerInfo,
)
from shared.docker_api import DockerGateway
from shared.errors import ContainerNotFound, DockerError
from shared.redaction import Redactor

COMPOSE_NUMBER = "com.docker.compose.container-number"
MAX_REPLICAS = 20


@dataclass(frozen=True)
class ActionResult:
    ok: bool
    detail: str
    output: str | None = None
    verified: bool | None = None  # None: nothing to verify (or verification disabled)


class Executor:
    def __init__(
        self,
        docker: DockerGateway,
        redactor: Redactor,
        *,
        stable_s: float = 3.0,
        output_limit: int = 4000,
        poll_s: float = 0.25,
    ) -> None:
        self.docker = docker
        self.redactor = redactor
        self.stable_s = stable_s
        self.output_limit = output_limit
        self.poll_s = poll_s

    async def run(self, action: Action, info: ContainerInfo) -> ActionResult:
        """Issue the action, then verify it within the action's verify window."""
        issued_at = time.time()
        try:
            result = await self._issue(action, info)
        except ContainerNotFound as exc:
            return ActionResult(False, f"target vanished: {exc}")
        except DockerError as exc:
            return ActionResult(False, f"Docker refused: {exc}")
        if not result.ok or not action.verify.enabled or result.verified is not None:
            return result
        verified, detail = await self.verify(action, info, since=issued_at)
        return ActionResult(verified, f"{result.detail}; {detail}", result.output, verified)

    async def _issue(self, action: Action, info: ContainerInfo) -> ActionResult:
        if isinstance(action, RestartAction):
            await self.docker.restart(info.id, action.params.stop_timeout_s)
            return ActionResult(True, "restart issued")
        if isinstance(action, StopAction):
            await self.docker.stop(info.id, action.params.timeout_s)
            return ActionResult(True, "stop issued")
        if isinstance(action, StartAction):
            await self.docker.start(info.id)
            return ActionResult(True, "start issued")
        if isinstance(action, ExecAction):
            return await self._exec(action, info)
        if isinstance(action, ScaleAction):
            return await self._scale(action, info)
        if isinstance(action, CleanupAction):
            return await self._cleanup(action, info)
        return ActionResult(True, "nothing to do", verified=None)

    # ------------------------------------------------------------------ exec

    async def _exec(self, action: ExecAction, info: ContainerInfo) -> ActionResult:
        p = action.params
        code, raw = await self.docker.exec(info.id, p.argv, p.user, p.timeout_s)
        redactor = self.redactor.scoped(info.secret_values)
        text = redactor.text(raw.decode("utf-8", errors="replace"))
        if len(text) > self.output_limit:
            text = text[-self.output_limit :] + f"\n[truncated to the last {self.output_limit}]"
        if code is None:
            return ActionResult(False, f"exec timed out after {p.timeout_s:.0f}s", text, False)
        ok = code == 0
        return ActionResult(ok, f"exec exited with {code}", text, ok)

    # ------------------------------------------------------------------ scale

    async def _scale(self, action: ScaleAction, info: ContainerInfo) -> ActionResult:
        p = action.params
        swarm = info.labels.get(SWARM_SERVICE)
        if swarm:
            replicas = p.replicas if p.replicas is not None else None
            if replicas is None:
                return ActionResult(False, "swarm services scale to an absolute replicas count")
            await self.docker.scale_service(swarm, replicas)
            return ActionResult(
                True, f"swarm service {swarm} set to {replicas} replicas", None, True
            )
        project, service = info.compose_project, info.compose_service
        if not project or not service:
            return ActionResult(False, "not a compose or swarm service: cannot scale")
        labels = {COMPOSE_PROJECT: project, COMPOSE_SERVICE: service}
        members = await self.docker.list_by_labels(labels, all=False)
        current = len(members)
        desired = p.replicas if p.replicas is not None else current + (p.delta or 0)
        desired = max(0, min(MAX_REPLICAS, desired))
        if desired > current:
            template = await self.docker.inspect_raw(info.id)
            numbers = [int(m["Labels"].get(COMPOSE_NUMBER, "0") or 0) for m in members]
            next_number = max(numbers, default=0) + 1
            for n in range(next_number, next_number + desired - current):
                new_labels = dict(template["Config"].get("Labels") or {}) | {COMPOSE_NUMBER: str(n)}
                await self.docker.clone(template, f"{project}-{service}-{n}", new_labels)
        elif desired < current:
            by_number = sorted(
                members, key=lambda m: int(m["Labels"].get(COMPOSE_NUMBER, "0") or 0), reverse=True
            )
            for member in by_number[: current - desired]:
                await self.docker.stop(member["Id"], 10)
                await self.docker.remove(member["Id"])
        return await self._verify_count(labels, desired, action.verify.timeout_s, current)

    async def _verify_count(
        self, labels: dict[str, str], desired: int, timeout_s: float, before: int
    ) -> ActionResult:
        deadline = time.monotonic() + timeout_s
        running = before
        while time.monotonic() < deadline:
            running = len(await self.docker.list_by_labels(labels, all=False))
            if running == desired:
                return ActionResult(True, f"scaled from {before} to {desired} running", None, True)
            await asyncio.sleep(self.poll_s)
        return ActionResult(False, f"wanted {desired} running, have {running}", None, False)

    # ------------------------------------------------------------------ cleanup

    async def _cleanup(self, action: CleanupAction, info: ContainerInfo) -> ActionResult:
        p = action.params
        if p.scope == "service":
            if not info.compose_project or not info.compose_service:
                return ActionResult(False, "not a compose service: use scope image")
            labels = {COMPOSE_PROJECT: info.compose_project, COMPOSE_SERVICE: info.compose_service}
            candidates = await self.docker.list_by_labels(labels, all=True)
        else:
            candidates = await self.docker.list_by_image(info.image)
        removable = [
            c
            for c in candidates
            if c.get("State") in ("exited", "dead", "created")
            and c["Id"] != info.id
            and (c.get("Labels") or {}).get(LABEL_PROTECT, "").lower() != "true"
            and (c.get("Labels") or {}).get(LABEL_STACK, "").lower() != "true"
        ]
        removed = []
        for container in removable:
            try:
                await self.docker.remove(container["Id"], volumes=p.remove_volumes)
                removed.append(container["Id"][:12])
            except ContainerNotFound:
                continue
        volumes = " and their anonymous volumes" if p.remove_volumes else " (volumes kept)"
        detail = f"removed {len(removed)} exited container(s){volumes}"
        return ActionResult(True, detail, ", ".join(removed) or None, True)

    # ------------------------------------------------------------------ verify

    async def verify(
        self, action: Action, info: ContainerInfo, since: float | None = None
    ) -> tuple[bool, str]:
        """Running (and healthy when it has a health check) within the window — or, for stop,
        not running. A container that started after `since` and died again fails at once."""
        deadline = time.monotonic() + action.verify.timeout_s
        want_running = not isinstance(action, StopAction)
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                current = await self.docker.inspect(info.id)
            except ContainerNotFound:
                return False, "the container disappeared"
            except DockerError as exc:
                last = {"error": str(exc)}
                await asyncio.sleep(self.poll_s)
                continue
            last = {"state": current.state, "health": current.health}
            if want_running and not current.running and since is not None:
                started = current.started_at.timestamp() if current.started_at else 0.0
                finished = current.finished_at.timestamp() if current.finished_at else 0.0
                if started >= since - 1 and finished >= started:
                    return False, (
                        f"died again {finished - started:.1f}s after starting "
                        f"(exit code {current.exit_code})"
                    )
            if not want_running:
                if not current.running:
                    return True, "verified stopped"
            elif current.running:
                if current.health is not None and action.verify.require_healthy:
                    if current.health == "healthy":
                        return True, "verified running and healthy"
                elif current.started_at is not None:
                    up = time.time() - current.started_at.timestamp()
                    if up >= self.stable_s:
                        return True, f"verified running for {up:.1f}s"
            await asyncio.sleep(self.poll_s)
        return False, f"not verified within {action.verify.timeout_s:.0f}s (last: {last})"

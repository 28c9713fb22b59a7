"""Issuing the closed set of actions against the Docker API, and observing their effect.

Nothing here decides whether to act (that is `core.evaluate`); it only knows how. Actions whose
effect takes time (restart, stop, start, scale) return at once and are verified later by the
Responder's scheduled verification, so no worker waits on a container's health check. Exec and
cleanup have their result when the call returns.

Cleanup and scale select sibling containers; each sibling passes the same target policy as the
request's own target (`allowed`), so an action never reaches a container the policy forbids.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agents.responder.core import Observation, VerifyPlan, action_budget_s
from shared.actions import (
    Action,
    CleanupAction,
    ExecAction,
    RestartAction,
    ScaleAction,
    StartAction,
    StopAction,
)
from shared.containers import COMPOSE_PROJECT, COMPOSE_SERVICE, SWARM_SERVICE, ContainerInfo
from shared.docker_api import DockerGateway
from shared.errors import ContainerNotFound, DockerError
from shared.redaction import Redactor

__all__ = ["COMPOSE_NUMBER", "Executor", "Issued", "Prepared"]

COMPOSE_NUMBER = "com.docker.compose.container-number"
MAX_REPLICAS = 20
Allowed = Callable[[Mapping[str, str]], bool]


@dataclass(frozen=True)
class Prepared:
    """What the action will do, fixed before it is booked: the plan its verification follows."""

    plan: VerifyPlan | None  # None only with a problem
    detail: str = ""
    problem: str | None = None  # it cannot be done at all (e.g. scale outside compose/swarm)


@dataclass(frozen=True)
class Issued:
    ok: bool
    detail: str
    output: str | None = None
    final: bool = False  # True: no verification follows (exec, cleanup, or the call failed)
    verified: bool | None = None


class Executor:
    def __init__(self, docker: DockerGateway, redactor: Redactor, *, output_limit: int = 4000):
        self.docker = docker
        self.redactor = redactor
        self.output_limit = output_limit

    # ------------------------------------------------------------------ before booking

    async def prepare(
        self, action: Action, info: ContainerInfo, now: float, allowed: Allowed
    ) -> Prepared:
        started = info.started_at.timestamp() if info.started_at else None
        deadline = now + action_budget_s(action) + action.verify.timeout_s
        if isinstance(action, ScaleAction):
            return await self._prepare_scale(action, info, deadline, allowed)
        if isinstance(action, ExecAction | CleanupAction) or not action.verify.enabled:
            # The result comes with the call; the plan only finishes it if this replica stops.
            return Prepared(VerifyPlan(want="result", container_id=info.id, deadline=deadline))
        want = "stopped" if isinstance(action, StopAction) else "running"
        return Prepared(
            plan=VerifyPlan(
                want=want,
                container_id=info.id,
                require_healthy=action.verify.require_healthy,
                started_before=started,
                deadline=deadline,
            )
        )

    async def _prepare_scale(
        self, action: ScaleAction, info: ContainerInfo, deadline: float, allowed: Allowed
    ) -> Prepared:
        p = action.params
        swarm = info.labels.get(SWARM_SERVICE)
        if swarm:
            if p.replicas is None:
                return Prepared(None, problem="swarm services scale to an absolute replicas count")
            plan = VerifyPlan(want="result", container_id=info.id, deadline=deadline)
            return Prepared(plan, detail=f"swarm service {swarm} to {p.replicas} replicas")
        project, service = info.compose_project, info.compose_service
        if not project or not service:
            return Prepared(None, problem="not a compose or swarm service: cannot scale")
        labels = {COMPOSE_PROJECT: project, COMPOSE_SERVICE: service}
        members = await self.docker.list_by_labels(labels, all=False)
        current = len(members)
        desired = p.replicas if p.replicas is not None else current + (p.delta or 0)
        desired = max(0, min(MAX_REPLICAS, desired))
        if desired < current:
            removable = [m for m in members if allowed(m.get("Labels") or {})]
            if len(removable) < current - desired:
                return Prepared(
                    None,
                    problem=f"scaling {service} to {desired} would remove members the target "
                    f"policy forbids (only {len(removable)} of {current} may be touched)",
                )
        plan = VerifyPlan(
            want="count",
            container_id=info.id,
            desired=desired,
            labels=labels,
            deadline=deadline,
        )
        return Prepared(plan, detail=f"{service} from {current} to {desired}")

    # ------------------------------------------------------------------ acting

    async def issue(
        self, action: Action, info: ContainerInfo, prepared: Prepared, allowed: Allowed
    ) -> Issued:
        try:
            return await self._issue(action, info, prepared, allowed)
        except ContainerNotFound as exc:
            return Issued(False, f"target vanished: {exc}", final=True)
        except DockerError as exc:
            return Issued(False, f"Docker refused: {exc}", final=True)

    async def _issue(
        self, action: Action, info: ContainerInfo, prepared: Prepared, allowed: Allowed
    ) -> Issued:
        if isinstance(action, RestartAction):
            await self.docker.restart(info.id, action.params.stop_timeout_s)
            return Issued(True, "restart issued")
        if isinstance(action, StopAction):
            await self.docker.stop(info.id, action.params.timeout_s)
            return Issued(True, "stop issued")
        if isinstance(action, StartAction):
            await self.docker.start(info.id)
            return Issued(True, "start issued")
        if isinstance(action, ExecAction):
            return await self._exec(action, info)
        if isinstance(action, ScaleAction):
            return await self._scale(action, info, prepared, allowed)
        if isinstance(action, CleanupAction):
            return await self._cleanup(action, info, allowed)
        return Issued(True, "nothing to do", final=True)

    async def _exec(self, action: ExecAction, info: ContainerInfo) -> Issued:
        p = action.params
        code, raw = await self.docker.exec(info.id, p.argv, p.user, p.timeout_s)
        text = self._clip(info, raw)
        if code is None:
            return Issued(False, f"exec timed out after {p.timeout_s:.0f}s", text, True, False)
        ok = code == 0
        return Issued(ok, f"exec exited with {code}", text, True, ok)

    def _clip(self, info: ContainerInfo, raw: bytes) -> str:
        # Redact the whole output first, then cut: a secret is never split before masking.
        text = self.redactor.scoped(info.secret_values).text(raw.decode("utf-8", errors="replace"))
        if len(text) > self.output_limit:
            text = text[-self.output_limit :] + f"\n[truncated to the last {self.output_limit}]"
        return text

    async def _scale(
        self, action: ScaleAction, info: ContainerInfo, prepared: Prepared, allowed: Allowed
    ) -> Issued:
        swarm = info.labels.get(SWARM_SERVICE)
        if swarm:
            replicas = action.params.replicas
            assert replicas is not None  # prepare() refused otherwise
            await self.docker.scale_service(swarm, replicas)
            return Issued(
                True, f"swarm service {swarm} set to {replicas} replicas", None, True, True
            )
        plan = prepared.plan
        assert plan is not None
        assert plan.desired is not None
        members = await self.docker.list_by_labels(plan.labels, all=False)
        current, desired = len(members), plan.desired
        if desired > current:
            template = await self.docker.inspect_raw(info.id)
            numbers = [_number(m) for m in members]
            start = max(numbers, default=0) + 1
            project, service = plan.labels[COMPOSE_PROJECT], plan.labels[COMPOSE_SERVICE]
            for n in range(start, start + desired - current):
                labels = dict(template["Config"].get("Labels") or {}) | {COMPOSE_NUMBER: str(n)}
                await self.docker.clone(template, f"{project}-{service}-{n}", labels)
            return Issued(True, f"started {desired - current} member(s) of {service}")
        removable = sorted(
            (m for m in members if allowed(m.get("Labels") or {})), key=_number, reverse=True
        )
        gone = removable[: current - desired]
        for member in gone:
            await self.docker.stop(member["Id"], 10)
            await self.docker.remove(member["Id"])
        return Issued(True, f"stopped and removed {len(gone)} member(s)")

    async def _cleanup(
        self, action: CleanupAction, info: ContainerInfo, allowed: Allowed
    ) -> Issued:
        p = action.params
        if p.scope == "service":
            if not info.compose_project or not info.compose_service:
                return Issued(False, "not a compose service: use scope image", final=True)
            labels = {COMPOSE_PROJECT: info.compose_project, COMPOSE_SERVICE: info.compose_service}
            candidates = await self.docker.list_by_labels(labels, all=True)
        else:
            candidates = await self.docker.list_by_image(info.image)
        removable = [
            c
            for c in candidates
            if c.get("State") in ("exited", "dead", "created")
            and c["Id"] != info.id
            and allowed(c.get("Labels") or {})
        ]
        removed = []
        for container in removable:
            try:
                await self.docker.remove(container["Id"], volumes=p.remove_volumes)
                removed.append(container["Id"][:12])
            except ContainerNotFound:
                continue
        skipped = len([c for c in candidates if c["Id"] != info.id]) - len(removable)
        volumes = " and their anonymous volumes" if p.remove_volumes else " (volumes kept)"
        detail = f"removed {len(removed)} exited container(s){volumes}"
        if skipped:
            detail += (
                f"; {skipped} other(s) left alone (running, or not allowed by the target policy)"
            )
        return Issued(True, detail, ", ".join(removed) or None, True, True)

    # ------------------------------------------------------------------ verifying

    async def observe(self, plan: VerifyPlan, issued: bool) -> Observation:
        try:
            if plan.want == "count":
                members = await self.docker.list_by_labels(plan.labels, all=False)
                return Observation(count=len(members), issued=issued)
            current = await self.docker.inspect(plan.container_id)
        except ContainerNotFound:
            return Observation(exists=False, issued=issued)
        except DockerError as exc:
            return Observation(error=str(exc), issued=issued)
        return Observation(
            running=current.running,
            health=current.health,
            started_at=current.started_at.timestamp() if current.started_at else None,
            finished_at=current.finished_at.timestamp() if current.finished_at else None,
            exit_code=current.exit_code,
            issued=issued,
        )


def _number(member: Mapping[str, Any]) -> int:
    try:
        return int((member.get("Labels") or {}).get(COMPOSE_NUMBER, "0") or 0)
    except ValueError:
        return 0

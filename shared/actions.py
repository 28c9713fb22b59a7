"""The closed set of remediation actions, typed. Runbooks declare them; the Analyzer picks one;
the Responder executes only these. There is no free-form action and no free-text command."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, model_validator

from shared.model import Model

__all__ = [
    "Action",
    "ActionGuards",
    "ActionType",
    "Approval",
    "CleanupAction",
    "CleanupParams",
    "ExecAction",
    "ExecParams",
    "NoParams",
    "NoneAction",
    "RestartAction",
    "RestartParams",
    "Risk",
    "ScaleAction",
    "ScaleParams",
    "StartAction",
    "StopAction",
    "StopParams",
    "Verify",
]


class ActionType(StrEnum):
    RESTART = "restart"
    STOP = "stop"
    START = "start"
    SCALE = "scale"
    CLEANUP = "cleanup"
    EXEC = "exec"
    NONE = "none"


class Risk(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class ActionGuards(Model):
    """Per-action overrides of the Responder's defaults."""

    cooldown_s: float | None = Field(default=None, ge=0)
    max_attempts: int | None = Field(default=None, ge=1, description="per window_s")
    window_s: float | None = Field(default=None, gt=0)


class Approval(Model):
    required: bool = False
    timeout_s: float = Field(default=900.0, gt=0, description="silence means no action")


class Verify(Model):
    enabled: bool = True
    timeout_s: float = Field(default=60.0, gt=0)
    require_healthy: bool = Field(
        default=True, description="also wait for `healthy` when the container has a health check"
    )


class NoParams(Model):
    pass


class RestartParams(Model):
    stop_timeout_s: int = Field(default=10, ge=0, le=600)


class StopParams(Model):
    timeout_s: int = Field(default=10, ge=0, le=600)


class ScaleParams(Model):
    replicas: int | None = Field(default=None, ge=0, le=100)
    delta: int | None = Field(default=None, ge=-10, le=10)

    @model_validator(mode="after")
    def _exactly_one(self) -> ScaleParams:
        if (self.replicas is None) == (self.delta is None):
            raise ValueError("give exactly one of replicas or delta")
        return self


class CleanupParams(Model):
    scope: Literal["service", "image"] = "service"
    remove_volumes: bool = Field(default=False, description="only when a runbook says so")


class ExecParams(Model):
    argv: list[str] = Field(min_length=1, description="exact argv; never built from LLM text")
    timeout_s: float = Field(default=30.0, gt=0, le=600)
    user: str | None = None


class _ActionBase(Model):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    description: str = ""
    risk: Risk = Risk.LOW
    guards: ActionGuards = ActionGuards()
    approval: Approval = Approval()
    verify: Verify = Verify()


class RestartAction(_ActionBase):
    type: Literal["restart"] = "restart"
    params: RestartParams = RestartParams()


class StopAction(_ActionBase):
    type: Literal["stop"] = "stop"
    params: StopParams = StopParams()


class StartAction(_ActionBase):
    type: Literal["start"] = "start"
    params: NoParams = NoParams()


class ScaleAction(_ActionBase):
    type: Literal["scale"] = "scale"
    params: ScaleParams


class CleanupAction(_ActionBase):
    type: Literal["cleanup"] = "cleanup"
    params: CleanupParams = CleanupParams()


class ExecAction(_ActionBase):
    type: Literal["exec"] = "exec"
    params: ExecParams


class NoneAction(_ActionBase):
    """Notify only: nothing is changed."""

    type: Literal["none"] = "none"
    params: NoParams = NoParams()
    verify: Verify = Verify(enabled=False)


Action = Annotated[
    RestartAction
    | StopAction
    | StartAction
    | ScaleAction
    | CleanupAction
    | ExecAction
    | NoneAction,
    Field(discriminator="type"),
]

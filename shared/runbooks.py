"""Runbooks as code: YAML files validated at load into typed models.

A runbook says which alerts it is for (`match`), what may be looked at (`diagnostics`, read-only),
what may be done (`actions`, from the closed set in shared/actions.py, each with its guards,
approval and verification), which action the deterministic rules take (`default_action`, and
`escalate_action` for a problem that keeps coming back), and free-text `analysis` guidance that is
only ever context for the LLM. The Analyzer picks among a runbook's actions; the Responder checks
every request against the same files before acting.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from shared.actions import Action, ActionType, NoneAction
from shared.errors import RunbookError
from shared.events import AlertKind, HealthAlertEvent, Severity
from shared.model import Model

__all__ = [
    "ID_PATTERN",
    "NOTIFY_ONLY",
    "Diagnostic",
    "InspectDiagnostic",
    "LogsDiagnostic",
    "Match",
    "Notify",
    "PromQLDiagnostic",
    "Runbook",
    "Runbooks",
    "load_runbook",
    "load_runbooks",
]

ID_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"


class Match(Model):
    kinds: list[AlertKind] = []
    alertnames: list[str] = Field(default=[], description="Alertmanager alertnames (external)")
    min_severity: Severity = Severity.INFO
    labels: dict[str, str] = Field(
        default={}, description="every one must equal the alert's (container or Alertmanager) label"
    )

    @model_validator(mode="after")
    def _something_to_match(self) -> Match:
        if not self.kinds and not self.alertnames:
            raise ValueError("give at least one of kinds or alertnames")
        return self


class InspectDiagnostic(Model):
    type: Literal["inspect"] = "inspect"
    fields: list[str] = Field(min_length=1, description="dotted paths into `docker inspect`")


class LogsDiagnostic(Model):
    type: Literal["logs"] = "logs"
    tail: int = Field(default=50, ge=1, le=1000)


class PromQLDiagnostic(Model):
    type: Literal["promql"] = "promql"
    name: str = Field(pattern=ID_PATTERN)
    query: str = Field(min_length=1, description="{container}, {service}, {host} are substituted")


Diagnostic = Annotated[
    InspectDiagnostic | LogsDiagnostic | PromQLDiagnostic, Field(discriminator="type")
]


class Notify(Model):
    channels: list[Literal["slack", "discord", "ntfy", "apprise"]] = Field(
        default=[], description="empty: the routing configured in settings"
    )
    storm: bool = Field(
        default=True,
        description="false: this runbook's failures are always told one by one, never bundled "
        "into a storm message",
    )


class Runbook(Model):
    id: str = Field(pattern=ID_PATTERN)
    version: int = Field(ge=1)
    description: str = ""
    priority: int = Field(default=0, description="when several runbooks match, highest wins")
    match: Match
    diagnostics: list[Diagnostic] = []
    actions: list[Action] = Field(min_length=1)
    default_action: str
    escalate_action: str | None = None
    analysis: str = Field(default="", description="guidance for the LLM; context only")
    notify: Notify = Notify()

    @model_validator(mode="after")
    def _actions_consistent(self) -> Runbook:
        ids = [a.id for a in self.actions]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"duplicate action ids: {', '.join(duplicates)}")
        for field_name in ("default_action", "escalate_action"):
            chosen = getattr(self, field_name)
            if chosen is not None and chosen not in ids:
                raise ValueError(f"{field_name} {chosen!r} is not one of the actions: {ids}")
        return self

    def action(self, action_id: str) -> Action | None:
        return next((a for a in self.actions if a.id == action_id), None)

    def notify_action(self) -> Action:
        """The runbook's notify-only action, or a built-in one."""
        found = next((a for a in self.actions if a.type == "none"), None)
        return found or NoneAction(id="notify", description="notify people; change nothing")

    def matches(self, alert: HealthAlertEvent) -> bool:
        payload = alert.payload
        if alert.severity.rank < self.match.min_severity.rank:
            return False
        kind_ok = payload.kind in self.match.kinds
        name_ok = payload.alertname is not None and payload.alertname in self.match.alertnames
        if not (kind_ok or name_ok):
            return False
        labels = payload.labels
        return all(labels.get(key) == value for key, value in self.match.labels.items())

    def specificity(self) -> tuple[int, int, int]:
        return (self.priority, len(self.match.labels), len(self.match.alertnames))


# Used when no runbook matches: tell people, change nothing.
NOTIFY_ONLY = Runbook(
    id="builtin-notify-only",
    version=1,
    description="No runbook matched: notify only.",
    priority=-1000,
    match=Match(kinds=list(AlertKind)),
    actions=[NoneAction(id="notify", description="notify people; change nothing")],
    default_action="notify",
)


class Runbooks:
    """A validated set of runbooks, searchable by alert."""

    def __init__(self, runbooks: Iterable[Runbook], source: str = "") -> None:
        self.items = sorted(runbooks, key=lambda r: (-r.priority, r.id))
        self.source = source
        self._by_id = {r.id: r for r in self.items}
        self._by_id[NOTIFY_ONLY.id] = NOTIFY_ONLY

    def __len__(self) -> int:
        return len(self.items)

    def get(self, runbook_id: str) -> Runbook | None:
        return self._by_id.get(runbook_id)

    def match(self, alert: HealthAlertEvent) -> Runbook:
        """The most specific matching runbook; the built-in notify-only one when none matches."""
        candidates = [r for r in self.items if r.matches(alert)]
        if not candidates:
            return NOTIFY_ONLY
        return max(candidates, key=lambda r: (*r.specificity(), r.id))


def _field_path(loc: tuple[int | str, ...], data: object) -> str:
    """`actions[1].params.argv` rather than pydantic's union-tagged `actions.1.exec.params.argv`."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
            node = node[item] if isinstance(node, list) and item < len(node) else None
        elif isinstance(node, dict) and item in node:
            parts.append(f".{item}" if parts else item)
            node = node[item]
        elif isinstance(node, dict):
            # A union tag (e.g. "restart") pydantic inserted, or a missing field.
            if item in {a.value for a in ActionType} | {"inspect", "logs", "promql"}:
                continue
            parts.append(f".{item}" if parts else item)
            node = None
        else:
            parts.append(f".{item}" if parts else str(item))
    return "".join(parts) or "<root>"


def load_runbook(path: Path) -> Runbook:
    """One runbook file; every problem is a RunbookError naming the file, the field, the reason."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RunbookError(f"{path}: cannot read: {exc}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RunbookError(f"{path}:{where}: invalid YAML: {problem}") from exc
    if not isinstance(data, dict):
        raise RunbookError(
            f"{path}: <root>: a runbook must be a mapping, got {type(data).__name__}"
        )
    try:
        return Runbook.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = _field_path(tuple(err["loc"]), data)
            problems.append(f"{path}: {field}: {err['msg']}")
        raise RunbookError("\n".join(problems)) from exc


def load_runbooks(folder: Path) -> Runbooks:
    """Every `*.yaml`/`*.yml` in the folder; all files' problems are reported together."""
    if not folder.is_dir():
        raise RunbookError(f"{folder}: runbook folder does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml"))
    loaded: list[Runbook] = []
    errors: list[str] = []
    seen: dict[str, Path] = {}
    for path in files:
        try:
            runbook = load_runbook(path)
        except RunbookError as exc:
            errors.append(str(exc))
            continue
        if runbook.id in seen:
            errors.append(f"{path}: id: {runbook.id!r} is already defined in {seen[runbook.id]}")
            continue
        seen[runbook.id] = path
        loaded.append(runbook)
    if errors:
        raise RunbookError("\n".join(errors))
    return Runbooks(loaded, source=str(folder))

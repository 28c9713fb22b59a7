"""The Responder's decision core: pure functions of (request, runbook action, facts, now, limits).

No I/O and no clock: the agent gathers facts (the request's claim, the runbook's copy of the
action, the target's labels and state, guard state read from Redis while holding the lease),
calls `evaluate()`, then acts and books. The guards apply in this order and the first that holds
ends the request:

    idempotency → approval_binding → stale → action_policy → target_policy → lease → cooldown
    → circuit_breaker → crash_loop → approval (and its fatigue rules) → dry_run

An approved proposal runs only if what was approved is what would run: `approval_binding` compares
a hash of runbook id and version, action and parameters, and target with the proposal's. Before
asking people, the fatigue rules (`fatigue()`) say whether they have already answered.

Guard state is stored as values compared with `now` ("until" timestamps and history lists), so
every edge is tested with a manual clock. `judge()` decides a scheduled verification the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from enum import StrEnum

from pydantic import Field

from shared.actions import (
    Action,
    ActionType,
    ExecAction,
    RestartAction,
    ScaleAction,
    StopAction,
)
from shared.audit import GuardResult
from shared.containers import LABEL_PROTECT, LABEL_REMEDIATE, LABEL_STACK, matches_label
from shared.events import AlertKind, RemediationNeededEvent, Severity
from shared.model import Model
from shared.settings import RemediationScope, Settings

__all__ = [
    "GUARD_ORDER",
    "LABEL_AUTOHEAL_STOP_TIMEOUT",
    "Binding",
    "Claim",
    "ClaimStatus",
    "Facts",
    "FatigueFacts",
    "GuardFacts",
    "Judgement",
    "Observation",
    "ResponderLimits",
    "TargetFacts",
    "TargetVerdict",
    "Verdict",
    "VerdictKind",
    "VerifyPlan",
    "action_budget_s",
    "actions_in_window",
    "admit",
    "after_outcome",
    "autoheal_opted_in",
    "circuit_open",
    "cooldown_seconds",
    "detected_at",
    "evaluate",
    "fatigue",
    "judge",
    "quick_deaths_after_restarts",
    "target_policy",
    "with_container_overrides",
]

GUARD_ORDER = (
    "idempotency",
    "approval_binding",
    "stale",
    "action_policy",
    "target_policy",
    "lease",
    "cooldown",
    "circuit_breaker",
    "crash_loop",
    "approval",
    "dry_run",
)
RESTARTING = (ActionType.RESTART, ActionType.START)


class ResponderLimits(Model):
    """What the core needs from the settings, and nothing else."""

    dry_run: bool = True
    scope: RemediationScope = RemediationScope.OPT_IN
    cooldown_s: float = 300.0
    cooldown_max_s: float = 3600.0
    circuit_max_actions: int = 3
    circuit_window_s: float = 3600.0
    crash_loop_limit: int = 2
    crash_loop_window_s: float = 120.0
    max_request_age_s: float = 600.0
    verify_stable_s: float = 3.0
    lease_ttl_s: float = 30.0
    approval_execution_deadline_s: float = 300.0
    watch_label: str | None = None
    # Approval fatigue: how long after an unanswered or denied proposal the same action on the
    # same container is not proposed again, by the request's severity; expiries per incident.
    repropose_cooldown_s: dict[Severity, float] = Field(
        default_factory=lambda: {
            Severity.CRITICAL: 1800.0,
            Severity.WARNING: 7200.0,
            Severity.INFO: 14400.0,
        }
    )
    approval_max_expiries: int = 2
    autoheal_label: str = ""  # docker-autoheal's opt-in label ("" off, "all" every container)

    @classmethod
    def from_settings(cls, s: Settings) -> ResponderLimits:
        return cls(
            dry_run=s.dry_run,
            scope=s.remediation_scope,
            cooldown_s=s.responder_cooldown_s,
            cooldown_max_s=s.responder_cooldown_max_s,
            circuit_max_actions=s.responder_circuit_max_actions,
            circuit_window_s=s.responder_circuit_window_s,
            crash_loop_limit=s.responder_crash_loop_limit,
            crash_loop_window_s=s.responder_crash_loop_window_s,
            max_request_age_s=s.responder_max_request_age_s,
            verify_stable_s=s.responder_verify_stable_s,
            lease_ttl_s=s.responder_lease_ttl_s,
            approval_execution_deadline_s=s.responder_approval_execution_deadline_s,
            watch_label=s.watch_label,
            repropose_cooldown_s={
                Severity.CRITICAL: s.approval_cooldown_critical_s,
                Severity.WARNING: s.approval_cooldown_warning_s,
                Severity.INFO: s.approval_cooldown_info_s,
            },
            approval_max_expiries=s.approval_max_expiries,
            autoheal_label=s.autoheal_container_label.strip(),
        )

    def cooldown_base(self, action: Action) -> float:
        return action.guards.cooldown_s if action.guards.cooldown_s is not None else self.cooldown_s

    def circuit(self, action: Action) -> tuple[float, int]:
        window = action.guards.window_s or self.circuit_window_s
        return window, action.guards.max_attempts or self.circuit_max_actions

    def history_horizon(self, action: Action) -> float:
        """How far back the breaker and the crash-loop guard look."""
        window, _ = self.circuit(action)
        return max(window, self.crash_loop_window_s * 10)


# ---------------------------------------------------------------- facts


class ClaimStatus(StrEnum):
    NEW = "new"  # first delivery of this idempotency key: ours
    REDELIVERED = "redelivered"  # the same stream entry again: its last holder stopped
    TWIN = "twin"  # another entry with the same key is being handled elsewhere
    DONE = "done"  # already finished: at most re-publish its outcome


class Claim(Model):
    status: ClaimStatus
    phase: str = ""  # received | executing | done, as the record says
    holder: str = ""


class TargetFacts(Model):
    id: str
    name: str
    labels: dict[str, str] = Field(default_factory=dict)
    is_own: bool = False  # the Responder's own container


class GuardFacts(Model):
    """Guard state as read while holding the lease (all times are unix seconds)."""

    lease_acquired: bool
    lease_holder: str | None = None
    cooldown_until: float = 0.0
    failures: int = 0
    action_times: tuple[float, ...] = ()
    restart_times: tuple[float, ...] = ()
    death_times: tuple[float, ...] = ()
    escalated_until: dict[str, float] = Field(default_factory=dict)


class FatigueFacts(Model):
    """What people already answered about proposing this action for this container."""

    pending: str | None = None  # a proposal for it still waiting for an answer
    denied_by: str | None = None  # someone denied it in this incident
    expired: int = 0  # proposals for it that expired unanswered in this incident
    last_unanswered_at: float | None = None  # the last expiry or denial, any incident


class Binding(Model):
    """What an approval is for. Any difference between approval and execution blocks it."""

    runbook_id: str
    runbook_version: int | None
    action: str  # the action with its parameters, as canonical JSON
    target_id: str | None

    @classmethod
    def of(
        cls, runbook_id: str, version: int | None, action: Action | None, target_id: str | None
    ) -> Binding:
        dumped = (
            json.dumps(action.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
            if action is not None
            else "(not in the runbook)"
        )
        return cls(
            runbook_id=runbook_id, runbook_version=version, action=dumped, target_id=target_id
        )

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()

    def changes(self, now: Binding) -> list[str]:
        said = []
        if (self.runbook_id, self.runbook_version) != (now.runbook_id, now.runbook_version):
            said.append(
                f"runbook {self.runbook_id} v{self.runbook_version} is now "
                f"{now.runbook_id} v{now.runbook_version}"
            )
        if self.action != now.action:
            said.append("the action or its parameters changed")
        if self.target_id != now.target_id:
            was, is_ = (self.target_id or "none")[:12], (now.target_id or "gone")[:12]
            said.append(f"the target is another container ({was} then, {is_} now)")
        return said


class Facts(Model):
    claim: Claim
    approved: bool = False  # executing a proposal a person approved
    runbook_known: bool
    target: TargetFacts | None  # None: the container does not exist
    guard: GuardFacts | None = None  # None when there is no target
    fatigue: FatigueFacts = Field(default_factory=FatigueFacts)
    runbook_version: int | None = None  # the runbook as loaded now
    approved_binding: Binding | None = None  # what the person approved (None: not bound)


class VerdictKind(StrEnum):
    DUPLICATE = "duplicate"  # already done: re-publish its outcome if it never went out
    TWIN = "twin"  # the other delivery carries it: do nothing, say nothing
    FOLLOW_UP = "follow_up"  # an action is in flight: its scheduled verification carries it
    DEFER = "defer"  # another action holds the container: decide again once it is over
    NOTIFY = "notify"  # notify-only request
    REJECT = "reject"
    PROPOSE = "propose"
    SUPPRESS = "suppress"  # would propose, but people already answered (fatigue rules)
    BLOCK = "block"  # approved, but what was approved changed: not run
    DRY_RUN = "dry_run"
    ACT = "act"


class Verdict(Model):
    kind: VerdictKind
    guard: str | None = None  # the guard that held (REJECT)
    reason: str = ""
    guards: tuple[GuardResult, ...] = ()
    escalate: bool = False  # tell people once per window (breaker, crash loop)
    escalate_until: float | None = None


# ---------------------------------------------------------------- pure guard maths


def cooldown_seconds(base_s: float, failures: int, cap_s: float) -> float:
    """The cooldown after an action: doubles with each consecutive failure, capped."""
    return min(cap_s, base_s * (2 ** max(0, failures))) if base_s else 0.0


def actions_in_window(times: Sequence[float], now: float, window_s: float) -> int:
    return sum(1 for t in times if 0 <= now - t <= window_s)


def circuit_open(times: Sequence[float], now: float, window_s: float, max_actions: int) -> bool:
    """At most `max_actions` per container per window."""
    return actions_in_window(times, now, window_s) >= max_actions


def quick_deaths_after_restarts(
    restarts: Sequence[float], deaths: Sequence[float], window_s: float
) -> int:
    """How many of our restarts were followed by a death within `window_s`."""
    ordered = sorted(deaths)
    return sum(1 for r in restarts if any(r < d <= r + window_s for d in ordered))


class TargetVerdict(Model):
    allowed: bool
    detail: str


def _true(labels: Mapping[str, str], key: str) -> bool:
    return labels.get(key, "").strip().lower() in ("1", "true", "yes", "on")


LABEL_AUTOHEAL_STOP_TIMEOUT = "autoheal.stop.timeout"


def autoheal_opted_in(labels: Mapping[str, str], autoheal_label: str) -> bool:
    """docker-autoheal's opt-in, read as autoheal reads it: the label set to true, or `all`."""
    if not autoheal_label:
        return False
    return autoheal_label == "all" or _true(labels, autoheal_label)


def with_container_overrides(action: Action, labels: Mapping[str, str]) -> Action:
    """The action as this container asks for it: `autoheal.stop.timeout` sets a restart's stop
    timeout (seconds, 0 to 600; anything else is ignored)."""
    raw = labels.get(LABEL_AUTOHEAL_STOP_TIMEOUT)
    if not isinstance(action, RestartAction) or raw is None:
        return action
    try:
        seconds = int(raw.strip())
    except ValueError:
        return action
    if not 0 <= seconds <= 600 or seconds == action.params.stop_timeout_s:
        return action
    params = action.params.model_copy(update={"stop_timeout_s": seconds})
    return action.model_copy(update={"params": params})


def target_policy(
    labels: Mapping[str, str],
    scope: RemediationScope,
    *,
    is_own: bool = False,
    watch_label: str | None = None,
    autoheal_label: str = "",
    unhealthy_restart: bool = False,
) -> TargetVerdict:
    """Never HemoStat's own containers or protected ones; opted-in ones only unless scope=all;
    nothing outside this HemoStat's `watch_label`. Applies to the request's target and to every
    sibling an action selects (cleanup, scale). docker-autoheal's label opts a container in to
    one thing only: a restart when it is unhealthy (`unhealthy_restart`), unless
    hemostat.remediate=false says otherwise."""
    if not matches_label(labels, watch_label):
        return TargetVerdict(
            allowed=False, detail=f"outside this HemoStat's scope (watch label {watch_label})"
        )
    if is_own:
        return TargetVerdict(allowed=False, detail="this is the Responder's own container")
    if _true(labels, LABEL_STACK):
        return TargetVerdict(
            allowed=False, detail="HemoStat's own containers are never touched (hemostat.stack)"
        )
    if _true(labels, LABEL_PROTECT):
        return TargetVerdict(allowed=False, detail="container is protected (hemostat.protect=true)")
    if scope is RemediationScope.OPT_IN and not _true(labels, LABEL_REMEDIATE):
        explicit_no = labels.get(LABEL_REMEDIATE, "").strip().lower() in ("0", "false", "no", "off")
        if unhealthy_restart and not explicit_no and autoheal_opted_in(labels, autoheal_label):
            how = "every container" if autoheal_label == "all" else f"label {autoheal_label}=true"
            return TargetVerdict(
                allowed=True, detail=f"opted in to restart when unhealthy through autoheal ({how})"
            )
        return TargetVerdict(
            allowed=False,
            detail="container has not opted in (label hemostat.remediate=true; scope is opt_in)",
        )
    return TargetVerdict(allowed=True, detail=f"allowed (scope {scope})")


def action_budget_s(action: Action) -> float:
    """How long issuing the action may take before its verification window starts."""
    if isinstance(action, RestartAction):
        return action.params.stop_timeout_s + 30.0
    if isinstance(action, StopAction):
        return action.params.timeout_s + 30.0
    if isinstance(action, ExecAction):
        return action.params.timeout_s + 10.0
    if isinstance(action, ScaleAction):
        return 60.0
    return 30.0


def admit(claim: Claim) -> Verdict | None:
    """The idempotency guard on its own: None means "decide this request"."""
    if claim.status is ClaimStatus.DONE:
        return Verdict(kind=VerdictKind.DUPLICATE, guard="idempotency", reason="already done")
    if claim.status is ClaimStatus.TWIN:
        return Verdict(
            kind=VerdictKind.TWIN,
            guard="idempotency",
            reason=f"another delivery of this request is being handled by {claim.holder}",
        )
    if claim.phase == "executing":
        return Verdict(
            kind=VerdictKind.FOLLOW_UP,
            guard="idempotency",
            reason="the action was issued; its verification carries it",
        )
    return None


# ---------------------------------------------------------------- the decision


class _Checks:
    def __init__(self) -> None:
        self.results: list[GuardResult] = []

    def check(self, guard: str, passed: bool, detail: str) -> bool:
        self.results.append(GuardResult(guard=guard, passed=passed, detail=detail))
        return passed

    def verdict(self, kind: VerdictKind, **kw: object) -> Verdict:
        return Verdict(kind=kind, guards=tuple(self.results), **kw)


def _action_policy(request: RemediationNeededEvent, declared: Action | None, known: bool) -> str:
    p = request.payload
    if not known:
        return f"unknown runbook {p.runbook_id!r}"
    if declared is None:
        return f"action {p.action.id!r} is not in runbook {p.runbook_id}"
    if declared.type != p.action.type:
        return f"action {p.action.id!r} is a {declared.type} in the runbook, not {p.action.type}"
    if declared.params != p.action.params:
        if declared.type == "exec":
            return "exec argv is not the runbook's allowlisted argv"
        return f"parameters of {p.action.id!r} differ from the runbook's"
    return ""


def detected_at(request: RemediationNeededEvent) -> float:
    """When the failure was detected: the alert's own time, carried through the decision."""
    p = request.payload
    at = p.alert_detected_at or p.alert_occurred_at
    return at.timestamp()


def evaluate(
    request: RemediationNeededEvent,
    action: Action | None,
    facts: Facts,
    now: float,
    limits: ResponderLimits,
) -> Verdict:
    """Apply the guards in order to one request; `action` is the runbook's declared copy."""
    early = admit(facts.claim)
    if early is not None:
        return early
    c = _Checks()
    redelivered = facts.claim.status is ClaimStatus.REDELIVERED
    c.check(
        "idempotency",
        True,
        "a stopped replica's delivery, nothing was issued yet" if redelivered else "first delivery",
    )
    p = request.payload
    if p.action.type == "none":
        return c.verdict(VerdictKind.NOTIFY, reason=p.reason)

    if facts.approved and facts.approved_binding is not None:
        target_id = facts.target.id if facts.target else None
        now_bound = Binding.of(p.runbook_id, facts.runbook_version, action, target_id)
        changed = facts.approved_binding.changes(now_bound)
        if facts.approved_binding.digest != now_bound.digest:
            detail = "; ".join(changed) or "what was approved is not what would run"
            c.check("approval_binding", False, detail)
            return c.verdict(
                VerdictKind.BLOCK,
                guard="approval_binding",
                reason=f"not run: {detail} since the approval; propose it again if still needed",
            )
        c.check("approval_binding", True, "what was approved is what runs")

    if not facts.approved:
        age = now - detected_at(request)
        limit = limits.max_request_age_s
        detail = f"failure detected {age:.0f}s ago (limit {limit:.0f}s)"
        if not c.check("stale", age <= limit, detail):
            return c.verdict(
                VerdictKind.REJECT,
                guard="stale",
                reason=f"stale: the failure was detected {_ago(age)} ago (limit {_ago(limit)}); "
                "nothing was done — the situation may have changed, a person should look",
            )

    problem = _action_policy(request, action, facts.runbook_known)
    if not c.check("action_policy", not problem, problem or "matches the runbook"):
        return c.verdict(VerdictKind.REJECT, guard="action_policy", reason=problem)
    assert action is not None

    target = facts.target
    if target is None:
        c.check("target_policy", False, "container does not exist")
        name = request.subject.container_id or request.subject.container_name or "?"
        return c.verdict(
            VerdictKind.REJECT,
            guard="target_policy",
            reason=f"container {name[:12]} does not exist",
        )
    policy = target_policy(
        target.labels,
        limits.scope,
        is_own=target.is_own,
        watch_label=limits.watch_label,
        autoheal_label=limits.autoheal_label,
        unhealthy_restart=action.type == "restart" and p.alert_kind is AlertKind.UNHEALTHY,
    )
    if not c.check("target_policy", policy.allowed, policy.detail):
        return c.verdict(VerdictKind.REJECT, guard="target_policy", reason=policy.detail)

    g = facts.guard
    assert g is not None, "guard facts are gathered whenever the target exists"
    if not g.lease_acquired:
        # Not refused: what this request asks for is decided when the action in flight is over
        # (its outcome may be exactly what this request is about: it died again). The stale
        # guard bounds the wait.
        detail = f"another action is in progress on {target.name} (lease held by {g.lease_holder})"
        c.check("lease", False, detail)
        return c.verdict(VerdictKind.DEFER, guard="lease", reason=detail)
    c.check("lease", True, "acquired")

    left = g.cooldown_until - now
    if not c.check("cooldown", left <= 0, f"{left:.0f}s left" if left > 0 else "clear"):
        return c.verdict(
            VerdictKind.REJECT,
            guard="cooldown",
            reason=f"{action.type} of {target.name} is cooling down for {left:.0f}s more",
        )

    window, limit = limits.circuit(action)
    detail = (
        f"{actions_in_window(g.action_times, now, window)} action(s) in the last "
        f"{window:.0f}s (max {limit})"
    )
    if not c.check("circuit_breaker", not circuit_open(g.action_times, now, window, limit), detail):
        return _escalating(
            c,
            "circuit_breaker",
            f"circuit open for {target.name}: {detail}; a person must look",
            g,
            now,
            window,
        )

    if action.type in RESTARTING:
        quick = quick_deaths_after_restarts(
            g.restart_times, g.death_times, limits.crash_loop_window_s
        )
        detail = (
            f"{quick} of our restart(s) were followed by a death within "
            f"{limits.crash_loop_window_s:.0f}s (limit {limits.crash_loop_limit})"
        )
        if not c.check("crash_loop", quick < limits.crash_loop_limit, detail):
            reason = f"{target.name} keeps dying right after restarts ({detail}); stopping here"
            return _escalating(c, "crash_loop", reason, g, now, window)

    if (action.approval.required or p.needs_human) and not facts.approved:
        why = (
            f"low confidence ({p.analysis.confidence:.2f}): {p.reason}"
            if p.needs_human
            else f"runbook {p.runbook_id} requires approval for {action.id}"
        )
        held = fatigue(facts.fatigue, request.severity, now, limits)
        if held is not None:
            guard, detail = held
            c.check("approval", False, detail)
            return c.verdict(VerdictKind.SUPPRESS, guard=guard, reason=f"not proposed: {detail}")
        c.check("approval", False, f"waiting for a human: {why}")
        return c.verdict(VerdictKind.PROPOSE, guard="approval", reason=why)
    if facts.approved:
        c.check("approval", True, "approved")

    if limits.dry_run:
        c.check("dry_run", False, "dry-run is on: nothing was changed")
        return c.verdict(
            VerdictKind.DRY_RUN,
            guard="dry_run",
            reason=f"dry-run: would {action.type} {target.name} ({action.id})",
        )
    c.check("dry_run", True, "dry-run is off")
    return c.verdict(VerdictKind.ACT)


def fatigue(
    f: FatigueFacts, severity: Severity, now: float, limits: ResponderLimits
) -> tuple[str, str] | None:
    """(guard, why) when people must not be asked again; None when a proposal may go out.

    One question at a time; a "no" holds for the incident; two unanswered proposals end the
    asking for the incident (people were told once it was escalated); and after any unanswered
    or denied proposal, the same question waits out a cooldown that depends on the severity."""
    if f.pending:
        return "approval_pending", f"proposal {f.pending} for it is still waiting for an answer"
    if f.denied_by:
        return "approval_denied", f"{f.denied_by} denied it in this incident"
    if f.expired >= limits.approval_max_expiries:
        return (
            "approval_expired",
            f"{f.expired} proposals for it expired unanswered in this incident (escalated)",
        )
    if f.last_unanswered_at is not None:
        cooldown = limits.repropose_cooldown_s.get(severity, 0.0)
        left = f.last_unanswered_at + cooldown - now
        if left > 0:
            return (
                "approval_cooldown",
                f"asked {_ago(now - f.last_unanswered_at)} ago without a yes; a {severity} "
                f"proposal is not repeated within {_ago(cooldown)} ({_ago(left)} left)",
            )
    return None


def _escalating(
    c: _Checks, guard: str, reason: str, g: GuardFacts, now: float, window: float
) -> Verdict:
    """Refuse and tell people — once per window, not at every refusal."""
    first = g.escalated_until.get(guard, 0.0) <= now
    return c.verdict(
        VerdictKind.REJECT,
        guard=guard,
        reason=reason,
        escalate=first,
        escalate_until=now + window if first else None,
    )


def after_outcome(
    action: Action, failures_before: int, ok: bool, ended_at: float, limits: ResponderLimits
) -> tuple[int, float]:
    """Consecutive failures and the cooldown's end after an executed action."""
    failures = 0 if ok else failures_before + 1
    cooldown = cooldown_seconds(limits.cooldown_base(action), failures, limits.cooldown_max_s)
    return failures, ended_at + cooldown


def _ago(seconds: float) -> str:
    if seconds >= 5400:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 90:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


# ---------------------------------------------------------------- verification


class VerifyPlan(Model):
    """What "it worked" means for one issued action, fixed when it is issued."""

    want: str  # running | stopped | count | result (known when the call returns)
    container_id: str
    require_healthy: bool = True
    started_before: float | None = None  # the container's start time before we acted
    desired: int | None = None  # want=count: running members with `labels`
    labels: dict[str, str] = Field(default_factory=dict)
    deadline: float


class Observation(Model):
    """What the engine shows now (one inspect, or one count)."""

    exists: bool = True
    running: bool = False
    health: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    count: int | None = None
    issued: bool = True  # the Docker call returned (False: still in progress, or its caller died)
    error: str | None = None  # the engine could not be asked


class Judgement(Model):
    done: bool
    ok: bool = False
    detail: str = ""


def judge(plan: VerifyPlan, obs: Observation, now: float, stable_s: float) -> Judgement:
    """Pending until the action shows its effect; failed at the deadline at the latest."""
    late = now >= plan.deadline
    verdict = _judge_state(plan, obs, now, stable_s)
    if verdict is not None:
        return verdict
    if late:
        what = obs.error or _describe(obs)
        hint = "" if obs.issued else "; the replica that issued it stopped before Docker answered"
        if plan.want == "result":
            return Judgement(
                done=True, ok=False, detail="no result: the replica running it stopped first"
            )
        return Judgement(done=True, ok=False, detail=f"not verified in time (last: {what}){hint}")
    return Judgement(done=False)


def _judge_state(
    plan: VerifyPlan, obs: Observation, now: float, stable_s: float
) -> Judgement | None:
    if obs.error is not None or plan.want == "result":
        return None
    if plan.want == "count":
        if obs.count == plan.desired and obs.issued:
            return Judgement(done=True, ok=True, detail=f"{obs.count} member(s) running")
        return None
    if not obs.exists:
        return Judgement(done=True, ok=False, detail="the container disappeared")
    if plan.want == "stopped":
        if not obs.running and obs.issued:
            return Judgement(done=True, ok=True, detail="verified stopped")
        return None
    new_start = obs.started_at is not None and (
        plan.started_before is None or obs.started_at > plan.started_before
    )
    if not new_start:
        return None  # not (re)started yet
    assert obs.started_at is not None
    if not obs.running:
        # Started anew and not running: it died again. (Docker may stamp the finish of a
        # process that exits at once a few microseconds *before* its start.)
        lived = max(0.0, (obs.finished_at or obs.started_at) - obs.started_at)
        return Judgement(
            done=True,
            ok=False,
            detail=f"died again {lived:.1f}s after starting (exit code {obs.exit_code})",
        )
    if obs.health is not None and plan.require_healthy:
        if obs.health == "healthy":
            return Judgement(done=True, ok=True, detail="verified running and healthy")
        return None
    up = now - obs.started_at
    if up >= stable_s:
        return Judgement(done=True, ok=True, detail=f"verified running for {up:.1f}s")
    return None


def _describe(obs: Observation) -> str:
    if obs.count is not None:
        return f"{obs.count} running"
    state = "running" if obs.running else "not running"
    return f"{state}, health {obs.health}" if obs.health else state

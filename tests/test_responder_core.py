"""The Responder's decision core with a manual clock and no services: every guard's holding and
letting-through edge, the order they apply in, and the verification judge."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agents.responder.core import (
    GUARD_ORDER,
    Binding,
    Claim,
    ClaimStatus,
    Facts,
    FatigueFacts,
    GuardFacts,
    Observation,
    ResponderLimits,
    TargetFacts,
    VerdictKind,
    VerifyPlan,
    after_outcome,
    circuit_open,
    cooldown_seconds,
    evaluate,
    judge,
    quick_deaths_after_restarts,
    target_policy,
    with_container_overrides,
)
from shared.actions import ActionGuards, Approval, ExecAction, ExecParams, NoneAction, RestartAction
from shared.clock import ManualClock
from shared.events import (
    AlertKind,
    Analysis,
    AnalysisMethod,
    RemediationNeeded,
    RemediationNeededEvent,
    Severity,
    Source,
    Subject,
)
from shared.settings import RemediationScope

CLOCK = ManualClock(start=1_700_000_000.0)
T = CLOCK.time()
OPT_IN = {"hemostat.remediate": "true"}
RESTART = RestartAction(id="restart", guards=ActionGuards(cooldown_s=60))
LIMITS = ResponderLimits(dry_run=False)


def at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def request(action=RESTART, *, detected=T, emitted=T, needs_human=False) -> RemediationNeededEvent:
    return RemediationNeededEvent(
        source=Source(agent="analyzer", instance="a", version="0"),
        occurred_at=at(emitted),
        emitted_at=at(emitted),
        idempotency_key="k",
        subject=Subject(host="h", container_id="c" * 64, container_name="web"),
        severity=Severity.CRITICAL,
        payload=RemediationNeeded(
            alert_kind=AlertKind.CRASH,
            alert_occurred_at=at(detected),
            alert_detected_at=at(detected),
            runbook_id="rb",
            runbook_version=1,
            action=action,
            analysis=Analysis(method=AnalysisMethod.RULES, confidence=0.9, root_cause="x"),
            needs_human=needs_human,
            reason="crashed",
        ),
    )


def facts(
    *,
    claim=ClaimStatus.NEW,
    labels=OPT_IN,
    target=True,
    approved=False,
    known=True,
    approved_binding=None,
    fatigue=None,
    **guard,
) -> Facts:
    return Facts(
        claim=Claim(status=claim, phase="received"),
        approved=approved,
        approved_binding=approved_binding,
        fatigue=fatigue or FatigueFacts(),
        runbook_version=1,
        runbook_known=known,
        target=TargetFacts(id="c" * 64, name="web", labels=labels) if target else None,
        guard=GuardFacts(**({"lease_acquired": True} | guard)) if target else None,
    )


def decide(req=None, action=RESTART, now=T, limits=LIMITS, **kw):
    return evaluate(req or request(action), action, facts(**kw), now, limits)


# ---------------------------------------------------------------- every guard, both edges


def test_a_clean_request_passes_every_guard_in_order_and_acts():
    verdict = decide()
    assert verdict.kind is VerdictKind.ACT
    skipped = ("approval_binding", "approval")  # only for what needs (or has) an approval
    assert [g.guard for g in verdict.guards] == [g for g in GUARD_ORDER if g not in skipped]
    assert all(g.passed for g in verdict.guards)


@pytest.mark.parametrize(
    ("status", "phase", "kind"),
    [
        (ClaimStatus.DONE, "done", VerdictKind.DUPLICATE),
        (ClaimStatus.TWIN, "received", VerdictKind.TWIN),
        (ClaimStatus.TWIN, "executing", VerdictKind.TWIN),
        (ClaimStatus.REDELIVERED, "executing", VerdictKind.FOLLOW_UP),
    ],
)
def test_idempotency_holds_for_done_twins_and_actions_in_flight(status, phase, kind):
    f = facts().model_copy(update={"claim": Claim(status=status, phase=phase, holder="r2")})
    verdict = evaluate(request(), RESTART, f, T, LIMITS)
    assert verdict.kind is kind
    assert verdict.guards == ()  # nothing else was looked at


def test_idempotency_lets_a_redelivery_through_when_nothing_was_issued():
    f = facts().model_copy(
        update={"claim": Claim(status=ClaimStatus.REDELIVERED, phase="received")}
    )
    assert evaluate(request(), RESTART, f, T, LIMITS).kind is VerdictKind.ACT


def test_stale_is_measured_from_detection_not_from_the_decision():
    limit = LIMITS.max_request_age_s
    fresh_decision_old_failure = request(detected=T - limit - 1, emitted=T)
    held = evaluate(fresh_decision_old_failure, RESTART, facts(), T, LIMITS)
    assert (held.kind, held.guard) == (VerdictKind.REJECT, "stale")
    assert "stale" in held.reason
    at_the_limit = request(detected=T - limit, emitted=T)
    assert evaluate(at_the_limit, RESTART, facts(), T, LIMITS).kind is VerdictKind.ACT


def test_an_approved_proposal_is_not_stale_by_its_original_age():
    old = request(detected=T - 3600)
    assert evaluate(old, RESTART, facts(approved=True), T, LIMITS).kind is VerdictKind.ACT


@pytest.mark.parametrize(
    ("declared", "known", "detail"),
    [
        (None, False, "unknown runbook"),
        (None, True, "is not in runbook"),
        (
            RESTART.model_copy(
                update={"params": RESTART.params.model_copy(update={"stop_timeout_s": 99})}
            ),
            True,
            "differ",
        ),
    ],
)
def test_action_policy_holds(declared, known, detail):
    verdict = evaluate(request(), declared, facts(known=known), T, LIMITS)
    assert (verdict.kind, verdict.guard) == (VerdictKind.REJECT, "action_policy")
    assert detail in verdict.reason


def test_action_policy_refuses_an_exec_argv_that_is_not_the_runbooks():
    declared = ExecAction(id="probe", params=ExecParams(argv=["/bin/check"]))
    smuggled = declared.model_copy(update={"params": ExecParams(argv=["rm", "-rf", "/"])})
    verdict = evaluate(request(smuggled), declared, facts(), T, LIMITS)
    assert verdict.guard == "action_policy"
    assert "argv" in verdict.reason


@pytest.mark.parametrize(
    ("labels", "scope", "allowed", "why"),
    [
        (OPT_IN, RemediationScope.OPT_IN, True, "allowed"),
        ({}, RemediationScope.OPT_IN, False, "not opted in"),
        ({}, RemediationScope.ALL, True, "allowed"),
        (OPT_IN | {"hemostat.protect": "true"}, RemediationScope.ALL, False, "protected"),
        (OPT_IN | {"hemostat.stack": "true"}, RemediationScope.ALL, False, "own containers"),
    ],
)
def test_target_policy(labels, scope, allowed, why):
    verdict = target_policy(labels, scope)
    assert verdict.allowed is allowed
    assert why in verdict.detail
    limits = LIMITS.model_copy(update={"scope": scope})
    decided = decide(labels=labels, limits=limits)
    assert (decided.kind is VerdictKind.ACT) is allowed


def test_target_policy_refuses_the_responders_own_container_and_a_missing_one():
    assert not target_policy(OPT_IN, RemediationScope.ALL, is_own=True).allowed
    missing = decide(target=False)
    assert (missing.kind, missing.guard) == (VerdictKind.REJECT, "target_policy")
    assert "does not exist" in missing.reason


def test_lease_holds_when_another_action_is_in_flight_and_defers_the_request():
    verdict = decide(lease_acquired=False, lease_holder="responder:r2:abcd")
    assert (verdict.kind, verdict.guard) == (VerdictKind.DEFER, "lease")
    assert "r2" in verdict.reason
    later = decide(lease_acquired=False, lease_holder="r2", req=request(detected=T - 601))
    assert later.guard == "stale", "a deferred request still goes stale"


def test_cooldown_holds_until_its_stored_end_then_lets_through():
    held = decide(cooldown_until=T + 1)
    assert (held.kind, held.guard) == (VerdictKind.REJECT, "cooldown")
    assert decide(cooldown_until=T).kind is VerdictKind.ACT
    CLOCK.advance(0)  # the clock is only ever moved by the test


def test_cooldown_backs_off_exponentially_on_failures_and_is_capped():
    assert cooldown_seconds(60, 0, 3600) == 60
    assert cooldown_seconds(60, 1, 3600) == 120
    assert cooldown_seconds(60, 3, 3600) == 480
    assert cooldown_seconds(60, 10, 3600) == 3600
    assert cooldown_seconds(0, 5, 3600) == 0
    assert after_outcome(RESTART, 0, False, T, LIMITS) == (1, T + 120)
    assert after_outcome(RESTART, 1, False, T, LIMITS) == (2, T + 240)
    assert after_outcome(RESTART, 2, True, T, LIMITS) == (0, T + 60), "success resets"


def test_circuit_breaker_opens_at_the_limit_escalates_once_and_closes_with_the_window():
    limited = RESTART.model_copy(update={"guards": ActionGuards(max_attempts=2, window_s=600)})
    two = (T - 500, T - 100)
    held = decide(action=limited, action_times=two)
    assert (held.kind, held.guard) == (VerdictKind.REJECT, "circuit_breaker")
    assert held.escalate
    assert held.escalate_until == T + 600
    told = decide(action=limited, action_times=two, escalated_until={"circuit_breaker": T + 1})
    assert told.guard == "circuit_breaker"
    assert not told.escalate, "people were told in this window already"
    assert decide(action=limited, action_times=two, now=T + 101).kind is VerdictKind.ACT
    assert circuit_open([T - 3000, T - 2000, T - 1000], T, 3600, 3)
    assert not circuit_open([T - 3000, T - 2000, T - 1000], T + 700, 3600, 3)


def test_crash_loop_holds_after_restarts_followed_by_quick_deaths():
    restarts = (T - 600, T - 300)
    held = decide(restart_times=restarts, death_times=(T - 590, T - 290))
    assert (held.kind, held.guard) == (VerdictKind.REJECT, "crash_loop")
    assert held.escalate
    slow = decide(restart_times=restarts, death_times=(T - 400, T - 100))
    assert slow.kind is VerdictKind.ACT, "deaths long after our restarts are not a loop"
    assert quick_deaths_after_restarts([T], [T - 1], 120) == 0, "deaths before count not"


def test_crash_loop_applies_to_restart_and_start_only():
    exec_action = ExecAction(id="probe", params=ExecParams(argv=["true"]))
    verdict = decide(
        request(exec_action), action=exec_action, restart_times=(T - 60,), death_times=(T - 50,)
    )
    assert verdict.kind is VerdictKind.ACT


def test_approval_holds_when_the_runbook_or_the_analyzer_asks_for_a_human():
    gated = RESTART.model_copy(update={"approval": Approval(required=True)})
    assert decide(request(gated), action=gated).kind is VerdictKind.PROPOSE
    unsure = decide(request(needs_human=True))
    assert unsure.kind is VerdictKind.PROPOSE
    assert "low confidence" in unsure.reason
    approved = decide(request(gated), action=gated, approved=True)
    assert approved.kind is VerdictKind.ACT


def test_dry_run_is_the_last_guard_and_says_what_it_would_do():
    verdict = decide(limits=LIMITS.model_copy(update={"dry_run": True}))
    assert verdict.kind is VerdictKind.DRY_RUN
    assert verdict.reason == "dry-run: would restart web (restart)"
    assert [g.guard for g in verdict.guards][-1] == "dry_run"


def test_notify_only_requests_skip_every_guard():
    notify = NoneAction(id="notify")
    verdict = evaluate(request(notify), notify, facts(target=False), T, LIMITS)
    assert verdict.kind is VerdictKind.NOTIFY


# ---------------------------------------------------------------- the order


def test_the_first_guard_that_holds_wins_in_the_documented_order():
    """Every guard set to hold at once: each is reported in turn as the earlier ones are
    released, so the order is exactly GUARD_ORDER."""
    gated = RESTART.model_copy(
        update={"approval": Approval(required=True), "guards": ActionGuards(max_attempts=1)}
    )
    other_version = Binding.of("rb", 2, gated, "c" * 64)
    holding = {
        "approval_binding": {"approved": True, "approved_binding": other_version},
        "stale": {"req": request(gated, detected=T - 10_000)},
        "action_policy": {"known": False},
        "target_policy": {"labels": {}},
        "lease": {"lease_acquired": False},
        "cooldown": {"cooldown_until": T + 10},
        "circuit_breaker": {"action_times": (T - 1,)},
        "crash_loop": {"restart_times": (T - 60, T - 30), "death_times": (T - 55, T - 25)},
    }
    seen = []
    for n in range(len(holding)):
        kw: dict = {}
        for _guard, cond in list(holding.items())[n:]:
            kw |= cond
        req = kw.pop("req", request(gated))
        verdict = evaluate(req, gated, facts(**kw), T, LIMITS)
        seen.append(verdict.guard)
    after = evaluate(request(gated), gated, facts(), T, LIMITS)
    seen.append(after.guard)
    dry = evaluate(
        request(gated), gated, facts(approved=True), T, LIMITS.model_copy(update={"dry_run": True})
    )
    seen.append(dry.guard)
    assert seen == list(GUARD_ORDER[1:])


# ---------------------------------------------------------------- verification


def plan(**kw) -> VerifyPlan:
    return VerifyPlan(
        **(
            {"want": "running", "container_id": "c", "started_before": T - 100, "deadline": T + 60}
            | kw
        )
    )


def test_verification_waits_for_a_new_start_then_for_stability():
    assert not judge(plan(), Observation(running=True, started_at=T - 100), T, 3).done
    fresh = Observation(running=True, started_at=T)
    assert not judge(plan(), fresh, T + 2, 3).done
    ok = judge(plan(), fresh, T + 3, 3)
    assert ok.done
    assert ok.ok
    assert "running for 3.0s" in ok.detail


def test_verification_waits_for_healthy_when_the_container_has_a_check():
    starting = Observation(running=True, started_at=T, health="starting")
    assert not judge(plan(), starting, T + 30, 3).done
    healthy = judge(plan(), starting.model_copy(update={"health": "healthy"}), T + 31, 3)
    assert healthy.ok
    assert "healthy" in healthy.detail


def test_verification_fails_when_it_dies_again_or_disappears_or_runs_out_of_time():
    died = Observation(running=False, started_at=T, finished_at=T + 2, exit_code=1)
    verdict = judge(plan(), died, T + 3, 3)
    assert (verdict.done, verdict.ok) == (True, False)
    assert "died again 2.0s after starting (exit code 1)" in verdict.detail
    gone = judge(plan(), Observation(exists=False), T, 3)
    assert (gone.done, gone.ok) == (True, False)
    late = judge(plan(), Observation(running=True, started_at=T - 100), T + 60, 3)
    assert (late.done, late.ok) == (True, False)
    assert "not verified in time" in late.detail


def test_a_stop_is_verified_when_the_container_is_down_and_a_count_when_it_matches():
    assert judge(plan(want="stopped"), Observation(running=False), T, 3).ok
    count = plan(want="count", desired=2, labels={"a": "b"})
    assert not judge(count, Observation(count=3), T, 3).done
    assert judge(count, Observation(count=2), T, 3).ok


def test_an_action_whose_replica_stopped_is_finished_at_its_deadline():
    result = plan(want="result")
    assert not judge(result, Observation(issued=False), T, 3).done
    verdict = judge(result, Observation(issued=False), T + 60, 3)
    assert (verdict.done, verdict.ok) == (True, False)
    assert "replica" in verdict.detail


def test_a_container_that_dies_at_once_died_again_even_if_its_finish_predates_its_start():
    """Docker stamps FinishedAt a few µs before StartedAt for a process that exits at once."""
    died = Observation(running=False, started_at=T + 0.000458, finished_at=T, exit_code=3)
    verdict = judge(plan(), died, T + 0.1, 3)
    assert (verdict.done, verdict.ok) == (True, False)
    assert "died again 0.0s" in verdict.detail


# ---------------------------------------------------------------- approvals: fatigue and binding

GATED = RESTART.model_copy(update={"approval": Approval(required=True)})


def test_fatigue_each_rule_holds_in_turn_then_lets_a_proposal_out():
    def ask(**f):
        return evaluate(request(GATED), GATED, facts(fatigue=FatigueFacts(**f)), T, LIMITS)

    assert ask(pending="p-1").guard == "approval_pending"
    assert ask(denied_by="bob").guard == "approval_denied"
    assert ask(expired=2).guard == "approval_expired"
    assert ask(expired=1).kind is VerdictKind.PROPOSE
    assert all(
        ask(**f).kind is VerdictKind.SUPPRESS
        for f in ({"pending": "p"}, {"denied_by": "b"}, {"expired": 2})
    )
    # The order: one question at a time first, then the incident's "no", then its silences.
    assert ask(pending="p", denied_by="b", expired=5).guard == "approval_pending"
    assert ask(denied_by="b", expired=5).guard == "approval_denied"


@pytest.mark.parametrize(
    ("severity", "cooldown"),
    [(Severity.CRITICAL, 1800), (Severity.WARNING, 7200), (Severity.INFO, 14400)],
)
def test_the_repropose_cooldown_depends_on_severity_and_ends_exactly(severity, cooldown):
    req = request(GATED).model_copy(update={"severity": severity})
    f = FatigueFacts(last_unanswered_at=T - cooldown + 1)
    held = evaluate(req, GATED, facts(fatigue=f), T, LIMITS)
    assert (held.kind, held.guard) == (VerdictKind.SUPPRESS, "approval_cooldown")
    f = FatigueFacts(last_unanswered_at=T - cooldown)
    assert evaluate(req, GATED, facts(fatigue=f), T, LIMITS).kind is VerdictKind.PROPOSE


def test_fatigue_never_stops_an_action_that_needs_no_approval():
    f = FatigueFacts(pending="p", denied_by="b", expired=9, last_unanswered_at=T)
    assert evaluate(request(), RESTART, facts(fatigue=f), T, LIMITS).kind is VerdictKind.ACT


def test_an_approval_runs_only_what_was_approved():
    bound = Binding.of("rb", 1, GATED, "c" * 64)

    def run(binding, action=GATED, target=True):
        f = facts(approved=True, approved_binding=binding, target=target)
        return evaluate(request(GATED), action, f, T, LIMITS)

    assert run(bound).kind is VerdictKind.ACT
    newer = run(Binding.of("rb", 2, GATED, "c" * 64))
    assert (newer.kind, newer.guard) == (VerdictKind.BLOCK, "approval_binding")
    assert "runbook rb v2 is now rb v1" in newer.reason
    longer = GATED.model_copy(
        update={"params": GATED.params.model_copy(update={"stop_timeout_s": 99})}
    )
    changed = run(bound, action=longer)
    assert "the action or its parameters changed" in changed.reason
    gone = run(bound, target=False)
    assert (gone.kind, gone.guard) == (VerdictKind.BLOCK, "approval_binding")
    assert "the target is another container" in gone.reason
    elsewhere = run(Binding.of("rb", 1, GATED, "d" * 64))
    assert "another container (dddddddddddd then, cccccccccccc now)" in elsewhere.reason


# ---------------------------------------------------------------- coming from autoheal


@pytest.mark.parametrize(
    ("labels", "setting", "kind", "allowed"),
    [
        ({"autoheal": "true"}, "autoheal", AlertKind.UNHEALTHY, True),
        ({"autoheal": "true"}, "autoheal", AlertKind.CRASH, False),  # unhealthy only
        ({"autoheal": "false"}, "autoheal", AlertKind.UNHEALTHY, False),
        ({"autoheal": "true"}, "", AlertKind.UNHEALTHY, False),  # compatibility off
        ({"heal-me": "true"}, "heal-me", AlertKind.UNHEALTHY, True),  # AUTOHEAL_CONTAINER_LABEL
        ({}, "all", AlertKind.UNHEALTHY, True),
        (
            {"autoheal": "true", "hemostat.remediate": "false"},
            "autoheal",
            AlertKind.UNHEALTHY,
            False,
        ),
        ({"autoheal": "true", "hemostat.protect": "true"}, "autoheal", AlertKind.UNHEALTHY, False),
        ({}, "all", AlertKind.HIGH_MEMORY, False),
    ],
)
def test_autoheals_label_opts_in_to_a_restart_when_unhealthy_only(labels, setting, kind, allowed):
    req = request()
    req = req.model_copy(update={"payload": req.payload.model_copy(update={"alert_kind": kind})})
    limits = LIMITS.model_copy(update={"autoheal_label": setting})
    verdict = evaluate(req, RESTART, facts(labels=labels), T, limits)
    assert (verdict.kind is VerdictKind.ACT) is allowed, verdict.reason


def test_autoheals_label_never_opts_in_to_other_actions():
    stop_like = ExecAction(id="x", params=ExecParams(argv=["true"]))
    assert not target_policy(
        {"autoheal": "true"}, RemediationScope.OPT_IN, autoheal_label="autoheal"
    ).allowed
    req = request(stop_like)
    req = req.model_copy(
        update={"payload": req.payload.model_copy(update={"alert_kind": AlertKind.UNHEALTHY})}
    )
    limits = LIMITS.model_copy(update={"autoheal_label": "autoheal"})
    verdict = evaluate(req, stop_like, facts(labels={"autoheal": "true"}), T, limits)
    assert verdict.guard == "target_policy"


@pytest.mark.parametrize(
    ("raw", "expected"), [("3", 3), (" 25 ", 25), ("0", 0), ("601", 10), ("soon", 10), ("-1", 10)]
)
def test_autoheal_stop_timeout_label_sets_the_restarts_stop_timeout(raw, expected):
    action = RestartAction(id="restart")  # stop_timeout_s 10 by default
    changed = with_container_overrides(action, {"autoheal.stop.timeout": raw})
    assert changed.params.stop_timeout_s == expected
    assert with_container_overrides(action, {}) is action
    stop = NoneAction(id="n")
    assert with_container_overrides(stop, {"autoheal.stop.timeout": "3"}) is stop

"""The deterministic rules, one case per rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.analyzer.rules import History, decide
from shared.events import AlertKind
from shared.runbooks import NOTIFY_ONLY, load_runbooks
from tests.support import factories

RUNBOOKS = load_runbooks(Path(__file__).parent.parent / "runbooks")
FIRST = History(alerts=1, same_kind=1)
AGAIN = History(alerts=3, same_kind=2, decisions=2)


def run(kind, history=FIRST, **payload):
    alert = factories.health_alert(kind=kind, **payload)
    return decide(alert, RUNBOOKS.match(alert), history)


def test_crash_with_non_zero_exit_is_a_restart():
    d = run(AlertKind.CRASH, exit_code=139)
    assert (d.false_alarm, d.action_id, d.confidence) == (False, "restart", 0.9)
    assert "segmentation fault" in d.root_cause


def test_repeated_crash_still_restarts_with_less_confidence_and_lets_guards_decide():
    d = run(AlertKind.CRASH, AGAIN, exit_code=1)
    assert d.action_id == "restart"
    assert d.confidence == 0.8
    assert "repeated" in d.root_cause


def test_oom_and_unhealthy_restart():
    assert run(AlertKind.OOM_KILLED).action_id == "restart"
    assert run(AlertKind.UNHEALTHY).action_id == "restart"


def test_unhealthy_again_and_again_escalates_to_people():
    d = run(AlertKind.UNHEALTHY, History(alerts=5, same_kind=3))
    assert d.action_id == "notify"


def test_restart_loop_is_not_restarted_again():
    d = run(AlertKind.RESTART_LOOP, summary="died 3 times in 300s")
    assert d.action_id == "notify"
    assert d.confidence == 0.9


def test_first_single_sample_spike_is_a_false_alarm():
    d = run(AlertKind.HIGH_CPU, thresholds={"sustained_samples": 1.0}, metrics={"cpu_percent": 99})
    assert d.false_alarm
    assert d.action_id is None


def test_sustained_high_cpu_notifies_then_escalates_when_it_lasts():
    first = run(
        AlertKind.HIGH_CPU, thresholds={"sustained_samples": 3.0}, metrics={"cpu_percent": 97}
    )
    lasting = run(
        AlertKind.HIGH_CPU,
        AGAIN,
        thresholds={"sustained_samples": 3.0},
        metrics={"cpu_percent": 97},
    )
    assert (first.false_alarm, first.action_id) == (False, "notify")
    assert lasting.action_id == "restart"
    assert RUNBOOKS.get("high-cpu").action("restart").approval.required


def test_memory_about_to_hit_the_limit_escalates_at_once():
    d = run(
        AlertKind.HIGH_MEMORY,
        metrics={"memory_percent": 97.0},
        thresholds={"sustained_samples": 3.0},
    )
    assert d.action_id == "restart"


@pytest.mark.parametrize(("history", "false_alarm"), [(FIRST, True), (AGAIN, False)])
def test_anomaly_first_is_a_false_alarm_repeated_is_notified(history, false_alarm):
    d = run(AlertKind.ANOMALY, history)
    assert d.false_alarm is false_alarm
    assert d.action_id == (None if false_alarm else "notify")


def test_external_alert_takes_the_runbook_default():
    d = run(AlertKind.EXTERNAL, alertname="Whatever", summary="disk almost full")
    assert d.action_id == "notify"


def test_no_runbook_means_notify_only():
    alert = factories.health_alert(kind=AlertKind.CRASH)
    d = decide(alert, NOTIFY_ONLY, FIRST)
    assert d.action_id == "notify"

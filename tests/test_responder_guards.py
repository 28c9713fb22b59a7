"""The Responder's guard decisions as pure functions under fixed clocks: each holding, and each
letting the right thing through."""

from __future__ import annotations

import pytest

from agents.responder.guards import (
    circuit_open,
    cooldown_seconds,
    quick_deaths_after_restarts,
    target_policy,
)
from shared.containers import ContainerInfo
from shared.settings import RemediationScope

T = 1_700_000_000.0


def test_cooldown_backs_off_exponentially_on_failures_and_is_capped():
    assert cooldown_seconds(60, 0, 3600) == 60
    assert cooldown_seconds(60, 1, 3600) == 120
    assert cooldown_seconds(60, 3, 3600) == 480
    assert cooldown_seconds(60, 10, 3600) == 3600
    assert cooldown_seconds(0, 5, 3600) == 0


def test_circuit_breaker_opens_at_the_limit_and_closes_as_the_window_moves():
    times = [T - 3000, T - 2000, T - 1000]
    assert circuit_open(times, T, window_s=3600, max_actions=3)
    assert not circuit_open(times[1:], T, window_s=3600, max_actions=3)
    assert not circuit_open(times, T + 700, window_s=3600, max_actions=3), "oldest left the window"


def test_crash_loop_counts_restarts_followed_by_a_quick_death():
    restarts = [T, T + 300, T + 600]
    quick = [T + 5, T + 310]
    slow = [T + 200, T + 500]
    assert quick_deaths_after_restarts(restarts, quick, window_s=120) == 2
    assert quick_deaths_after_restarts(restarts, slow, window_s=120) == 0
    assert quick_deaths_after_restarts(restarts, [T - 1], window_s=120) == 0, (
        "deaths before count not"
    )


def info(**labels):
    return ContainerInfo(id="a" * 64, name="web", image="img", labels=labels, state="running")


@pytest.mark.parametrize(
    ("labels", "scope", "allowed", "why"),
    [
        ({"hemostat.remediate": "true"}, RemediationScope.OPT_IN, True, "allowed"),
        ({}, RemediationScope.OPT_IN, False, "not opted in"),
        ({}, RemediationScope.ALL, True, "allowed"),
        (
            {"hemostat.remediate": "true", "hemostat.protect": "true"},
            RemediationScope.ALL,
            False,
            "protected",
        ),
        (
            {"hemostat.remediate": "true", "hemostat.stack": "true"},
            RemediationScope.ALL,
            False,
            "own containers",
        ),
    ],
)
def test_target_policy(labels, scope, allowed, why):
    verdict = target_policy(info(**labels), scope)
    assert verdict.allowed is allowed
    assert why in verdict.detail


def test_own_container_is_never_a_target():
    verdict = target_policy(
        info(**{"hemostat.remediate": "true"}), RemediationScope.ALL, own_id="aaaa"
    )
    assert not verdict.allowed

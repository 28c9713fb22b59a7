"""Why a container died, judged from the daemon's own events: a stop is a stop however long it
took, a reload signal hides no crash, and a death nobody saw is unknown. No services."""

from __future__ import annotations

import pytest

from agents.monitor.causes import (
    Cause,
    Seen,
    cause_of_death,
    is_stopping_signal,
    signal_number,
    since_last_start,
)


def seen(*steps: tuple[str, dict[str, str]]) -> list[Seen]:
    return [Seen(action, attrs, float(n)) for n, (action, attrs) in enumerate(steps)]


def kill(sig: str) -> tuple[str, dict[str, str]]:
    return ("kill", {"signal": sig})


DIE = ("die", {"exitCode": "1"})


@pytest.mark.parametrize(
    ("value", "number"),
    [("15", 15), ("SIGTERM", 15), ("term", 15), ("9", 9), ("SIGHUP", 1), ("", None), ("x", None)],
)
def test_signal_numbers(value, number):
    assert signal_number(value) == number


def test_stopping_signals_include_the_containers_own_stop_signal():
    assert is_stopping_signal("15")
    assert is_stopping_signal("9")
    assert not is_stopping_signal("1"), "HUP reloads"
    assert not is_stopping_signal("28")
    assert is_stopping_signal("28", stop_signal="SIGWINCH"), "httpd stops on WINCH"


@pytest.mark.parametrize(
    ("events", "exit_code", "cause"),
    [
        (seen(DIE), 1, Cause.CRASH),
        (seen(DIE), 0, Cause.CLEAN),
        (seen(kill("15"), DIE), 143, Cause.STOPPED),  # docker stop
        (seen(kill("15"), kill("9"), DIE), 137, Cause.STOPPED),  # stop that ran out of time
        (seen(kill("9"), DIE), 137, Cause.STOPPED),  # docker kill
        (seen(kill("1"), DIE), 1, Cause.CRASH),  # a reload, then a real crash
        (seen(("oom", {}), DIE), 137, Cause.OOM),
        (seen(kill("15")), 0, Cause.UNKNOWN),  # no death seen at all
        ([], 1, Cause.UNKNOWN),
    ],
)
def test_cause_of_death(events, exit_code, cause):
    assert cause_of_death(events, exit_code) is cause


def test_only_the_events_since_the_last_start_count():
    history = seen(kill("15"), DIE, ("start", {}), DIE)
    last = since_last_start(history)
    assert [e.action for e in last] == ["die"]
    assert cause_of_death(last, 1) is Cause.CRASH, "an old stop does not excuse a new crash"

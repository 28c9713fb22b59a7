"""Why a container died, from what the daemon said about it since it last started. Pure.

A deliberate stop is recognised by its signal, never by a time window: `docker stop`,
`docker kill`, `compose stop/down` and HemoStat's own restarts all send a `kill` event with a
stopping signal (SIGTERM, SIGKILL, SIGINT, SIGQUIT, or the container's own `StopSignal`) before
the `die`, however long the process takes to exit. A `kill` with any other signal (`docker kill
-s HUP`, a reload) stops nothing and hides no crash that follows it. The same rules judge deaths
seen live and deaths found when catching up after HemoStat was not listening; a death whose
events were not seen at all is `UNKNOWN`, and HemoStat says so instead of acting.
"""

from __future__ import annotations

import signal as _signal
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "STOPPING_SIGNALS",
    "Cause",
    "Seen",
    "cause_of_death",
    "is_stopping_signal",
    "signal_number",
    "since_last_start",
]

STOPPING_SIGNALS = frozenset({_signal.SIGTERM, _signal.SIGKILL, _signal.SIGINT, _signal.SIGQUIT})


class Cause(StrEnum):
    CRASH = "crash"  # died on its own with a non-zero exit
    OOM = "oom"  # killed by the kernel's OOM killer
    STOPPED = "stopped"  # a person (or HemoStat) stopped or killed it: never a failure
    CLEAN = "clean"  # exited 0 on its own
    UNKNOWN = "unknown"  # its death was not seen: nobody can tell which of the above


@dataclass(frozen=True)
class Seen:
    """One daemon event about a container: its action and attributes."""

    action: str
    attrs: Mapping[str, str]
    at: float


def signal_number(value: str | None) -> int | None:
    """`15`, `SIGTERM` or `TERM` -> 15; anything else -> None."""
    if not value:
        return None
    text = value.strip().upper()
    if text.isdigit():
        return int(text)
    name = text if text.startswith("SIG") else f"SIG{text}"
    member = getattr(_signal.Signals, name, None)
    return int(member) if member is not None else None


def is_stopping_signal(value: str | None, stop_signal: str | None = None) -> bool:
    number = signal_number(value)
    if number is None:
        return False
    return number in {int(s) for s in STOPPING_SIGNALS} or number == signal_number(stop_signal)


def cause_of_death(
    since_start: Sequence[Seen], exit_code: int | None, stop_signal: str | None = None
) -> Cause:
    """The cause of the death ending `since_start` (the events after its last `start`, the
    `die` included, in order)."""
    if not any(e.action == "die" for e in since_start):
        return Cause.UNKNOWN
    if any(e.action == "oom" for e in since_start):
        return Cause.OOM
    kills = (e for e in since_start if e.action == "kill")
    if any(is_stopping_signal(k.attrs.get("signal"), stop_signal) for k in kills):
        return Cause.STOPPED
    return Cause.CLEAN if exit_code == 0 else Cause.CRASH


def since_last_start(events: Iterable[Seen]) -> list[Seen]:
    """The events after the last `start` up to and including the first `die` after it."""
    out: list[Seen] = []
    for event in events:
        if event.action == "start":
            out = []
        elif out and out[-1].action == "die":
            continue
        else:
            out.append(event)
    return out

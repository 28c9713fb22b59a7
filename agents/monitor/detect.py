"""Detection primitives, as pure functions of (state, sample, policy[, now]).

Each returns a new immutable state and, when something changed, a `Transition`. Nothing here
reads a clock or does I/O, so every rule is tested with fixed values."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import StrEnum

__all__ = [
    "Baseline",
    "BaselinePolicy",
    "GatePolicy",
    "GateState",
    "ThresholdPolicy",
    "ThresholdState",
    "Transition",
    "gate",
    "prune",
    "restart_loop",
    "step_baseline",
    "step_threshold",
    "zscore",
]


class Transition(StrEnum):
    FIRED = "fired"
    CLEARED = "cleared"


# ---------------------------------------------------------------- fixed thresholds


@dataclass(frozen=True)
class ThresholdPolicy:
    threshold: float
    sustained: int = 3  # consecutive samples at/above the threshold before firing
    hysteresis: float = 5.0  # clearing needs the value below threshold - hysteresis ...
    clear_samples: int = 3  # ... for this many consecutive samples


@dataclass(frozen=True)
class ThresholdState:
    above: int = 0
    below: int = 0
    active: bool = False


def step_threshold(
    state: ThresholdState, value: float, policy: ThresholdPolicy
) -> tuple[ThresholdState, Transition | None]:
    """One spike neither fires nor, once firing, does one dip clear: no flapping."""
    if not state.active:
        above = state.above + 1 if value >= policy.threshold else 0
        if above >= policy.sustained:
            return ThresholdState(active=True), Transition.FIRED
        return ThresholdState(above=above), None
    below = state.below + 1 if value < policy.threshold - policy.hysteresis else 0
    if below >= policy.clear_samples:
        return ThresholdState(), Transition.CLEARED
    return ThresholdState(active=True, below=below), None


# ---------------------------------------------------------------- statistical baseline


@dataclass(frozen=True)
class BaselinePolicy:
    alpha: float = 0.1  # EWMA weight of a new sample
    min_samples: int = 20  # learn this long before judging
    z: float = 4.0  # how many standard deviations above the mean is unusual
    min_delta: float = 10.0  # and at least this far above it (percentage points)
    sustained: int = 2
    clear_samples: int = 3
    min_std: float = 1.0  # a flat baseline must not make every wobble "unusual"


@dataclass(frozen=True)
class Baseline:
    n: int = 0
    mean: float = 0.0
    var: float = 0.0
    above: int = 0
    below: int = 0
    active: bool = False

    @property
    def std(self) -> float:
        return math.sqrt(max(self.var, 0.0))


def zscore(baseline: Baseline, value: float, policy: BaselinePolicy) -> float:
    return (value - baseline.mean) / max(baseline.std, policy.min_std)


def step_baseline(
    b: Baseline, value: float, policy: BaselinePolicy
) -> tuple[Baseline, Transition | None, float]:
    """EWMA mean/variance per container; flags values far above the container's own normal,
    even when they are under the fixed thresholds. Returns (state, transition, z-score)."""
    z = zscore(b, value, policy)
    unusual = b.n >= policy.min_samples and z >= policy.z and value - b.mean >= policy.min_delta
    # Learn slowly from unusual values so a lasting anomaly is not absorbed at once.
    alpha = policy.alpha / 4 if unusual else policy.alpha
    if b.n == 0:
        mean, var = value, 0.0
    else:
        diff = value - b.mean
        incr = alpha * diff
        mean = b.mean + incr
        var = (1 - alpha) * (b.var + diff * incr)
    nxt = replace(b, n=b.n + 1, mean=mean, var=var)
    if not b.active:
        above = b.above + 1 if unusual else 0
        if above >= policy.sustained:
            return replace(nxt, above=0, below=0, active=True), Transition.FIRED, z
        return replace(nxt, above=above), None, z
    below = 0 if unusual else b.below + 1
    if below >= policy.clear_samples:
        return replace(nxt, above=0, below=0, active=False), Transition.CLEARED, z
    return replace(nxt, below=below), None, z


# ---------------------------------------------------------------- alert gating


@dataclass(frozen=True)
class GatePolicy:
    min_gap_s: float = 10.0  # new episodes of one (container, kind) at most this often
    realert_s: float = 1800.0  # while a problem lasts, remind at most this often


@dataclass(frozen=True)
class GateState:
    last_sent: float | None = None
    suppressed: int = 0
    # When a new episode (a crash after the restart that healed the last one) was held back by
    # the minimum gap: it is then told as soon as the gap is over, not a re-alert interval later.
    held_at: float | None = None


def gate(
    state: GateState, now: float, policy: GatePolicy, *, new_episode: bool
) -> tuple[GateState, bool, int]:
    """Alert on a state change, then at most once per re-alert interval while it lasts; a new
    episode held back by the minimum gap is due when the gap is over.
    Returns (state, send, suppressed-since-last-sent to report with this alert)."""
    if state.last_sent is None:
        return GateState(last_sent=now), True, state.suppressed
    elapsed = now - state.last_sent
    waits_for_gap = new_episode or state.held_at is not None
    due = elapsed >= (policy.min_gap_s if waits_for_gap else policy.realert_s)
    if due:
        return GateState(last_sent=now), True, state.suppressed
    held_at = now if new_episode else state.held_at
    return replace(state, suppressed=state.suppressed + 1, held_at=held_at), False, 0


# ---------------------------------------------------------------- restart loops


def prune(times: tuple[float, ...], now: float, window_s: float) -> tuple[float, ...]:
    return tuple(t for t in times if now - t <= window_s)


def restart_loop(
    deaths: tuple[float, ...], now: float, window_s: float, count: int
) -> tuple[tuple[float, ...], bool]:
    """Deaths within the window (pruned) and whether they make a restart loop."""
    recent = prune(deaths, now, window_s)
    return recent, len(recent) >= count

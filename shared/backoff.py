"""Exponential backoff with jitter, as a pure function of the attempt number."""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["backoff_delay"]


def backoff_delay(
    attempt: int,
    base: float = 0.1,
    cap: float = 5.0,
    factor: float = 2.0,
    jitter: float = 0.2,
    rand: Callable[[], float] = random.random,
) -> float:
    """Delay before retry number `attempt` (1-based): base·factor^(attempt-1), capped, ±jitter."""
    delay = min(cap, base * factor ** max(0, attempt - 1))
    if jitter:
        delay *= 1 + jitter * (2 * rand() - 1)
    return max(0.0, delay)

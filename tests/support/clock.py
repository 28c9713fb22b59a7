"""A real clock a test can move forward: guards compare stored "until" values with `now`, so a
test jumps past a cooldown instead of sleeping through it."""

from __future__ import annotations

import time
from datetime import UTC, datetime


class OffsetClock:
    def __init__(self) -> None:
        self.offset = 0.0

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def time(self) -> float:
        return time.time() + self.offset

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), UTC)

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

"""What the Alert agent keeps in Redis: deduplication windows, the event history the dashboard
reads, and a log of every delivery attempt.

- `hemostat:alert:dedup:<key>`      when the current window for key ends (unix seconds)
- `hemostat:alert:suppressed:<key>` duplicates suppressed since the last message for key
- `hemostat:history`                every event seen (bounded by length and age)
- `hemostat:history:<type>`         the same, per event type
- `hemostat:notifications`          one entry per channel delivery (status, attempts, latency)
"""

from __future__ import annotations

import time
from typing import Any

from redis.asyncio import Redis

from agents.alert.channels import Delivery
from agents.alert.message import Notification
from shared import keys
from shared.events import Envelope

__all__ = ["AlertStore"]

# The window's end is a stored value compared with the caller's `now`, so replicas agree and a
# test moves a clock instead of sleeping through the window.
_ADMIT = """
local ends = tonumber(redis.call('GET', KEYS[1]) or '0')
local now = tonumber(ARGV[1])
if ends <= now then
  redis.call('SET', KEYS[1], ARGV[1] + ARGV[2], 'EX', math.ceil(ARGV[2]) + 86400)
  local n = tonumber(redis.call('GET', KEYS[2]) or '0')
  redis.call('DEL', KEYS[2])
  return {1, n}
end
local n = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], 86400)
return {0, n}
"""


class AlertStore:
    def __init__(
        self,
        redis: Redis,
        *,
        history_maxlen: int = 10_000,
        per_type_maxlen: int = 2_000,
        notifications_maxlen: int = 20_000,
    ) -> None:
        self.redis = redis
        self.history_maxlen = history_maxlen
        self.per_type_maxlen = per_type_maxlen
        self.notifications_maxlen = notifications_maxlen
        self._admit = redis.register_script(_ADMIT)

    async def admit(self, key: str, window_s: float, now: float) -> tuple[bool, int]:
        """(send?, duplicates suppressed before it). The first message of a window goes out and
        reports how many were suppressed in the previous one; the rest are counted."""
        if window_s <= 0:
            return True, 0
        result: list[Any] = await self._admit(
            keys=[keys.ALERT_DEDUP + key, keys.ALERT_SUPPRESSED + key],
            args=[f"{now:.6f}", window_s],
        )
        return bool(int(result[0])), int(result[1])

    async def remember(self, event: Envelope) -> None:
        data = event.model_dump_json()
        kind = str(getattr(event, "type", "unknown"))
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(keys.HISTORY, {"type": kind, "event": data}, maxlen=self.history_maxlen)
        pipe.xadd(keys.HISTORY_OF_TYPE + kind, {"event": data}, maxlen=self.per_type_maxlen)
        await pipe.execute()

    async def log_delivery(self, n: Notification, d: Delivery) -> None:
        await self.redis.xadd(
            keys.NOTIFICATIONS,
            {
                "at": f"{time.time():.3f}",
                "event_id": n.event_id,
                "event_type": n.event_type,
                "severity": n.severity.value,
                "container": n.container,
                "channel": d.channel,
                "status": d.status,
                "attempts": str(d.attempts),
                "latency_ms": str(d.latency_ms),
                "detail": d.detail[:300],
            },
            maxlen=self.notifications_maxlen,
        )

    async def trim_by_age(self, days: float, now: float | None = None) -> None:
        cutoff = f"{int(((now or time.time()) - days * 86_400) * 1000)}-0"
        streams = [keys.HISTORY, keys.NOTIFICATIONS]
        streams += [k async for k in self.redis.scan_iter(f"{keys.HISTORY_OF_TYPE}*", count=100)]
        for key in streams:
            await self.redis.xtrim(key, minid=cutoff, approximate=True)

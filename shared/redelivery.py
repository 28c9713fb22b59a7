"""Claiming a group's pending entries: how a message is redelivered (a retry), kept (a slow
handler's keep-alive), resumed after a restart or taken over from a dead consumer.

Every claim is one Lua script that looks at each entry atomically (XPENDING for its holder and
deliveries, XRANGE for its existence, then XCLAIM), so two reclaimers cannot both win, a
keep-alive never takes back what another replica reclaimed, and an entry trimmed from the stream
is reported instead of silently dropped from the pending list. What to do with each `Claim` is
the consumer's decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from redis.asyncio import Redis

from shared.stream_wire import LuaScript, RawFields, as_text, entry_fields

__all__ = ["Claim", "ClaimStatus", "Claimer"]

# Every claim of a pending message. XCLAIM alone cannot do it safely: it has no "only if I still
# hold it" (a keep-alive would take back what another replica reclaimed) and, for an entry trimmed
# from the stream, it silently drops it from the pending list (a message lost without a trace).
_CLAIM = LuaScript("""
-- KEYS[1]: stream. ARGV: group, consumer, min_idle_ms, holder ('' = any consumer), justid,
-- ack_gone, count, ids... With count > 0: the oldest `count` pending entries idle for min_idle_ms
-- (held by `holder` if given); otherwise the listed ids.
-- Reply per entry: {id, status, holder, deliveries[, fields]} where status is
--   claimed  now held by `consumer` (with its fields unless justid; a full claim counts a delivery)
--   lost     held by another consumer than `holder`
--   gone     pending but deleted from the stream (trimmed); acknowledged when ack_gone
--   skipped  not pending, or not idle long enough
local key, group, consumer, min_idle, holder = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local justid, ack_gone, count = ARGV[5] == '1', ARGV[6] == '1', tonumber(ARGV[7])
local pending = {}
if count > 0 then
  if holder ~= '' then
    pending = redis.call('XPENDING', key, group, 'IDLE', min_idle, '-', '+', count, holder)
  else
    pending = redis.call('XPENDING', key, group, 'IDLE', min_idle, '-', '+', count)
  end
else
  for i = 8, #ARGV do
    local found = redis.call('XPENDING', key, group, 'IDLE', min_idle, ARGV[i], ARGV[i], 1)
    pending[#pending + 1] = found[1] or {ARGV[i]}
  end
end
local out = {}
for _, entry in ipairs(pending) do
  local id, owner, deliveries = entry[1], entry[2], entry[4]
  if not owner then
    out[#out + 1] = {id, 'skipped'}
  elseif holder ~= '' and owner ~= holder then
    out[#out + 1] = {id, 'lost', owner, deliveries}
  elseif #redis.call('XRANGE', key, id, id) == 0 then
    if ack_gone then redis.call('XACK', key, group, id) end
    out[#out + 1] = {id, 'gone', owner, deliveries}
  elseif justid then
    redis.call('XCLAIM', key, group, consumer, 0, id, 'JUSTID')
    out[#out + 1] = {id, 'claimed', owner, deliveries}
  else
    local claimed = redis.call('XCLAIM', key, group, consumer, 0, id)
    out[#out + 1] = {id, 'claimed', owner, deliveries, claimed[1][2]}
  end
end
return out
""")


class ClaimStatus(StrEnum):
    """What a claim found of one entry (see `_CLAIM`)."""

    CLAIMED = "claimed"
    LOST = "lost"
    GONE = "gone"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Claim:
    """One entry of a `_CLAIM` reply."""

    message_id: str
    status: ClaimStatus
    holder: str = ""
    deliveries: int = 0
    fields: RawFields | None = None

    @classmethod
    def parse(cls, item: Sequence[Any]) -> Claim:
        return cls(
            message_id=as_text(item[0]),
            status=ClaimStatus(as_text(item[1])),
            holder=as_text(item[2]) if len(item) > 2 else "",
            deliveries=int(item[3]) if len(item) > 3 else 0,
            fields=entry_fields(item[4]) if len(item) > 4 else None,
        )


class Claimer:
    """Claims of a group's pending entries for one of its consumers (claimed entries go to
    `consumer`)."""

    def __init__(self, redis: Redis, *, group: str, consumer: str) -> None:
        self.redis = redis
        self.group = group
        self.consumer = consumer

    async def __call__(
        self,
        channel: str,
        *,
        ids: Sequence[str] = (),
        count: int = 0,
        min_idle: int = 0,
        holder: str = "",
        justid: bool = False,
        ack_gone: bool = False,
    ) -> list[Claim]:
        """With `count`, the oldest `count` pending entries idle for `min_idle` ms; otherwise the
        listed `ids`. Only those held by `holder` when given; `justid` claims without counting a
        delivery (a keep-alive); `ack_gone` acknowledges entries trimmed from the stream."""
        args = [self.group, self.consumer, min_idle, holder, int(justid), int(ack_gone), count]
        reply = await _CLAIM(self.redis, [channel], [*args, *ids])
        return [Claim.parse(item) for item in reply or []]

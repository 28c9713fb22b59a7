"""Acting once per idempotency key, however many copies of an event arrive.

A consumer claims the key with the stream entry that delivered it (one Lua script, so replicas
agree):

- NEW          first delivery: handle it;
- REDELIVERED  the same entry again (its last holder stopped or failed): handle it again;
- TWIN         another entry with the same key (two producers, a retried publish) is being or
               was handled elsewhere: drop it, the first delivery produces the one outcome;
- DONE         handled already: drop it.

`done()` marks the key handled once the handler's effects are out.
"""

from __future__ import annotations

from enum import StrEnum

from redis.asyncio import Redis

from shared.eventbus import current_delivery

__all__ = ["ClaimStatus", "Claims", "delivery_entry"]

_CLAIM = """
local phase = redis.call('HGET', KEYS[1], 'phase')
if not phase then
  redis.call('HSET', KEYS[1], 'phase', 'received', 'entry', ARGV[1], 'holder', ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  return 'new'
end
if phase == 'done' then return 'done' end
if redis.call('HGET', KEYS[1], 'entry') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'holder', ARGV[2])
  return 'redelivered'
end
return 'twin'
"""


class ClaimStatus(StrEnum):
    NEW = "new"
    REDELIVERED = "redelivered"
    TWIN = "twin"
    DONE = "done"

    @property
    def proceed(self) -> bool:
        return self in (ClaimStatus.NEW, ClaimStatus.REDELIVERED)


def delivery_entry(event_id: str) -> str:
    """The identity of what delivered the event being handled: its stream entry."""
    delivery = current_delivery()
    return f"{delivery.channel}/{delivery.message_id}" if delivery else f"event/{event_id}"


class Claims:
    def __init__(self, redis: Redis, prefix: str, ttl_s: int = 86_400) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._claim = redis.register_script(_CLAIM)

    async def claim(self, key: str, entry: str, holder: str) -> ClaimStatus:
        result = await self._claim(keys=[self.prefix + key], args=[entry, holder, self.ttl_s])
        return ClaimStatus(str(result))

    async def done(self, key: str) -> None:
        await self.redis.hset(self.prefix + key, "phase", "done")

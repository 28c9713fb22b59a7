"""The event bus on Redis Streams: publishing, consumer groups and the way to consume them.

- `Bus.publish` appends the event to the stream of its channel (XADD, bounded with `MAXLEN ~`) and
  PUBLISHes the same JSON on the pub/sub channel of that name for live viewers. Connection errors
  are retried with backoff, then raised as `BusUnavailable`.
- Replication: a publisher that acknowledges something to the outside passes a `Replication`
  (shared/replication.py); the publish then ends with `WAIT n timeout` on the same connection.
- `Bus.consumer()` builds a `Consumer` (shared/consumer.py): one consumer of a group reading a set
  of channels, with retries, reclaiming and dead letters (shared/dead_letter.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from shared.backoff import backoff_delay
from shared.consumer import Consumer
from shared.dead_letter import write_dead_letter
from shared.errors import BusUnavailable
from shared.eventbus import ConsumerOptions, Handler, PartitionKey
from shared.events import Envelope, encode_event
from shared.log import get_logger
from shared.redis_client import CONNECTION_ERRORS
from shared.replication import Replication
from shared.settings import Settings
from shared.stream_wire import as_text

__all__ = ["Bus"]

log = get_logger(__name__)

T = TypeVar("T")


# Publish an event once per marker key: the marker and the event are one atomic write (replicated
# together), so a node that has the marker has the event. A repeat refreshes the marker's TTL: as
# long as the same thing keeps arriving it stays deduplicated, and the refresh is a write, so a WAIT
# after it covers the event's own earlier write too (WAIT counts from the connection's last write).
_PUBLISH_ONCE = """
-- KEYS: marker, stream. ARGV: ttl_s, maxlen, data. Reply: the new entry's id, or false (repeat).
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'event', ARGV[3])
  redis.call('PUBLISH', KEYS[2], ARGV[3])
  return id
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return false
"""


class Bus:
    """Publishing and group management over one Redis client."""

    def __init__(
        self,
        redis: Redis,
        *,
        maxlen: int = 100_000,
        dead_letter_maxlen: int = 100_000,
        dead_letter_excerpt_bytes: int = 65_536,
        publish_attempts: int = 6,
    ) -> None:
        self.redis = redis
        self.maxlen = maxlen
        self.dead_letter_maxlen = dead_letter_maxlen
        self.dead_letter_excerpt_bytes = dead_letter_excerpt_bytes
        self.publish_attempts = publish_attempts

    @classmethod
    def from_settings(cls, redis: Redis, settings: Settings) -> Bus:
        return cls(
            redis,
            maxlen=settings.stream_maxlen,
            dead_letter_maxlen=settings.dead_letter_maxlen,
            dead_letter_excerpt_bytes=settings.dead_letter_excerpt_bytes,
        )

    async def publish(self, event: Envelope, *, replication: Replication | None = None) -> str:
        """Append to the event's channel stream and notify live viewers; returns the stream id.
        With `replication`, raises NotReplicated when too few replicas confirmed it in time."""
        return await self.publish_raw(event.channel, encode_event(event), replication=replication)

    async def publish_once(
        self,
        event: Envelope,
        marker: str,
        ttl_s: int,
        *,
        replication: Replication | None = None,
    ) -> str | None:
        """Publish unless `marker` exists (then refresh it): the stream id, or None for a repeat.
        With `replication`, a repeat is confirmed too: whatever answer follows covers the event
        first published under this marker."""
        data = encode_event(event)

        async def attempt() -> str | None:
            pipe = self.redis.pipeline(transaction=False)
            # EVAL, not EVALSHA: in a pipeline with WAIT a NOSCRIPT (a restarted or new primary)
            # could not be retried in place; the script is a few hundred bytes.
            pipe.execute_command(
                "EVAL", _PUBLISH_ONCE, 2, marker, event.channel, ttl_s, self.maxlen, data
            )
            if replication is not None:
                pipe.wait(replication.replicas, replication.timeout_ms)
            results: list[Any] = await pipe.execute()
            if replication is not None:
                replication.check(results[-1])
            return None if results[0] is None else as_text(results[0])

        return await self._retrying("publish", attempt)

    async def publish_many(self, events: Sequence[Envelope]) -> list[str]:
        """Publish several events in one round trip (pipelined)."""
        encoded = [(e.channel, encode_event(e)) for e in events]

        async def attempt() -> list[str]:
            pipe = self.redis.pipeline(transaction=False)
            for channel, data in encoded:
                pipe.xadd(channel, {"event": data}, maxlen=self.maxlen, approximate=True)
                pipe.publish(channel, data)
            results: list[Any] = await pipe.execute()
            return [str(r) for r in results[::2]]

        return await self._retrying("publish", attempt)

    async def publish_raw(
        self, channel: str, data: str, *, replication: Replication | None = None
    ) -> str:
        """Publish already-encoded bytes (also how tests inject malformed messages)."""

        async def attempt() -> str:
            pipe = self.redis.pipeline(transaction=False)
            pipe.xadd(channel, {"event": data}, maxlen=self.maxlen, approximate=True)
            pipe.publish(channel, data)
            if replication is not None:
                pipe.wait(replication.replicas, replication.timeout_ms)
            results: list[Any] = await pipe.execute()
            if replication is not None:
                replication.check(results[-1])
            return as_text(results[0])

        return await self._retrying("publish", attempt)

    async def ensure_group(self, channel: str, group: str, start: str = "0") -> None:
        """Create the group (and the stream) if missing.

        A new group starts at the beginning of the retained stream by default, so events published
        before a consumer type first started are not lost; consumers that must not act on stale
        events (the Responder) check the event's age themselves.
        """
        await self.create_group(channel, group, start)

    async def create_group(self, channel: str, group: str, start: str = "0") -> bool:
        """Create the group (and the stream) at `start` if missing; True when it was created."""
        try:
            await self.redis.xgroup_create(channel, group, id=start, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            return False
        return True

    async def dead_letter(
        self,
        *,
        channel: str,
        group: str,
        consumer: str,
        message_id: str,
        raw: str | bytes | None,
        error: str,
        attempts: int,
    ) -> str:
        """Move one message to the dead-letter stream with the error and acknowledge it, atomically;
        returns the dead letter's id. What the letter keeps: `write_dead_letter`."""
        return await write_dead_letter(
            self.redis,
            maxlen=self.dead_letter_maxlen,
            excerpt_bytes=self.dead_letter_excerpt_bytes,
            channel=channel,
            group=group,
            consumer=consumer,
            message_id=message_id,
            raw=raw,
            error=error,
            attempts=attempts,
        )

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        last: BaseException | None = None
        for n in range(1, self.publish_attempts + 1):
            try:
                return await attempt()
            except CONNECTION_ERRORS as exc:
                last = exc
                delay = backoff_delay(n, base=0.05, cap=1.0)
                log.warning("bus.redis_unavailable", op=what, attempt=n, retry_in=round(delay, 3))
                await asyncio.sleep(delay)
        raise BusUnavailable(
            f"{what} failed after {self.publish_attempts} attempts: {last}"
        ) from last

    def consumer(
        self,
        *,
        group: str,
        name: str,
        channels: Iterable[str],
        handler: Handler,
        options: ConsumerOptions | None = None,
        partition_key: PartitionKey | None = None,
        **tuning: Any,
    ) -> Consumer:
        """A consumer of `group`; `tuning` overrides fields of `options` (by default
        `ConsumerOptions()`) by name, e.g. `block_ms=50`."""
        return Consumer(
            self,
            group=group,
            name=name,
            channels=list(channels),
            handler=handler,
            options=replace(options or ConsumerOptions(), **tuning),
            partition_key=partition_key,
        )

    def consumer_from_settings(
        self,
        settings: Settings,
        *,
        group: str,
        name: str,
        channels: Iterable[str],
        handler: Handler,
        concurrency: int | None = None,
        partition_key: PartitionKey | None = None,
    ) -> Consumer:
        """A consumer with the configured `ConsumerOptions` (kept for callers that have only the
        settings at hand)."""
        return self.consumer(
            group=group,
            name=name,
            channels=channels,
            handler=handler,
            options=ConsumerOptions.from_settings(settings, concurrency=concurrency),
            partition_key=partition_key,
        )

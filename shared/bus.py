"""The event bus: Redis Streams with consumer groups.

- `Bus.publish` appends the event to the stream of its channel (XADD, bounded with `MAXLEN ~`) and
  PUBLISHes the same JSON on the pub/sub channel of that name for live viewers.
- A `Consumer` reads a set of channels as one consumer of a group (one group per agent type, one
  consumer per replica). Handlers run concurrently up to a bound; a message is acknowledged only
  after its handler returned. A failing handler is retried with backoff (each retry is a real
  redelivery: XCLAIM bumps the delivery counter); after `max_deliveries` the message goes to the
  dead-letter stream with the error. A handler that hangs is cancelled after `handler_timeout_s`
  and treated as failed. Messages left pending by a dead consumer are reclaimed after
  `claim_idle_ms`; a slow live handler keeps its messages claimed so nobody steals them, and never
  takes back a message another replica reclaimed from it (after it stalled).
  Handlers learn which stream entry they handle from `current_delivery()`.
- Bad data never stops a consumer: entries are read as bytes and decoded one at a time, so one
  that is not UTF-8, not JSON or not a valid envelope is dead-lettered alone with the reason while
  the rest of its batch is handled. A dead letter keeps a bounded excerpt of the payload with its
  size and SHA-256; a large excerpt is stored once even when several groups dead-letter it.
- Lost keys never stop a consumer: a stream or group deleted under it (DEL, FLUSHALL, XGROUP
  DESTROY, a restore from an older snapshot) is recreated, after the last entry this consumer had
  seen, so nothing is replayed. A message trimmed away (`MAXLEN ~`) while still pending is counted
  and dead-lettered with the reason, never dropped silently.
- Redis outages: every loop retries with backoff; nothing crashes and no acknowledged work is lost
  (an ack that could not be sent means a redelivery, never a loss: delivery is at-least-once, and
  handlers are idempotent through the events' idempotency keys).
- Replication: a publisher that acknowledges something to the outside passes a `Replication`; the
  publish then ends with `WAIT n timeout` on the same connection, and `NotReplicated` is raised
  when fewer than n replicas confirmed in time (the event is on the primary, not known to be
  safe from a failover). Everything else is published without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.client import NEVER_DECODE
from redis.exceptions import NoScriptError, ResponseError

from shared import keys
from shared.backoff import backoff_delay
from shared.errors import BusUnavailable, InvalidEventError, NotReplicated
from shared.eventbus import (
    ConsumerOptions,
    ConsumerStats,
    Delivery,
    Handler,
    PartitionKey,
    current_delivery,
    delivering,
)
from shared.events import Envelope, Event, encode_event, parse_event
from shared.log import get_logger
from shared.redis_client import CONNECTION_ERRORS
from shared.settings import Settings
from shared.tasks import KeyedLocks, join_tasks

__all__ = [
    "Bus",
    "Consumer",
    "ConsumerOptions",
    "ConsumerStats",
    "Delivery",
    "Handler",
    "PartitionKey",
    "RawFields",
    "Replication",
    "current_delivery",
]

log = get_logger(__name__)


T = TypeVar("T")
RawFields = dict[bytes, bytes]


async def _raw(redis: Redis, *args: Any) -> Any:
    """A command whose reply is read as bytes, whatever the client's decode_responses: decoding a
    whole reply at once lets one entry that is not UTF-8 fail its entire batch."""
    return await redis.execute_command(*args, **{NEVER_DECODE: True})  # type: ignore[no-untyped-call]


# A dead letter's excerpt larger than this is stored once per distinct payload (see dead_letter);
# smaller ones are cheaper inline than the marker key that deduplicates them.
_SHARE_EXCERPT_OVER = 4_096
_EXCERPT_MARKER_TTL_MS = 24 * 3600 * 1000


class _Script:
    """A Lua script, run with EVALSHA (EVAL when Redis lost its script cache, e.g. restarted)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, redis: Redis, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await _raw(redis, "EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await _raw(redis, "EVAL", self.source, len(keys), *keys, *args)


# Every claim of a pending message. XCLAIM alone cannot do it safely: it has no "only if I still
# hold it" (a keep-alive would take back what another replica reclaimed) and, for an entry trimmed
# from the stream, it silently drops it from the pending list (a message lost without a trace).
_CLAIM = _Script("""
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

# Append a dead letter and acknowledge its message, atomically. A shared excerpt is stored once per
# distinct payload: while the letter holding it is retained, later letters for the same bytes
# (other groups failing the same entry) name it in `excerpt_in` instead of copying it.
_DEAD_LETTER = _Script("""
-- KEYS: dead-letter stream, source stream, marker (id of the letter holding the excerpt)
-- ARGV: maxlen, group, message_id, marker_ttl_ms, share, excerpt, field, value, ...
local fields = {}
for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
local share = ARGV[5] == '1'
local holder = false
if share then
  holder = redis.call('GET', KEYS[3])
  if holder and #redis.call('XRANGE', KEYS[1], holder, holder) == 0 then holder = false end
end
if holder then
  for _, v in ipairs({'event', '', 'excerpt_in', holder}) do fields[#fields + 1] = v end
else
  for _, v in ipairs({'event', ARGV[6]}) do fields[#fields + 1] = v end
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
if share and not holder then redis.call('SET', KEYS[3], id, 'PX', ARGV[4]) end
redis.call('XACK', KEYS[2], ARGV[2], ARGV[3])
return id
""")


@dataclass(frozen=True)
class Replication:
    """Confirm a publish on `replicas` replicas within `timeout_ms` (Redis WAIT) before it counts
    as done. WAIT counts the replicas that acknowledged every write this connection made, so it
    is sent in the same pipeline as the write it guards: no extra round trip from here, but the
    answer waits for the replicas' acknowledgement (up to the timeout when one is slow or gone)."""

    replicas: int
    timeout_ms: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Replication | None:
        """The configured replication of acknowledgements (None when HEMOSTAT_REDIS_WAIT_REPLICAS
        is 0)."""
        if settings.redis_wait_replicas <= 0:
            return None
        return cls(settings.redis_wait_replicas, settings.redis_wait_timeout_ms)

    def check(self, confirmed: Any) -> None:
        if int(confirmed) < self.replicas:
            raise NotReplicated(
                f"confirmed on {int(confirmed)} of {self.replicas} replica(s) within "
                f"{self.timeout_ms} ms",
                confirmed=int(confirmed),
                wanted=self.replicas,
            )


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
            return None if results[0] is None else _text(results[0])

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
            return _text(results[0])

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
        returns the dead letter's id.

        The letter keeps an excerpt of the payload (`event`: its first `dead_letter_excerpt_bytes`,
        bad bytes backslash-escaped so readers can decode it; `truncated` says whether that is all)
        with the whole payload's `size` and `sha256`. `raw=None` means the payload is gone (the
        entry was trimmed). An excerpt over 4 KiB is stored once per distinct payload: the letters
        of other groups failing the same bytes name the letter holding it in `excerpt_in`.
        """
        payload = raw.encode() if isinstance(raw, str) else (raw or b"")
        excerpt, truncated = _excerpt(payload, self.dead_letter_excerpt_bytes)
        digest = hashlib.sha256(payload).hexdigest() if raw is not None else ""
        fields = {
            "channel": channel,
            "group": group,
            "consumer": consumer,
            "message_id": message_id,
            "attempts": str(attempts),
            # Exception texts may carry lone surrogates, which the client refuses to encode.
            "error": error[:2000].encode("utf-8", "backslashreplace").decode(),
            "failed_at": f"{time.time():.3f}",
            "size": str(len(payload)),
            "sha256": digest,
            "truncated": "true" if truncated else "false",
        }
        share = len(excerpt.encode()) > _SHARE_EXCERPT_OVER
        marker = f"{keys.DEAD_LETTER}:excerpt:{digest}"
        args = [self.dead_letter_maxlen, group, message_id, _EXCERPT_MARKER_TTL_MS, int(share)]
        args += [excerpt, *(item for pair in fields.items() for item in pair)]
        letter_id = await _DEAD_LETTER(self.redis, [keys.DEAD_LETTER, channel, marker], args)
        return _text(letter_id)

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


@dataclass
class _InFlight:
    channel: str
    message_id: str
    claimed_at: float = field(default_factory=time.monotonic)
    lost: bool = False  # another consumer holds it now: its delivery decides, not ours
    trimmed: bool = False  # deleted from the stream (and acknowledged) while its handler ran
    task: asyncio.Task[None] | None = None


class _ClaimStatus(StrEnum):
    CLAIMED = "claimed"
    LOST = "lost"
    GONE = "gone"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class _Claim:
    """One entry of a `_CLAIM` reply."""

    message_id: str
    status: _ClaimStatus
    holder: str = ""
    deliveries: int = 0
    fields: RawFields | None = None

    @classmethod
    def parse(cls, item: Sequence[Any]) -> _Claim:
        return cls(
            message_id=_text(item[0]),
            status=_ClaimStatus(_text(item[1])),
            holder=_text(item[2]) if len(item) > 2 else "",
            deliveries=int(item[3]) if len(item) > 3 else 0,
            fields=_fields(item[4]) if len(item) > 4 else None,
        )


class Consumer:
    """One consumer of a group over several channels. `run()` until `stop()`, then drains."""

    def __init__(
        self,
        bus: Bus,
        *,
        group: str,
        name: str,
        channels: list[str],
        handler: Handler,
        options: ConsumerOptions,
        partition_key: PartitionKey | None,
    ) -> None:
        if not channels:
            raise ValueError("a consumer needs at least one channel")
        self.bus = bus
        self.redis = bus.redis
        self.group = group
        self.name = name
        self.channels = channels
        self.handler = handler
        self.options = options
        self.concurrency = options.concurrency
        self.block_ms = options.block_ms
        self.max_deliveries = options.max_deliveries
        self.claim_idle_ms = options.claim_idle_ms
        self.reclaim_interval_s = options.reclaim_interval_s
        self.retry_backoff_s = options.retry_backoff_s
        self.handler_timeout_s = options.handler_timeout_s
        self.grace_s = options.grace_s
        self.partition_key = partition_key
        self.stats = ConsumerStats()
        self._inflight: dict[tuple[str, str], _InFlight] = {}
        self._acks: dict[str, list[str]] = defaultdict(list)
        self._ack_ready = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._acks_closed = False
        self._locks = KeyedLocks()
        self._connected = True
        # Per channel, the newest entry id this consumer knows its group had reached: where a
        # lost group is recreated.
        self._seen: dict[str, tuple[int, int]] = {}
        self._recovering = asyncio.Lock()

    # ------------------------------------------------------------------ lifecycle

    @property
    def connected(self) -> bool:
        """False while Redis is unreachable (for health reporting)."""
        return self._connected

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def stop(self) -> None:
        """Stop reading new messages; `run()` then waits for in-flight handlers and returns."""
        self._stopping.set()

    async def run(self) -> None:
        await self._until_connected(self._ensure_groups)
        ack_task = asyncio.create_task(self._ack_loop(), name=f"{self.group}-acks")
        reclaim_task = asyncio.create_task(self._reclaim_loop(), name=f"{self.group}-reclaim")
        try:
            await self._until_connected(self._resume_own_pending)
            await self._read_loop()
        finally:
            self._stopping.set()
            await self._drain()
            # Background loops end on the stop flag rather than by cancellation: a cancel landing
            # inside a Redis call can be swallowed by the client and leave the task hanging.
            self._acks_closed = True
            self._ack_ready.set()
            for exc in await join_tasks(reclaim_task, ack_task, timeout=10.0):
                log.error("bus.background_task_failed", group=self.group, error=str(exc))
            await self._flush_acks(deadline=time.monotonic() + 5.0)

    async def _drain(self) -> None:
        tasks = [f.task for f in self._inflight.values() if f.task is not None]
        if not tasks:
            return
        log.info("bus.draining", group=self.group, inflight=len(tasks), grace_s=self.grace_s)
        _, pending = await asyncio.wait(tasks, timeout=self.grace_s)
        if pending:
            # Not acknowledged: the messages stay pending and another replica reclaims them.
            log.warning("bus.drain_timeout", group=self.group, cancelled=len(pending))
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=5.0)

    async def _sleep(self, seconds: float) -> bool:
        """Sleep, returning early (False) when the consumer is stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        return not self._stopping.is_set()

    async def _until_connected(self, op: Callable[[], Awaitable[None]]) -> None:
        attempt = 0
        while not self._stopping.is_set():
            try:
                await op()
                self._connected = True
                return
            except CONNECTION_ERRORS as exc:
                attempt += 1
                self._connected = False
                delay = backoff_delay(attempt, base=0.1, cap=5.0)
                log.warning(
                    "bus.redis_unavailable", group=self.group, error=str(exc), retry_in=delay
                )
                await self._sleep(delay)

    # ------------------------------------------------------------------ groups

    async def _ensure_groups(self) -> None:
        for channel in self.channels:
            await self.bus.create_group(channel, self.group)
            groups = await _raw(self.redis, "XINFO", "GROUPS", channel)
            for info in map(_mapping, groups or []):
                if _text(info.get(b"name")) == self.group:
                    self._saw(channel, _text(info.get(b"last-delivered-id") or b"0-0"))

    def _saw(self, channel: str, message_id: str) -> None:
        self._seen[channel] = max(self._seen.get(channel, (0, 0)), _parse_id(message_id))

    async def _recover_groups(self, cause: Exception) -> None:
        """The stream or the group vanished under us (DEL, FLUSHALL, XGROUP DESTROY, a restart
        without persistence, a restore from an older snapshot): recreate it and carry on."""
        async with self._recovering:  # the read loop, the reclaim loop and retries may all notice
            await self._until_connected(lambda: self._recreate_groups(str(cause)))

    async def _recreate_groups(self, cause: str) -> None:
        for channel in self.channels:
            start = await self._restart_point(channel)
            if await self.bus.create_group(channel, self.group, start):
                self.stats.groups_recreated += 1
                log.warning(
                    "bus.group_recreated",
                    channel=channel,
                    group=self.group,
                    start=start,
                    cause=cause,
                )

    async def _restart_point(self, channel: str) -> str:
        """Where a lost group restarts: after the last entry this consumer knows the group had
        reached, so handled events are not replayed (a whole retained stream replayed into the
        Analyzer or the Alert agent would act on stale events again); from the start when the
        stream was deleted or replaced (its ids no longer reach that far), so that no event
        published since is skipped."""
        seen = self._seen.get(channel, (0, 0))
        if seen == (0, 0):
            return "0"
        try:
            info = _mapping(await _raw(self.redis, "XINFO", "STREAM", channel))
        except ResponseError as exc:
            if "no such key" not in str(exc).lower():
                raise
            return "0"
        last = _parse_id(_text(info.get(b"last-generated-id") or b"0-0"))
        return f"{seen[0]}-{seen[1]}" if last >= seen else "0"

    # ------------------------------------------------------------------ reading

    async def _read_loop(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            free = self.concurrency - len(self._inflight)
            if free <= 0:
                self._slot_freed.clear()
                await _first(self._slot_freed.wait(), self._stopping.wait())
                continue
            try:
                response = await _raw(
                    self.redis, "XREADGROUP", "GROUP", self.group, self.name, "COUNT", free,
                    "BLOCK", self.block_ms, "STREAMS", *self.channels, *[">"] * len(self.channels),
                )  # fmt: skip
            except CONNECTION_ERRORS as exc:  # first: ReadOnlyError (a demoted primary) is one
                attempt += 1
                self._connected = False
                delay = backoff_delay(attempt, base=0.1, cap=5.0)
                log.warning("bus.read_failed", group=self.group, error=str(exc), retry_in=delay)
                await self._sleep(delay)
                continue
            except ResponseError as exc:
                if not _group_lost(exc):
                    raise
                log.warning("bus.group_missing", group=self.group, error=str(exc))
                await self._recover_groups(exc)
                continue
            attempt = 0
            self._connected = True
            for channel, messages in _stream_items(response):
                for message_id, fields in messages:
                    self._saw(channel, message_id)
                    self._dispatch(channel, message_id, fields, attempt=1)

    def _dispatch(
        self, channel: str, message_id: str, fields: RawFields | None, attempt: int
    ) -> None:
        key = (channel, message_id)
        if key in self._inflight:
            return
        flight = _InFlight(channel, message_id)
        flight.task = asyncio.create_task(self._process(flight, fields, attempt))
        self._inflight[key] = flight

        def done(_: asyncio.Task[None]) -> None:
            self._inflight.pop(key, None)
            self._slot_freed.set()

        flight.task.add_done_callback(done)

    async def _process(self, flight: _InFlight, fields: RawFields | None, attempt: int) -> None:
        channel, message_id = flight.channel, flight.message_id
        raw = (fields or {}).get(b"event")
        try:
            event = parse_event(raw, channel)
        except InvalidEventError as exc:
            self.stats.invalid += 1
            log.error(
                "bus.invalid_event",
                channel=channel,
                message_id=message_id,
                group=self.group,
                error=str(exc),
            )
            shown = raw if raw is not None else _render(fields)
            await self._dead_letter(channel, message_id, shown, str(exc), attempt)
            return
        assert raw is not None  # parse_event refuses a missing payload
        while True:
            failure = await self._run_handler(flight, event, attempt)
            if failure is None:
                self.stats.handled += 1
                if not flight.lost:
                    self._ack(channel, message_id)
                return
            error, cause = failure
            where = {"channel": channel, "message_id": message_id, "event_id": event.id}
            if flight.lost:
                # Another replica reclaimed it while this one stalled: its delivery decides.
                log.warning("bus.handler_failed_after_takeover", **where, error=error)
                return
            if flight.trimmed:
                await self._dead_letter_trimmed(flight, raw, attempt, last_error=error)
                return
            if attempt >= self.max_deliveries:
                log.error("bus.dead_lettered", **where, attempts=attempt, error=error)
                await self._dead_letter(channel, message_id, raw, error, attempt)
                return
            delay = backoff_delay(attempt, base=self.retry_backoff_s, cap=30.0)
            log.warning(
                "bus.handler_failed",
                **where,
                attempt=attempt,
                retry_in=round(delay, 3),
                error=error,
                exc_info=cause,
            )
            if not await self._sleep(delay):
                return  # stopping: left pending, redelivered later
            claim = await self._claim_for_retry(channel, message_id)
            if claim is None:
                return  # stopping
            if claim.status is _ClaimStatus.LOST:
                log.info("bus.retry_taken_over", **where, holder=claim.holder)
                return
            if claim.status is _ClaimStatus.GONE:
                self.stats.trimmed += 1
                await self._dead_letter_trimmed(flight, raw, attempt, last_error=error)
                return
            if claim.status is _ClaimStatus.SKIPPED:
                # No longer pending anywhere (its group was recreated, or a replica that took it
                # over finished it): retry here rather than risk dropping it.
                log.warning("bus.retry_untracked", **where, attempt=attempt + 1)
            attempt += 1

    async def _run_handler(
        self, flight: _InFlight, event: Event, attempt: int
    ) -> tuple[str, Exception] | None:
        """Run the handler once: None when it succeeded, else what went wrong."""
        delivery = Delivery(flight.channel, flight.message_id, self.group, self.name, attempt)
        deadline = asyncio.timeout(self.handler_timeout_s)
        try:
            with delivering(delivery):
                key = self.partition_key(event) if self.partition_key else None
                # The deadline starts once the partition lock is held: waiting behind another
                # event of the same key is not this handler hanging.
                async with self._locks.hold(key), deadline:
                    await self.handler(event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # loop boundary: one bad message never kills the consumer
            self.stats.failed += 1
            if isinstance(exc, TimeoutError) and deadline.expired():
                self.stats.timed_out += 1
                return f"handler timed out after {self.handler_timeout_s:g}s (cancelled)", exc
            return f"{type(exc).__name__}: {exc}", exc
        return None

    async def _claim_for_retry(self, channel: str, message_id: str) -> _Claim | None:
        """Redeliver to ourselves (a full claim bumps Redis's delivery counter), only if we still
        hold the message. None when stopping."""
        while not self._stopping.is_set():
            try:
                [claim] = await self._claim(channel, ids=[message_id], holder=self.name)
                return claim
            except CONNECTION_ERRORS:
                await self._sleep(0.5)
            except ResponseError as exc:
                if not _group_lost(exc):
                    raise
                await self._recover_groups(exc)
                return _Claim(message_id, _ClaimStatus.SKIPPED)  # its pending entry went too
        return None

    async def _claim(
        self,
        channel: str,
        *,
        ids: Sequence[str] = (),
        count: int = 0,
        min_idle: int = 0,
        holder: str = "",
        justid: bool = False,
        ack_gone: bool = False,
    ) -> list[_Claim]:
        args = [self.group, self.name, min_idle, holder, int(justid), int(ack_gone), count, *ids]
        reply = await _CLAIM(self.redis, [channel], args)
        return [_Claim.parse(item) for item in reply or []]

    def _trimmed_reason(self) -> str:
        return f"trimmed from the stream while pending (MAXLEN ~ {self.bus.maxlen})"

    async def _dead_letter_trimmed(
        self, flight: _InFlight, raw: bytes, attempts: int, *, last_error: str
    ) -> None:
        """A message whose handler failed after its entry was trimmed: it cannot be redelivered,
        so it is dead-lettered now, with the payload still in hand."""
        error = f"{self._trimmed_reason()}; last error: {last_error}"
        log.error(
            "bus.dead_lettered", channel=flight.channel, message_id=flight.message_id, error=error
        )
        await self._dead_letter(flight.channel, flight.message_id, raw, error, attempts)

    async def _dead_letter(
        self, channel: str, message_id: str, raw: bytes | None, error: str, attempts: int
    ) -> None:
        self.stats.dead_lettered += 1

        async def move() -> None:
            await self.bus.dead_letter(
                channel=channel,
                group=self.group,
                consumer=self.name,
                message_id=message_id,
                raw=raw,
                error=error,
                attempts=attempts,
            )

        await self._until_connected(move)

    # ------------------------------------------------------------------ acknowledging

    def _ack(self, channel: str, message_id: str) -> None:
        self._acks[channel].append(message_id)
        self._ack_ready.set()

    async def _ack_loop(self) -> None:
        while True:
            await self._ack_ready.wait()
            self._ack_ready.clear()
            sent = await self._send_acks()
            if self._acks_closed:
                return  # the final flush happens in run()
            if not sent:
                await asyncio.sleep(0.5)
                self._ack_ready.set()

    async def _send_acks(self) -> bool:
        if not self._acks:
            return True
        batch, self._acks = self._acks, defaultdict(list)
        try:
            # XACK of a lost group or stream answers 0, not an error: nothing to special-case.
            pipe = self.redis.pipeline(transaction=False)
            for channel, ids in batch.items():
                pipe.xack(channel, self.group, *ids)
            await pipe.execute()
            return True
        except CONNECTION_ERRORS as exc:
            for channel, ids in batch.items():
                self._acks[channel][:0] = ids
            log.warning("bus.ack_failed", group=self.group, error=str(exc), pending=len(batch))
            return False

    async def _flush_acks(self, deadline: float) -> None:
        while self._acks and time.monotonic() < deadline:
            if not await self._send_acks():
                await asyncio.sleep(0.2)
        if self._acks:
            # Redis still down at shutdown: these will be redelivered (at-least-once).
            log.warning(
                "bus.acks_unsent", group=self.group, count=sum(map(len, self._acks.values()))
            )

    # ------------------------------------------------------------------ reclaiming

    async def _resume_own_pending(self) -> None:
        """Messages this consumer name held in a previous life (same instance name) are ours."""
        for channel in self.channels:
            try:
                claims = await self._claim(channel, count=self.concurrency, holder=self.name)
            except ResponseError as exc:
                if not _group_lost(exc):
                    raise
                await self._recover_groups(exc)  # a new group holds nothing of ours
                continue
            await self._take_over(channel, claims)

    async def _reclaim_loop(self) -> None:
        while await self._sleep(self.reclaim_interval_s):
            try:
                await self._keep_claims_fresh()
                for channel in self.channels:
                    free = self.concurrency - len(self._inflight)
                    if free <= 0:
                        break
                    claims = await self._claim(channel, count=free, min_idle=self.claim_idle_ms)
                    await self._take_over(channel, claims)
            except CONNECTION_ERRORS as exc:
                log.warning("bus.reclaim_failed", group=self.group, error=str(exc))
            except ResponseError as exc:
                if not _group_lost(exc):
                    log.exception("bus.reclaim_error", group=self.group)
                    continue
                await self._recover_groups(exc)
            except Exception:  # loop boundary
                log.exception("bus.reclaim_error", group=self.group)

    async def _keep_claims_fresh(self) -> None:
        """A live handler (running or backing off) resets its messages' idle time so nobody
        reclaims them, but only while this consumer still holds them: a message another replica
        reclaimed (this one stalled) stays with that replica."""
        now = time.monotonic()
        stale: dict[str, dict[str, _InFlight]] = defaultdict(dict)
        for flight in self._inflight.values():
            if flight.lost or flight.trimmed:
                continue
            if (now - flight.claimed_at) * 1000 >= self.claim_idle_ms / 3:
                stale[flight.channel][flight.message_id] = flight
        for channel, flights in stale.items():
            claims = await self._claim(
                channel, ids=list(flights), holder=self.name, justid=True, ack_gone=True
            )
            for claim in claims:
                flight = flights[claim.message_id]
                flight.claimed_at = now
                where = {"channel": channel, "message_id": claim.message_id, "group": self.group}
                if claim.status is _ClaimStatus.LOST:
                    flight.lost = True
                    self.stats.claims_lost += 1
                    log.warning("bus.claim_lost", **where, holder=claim.holder)
                elif claim.status is _ClaimStatus.GONE:
                    # Acknowledged by the claim script so no replica reports it while the handler
                    # still runs; if the handler fails, it is dead-lettered with its payload.
                    flight.trimmed = True
                    self.stats.trimmed += 1
                    log.warning("bus.trimmed_while_pending", **where, reason=self._trimmed_reason())

    async def _take_over(self, channel: str, claims: list[_Claim]) -> None:
        for claim in claims:
            message_id = claim.message_id
            if claim.status is _ClaimStatus.GONE:
                self.stats.trimmed += 1
                delivered = f"{claim.deliveries} deliver{'y' if claim.deliveries == 1 else 'ies'}"
                error = f"{self._trimmed_reason()}; held by {claim.holder} after {delivered}"
                log.error("bus.dead_lettered", channel=channel, message_id=message_id, error=error)
                await self._dead_letter(channel, message_id, None, error, claim.deliveries)
                continue
            if claim.status is not _ClaimStatus.CLAIMED:
                continue
            if claim.deliveries >= self.max_deliveries:
                error = (
                    f"not acknowledged after {claim.deliveries} deliveries "
                    f"(last consumer {claim.holder} crashed or stalled)"
                )
                log.error("bus.dead_lettered", channel=channel, message_id=message_id, error=error)
                raw = (claim.fields or {}).get(b"event")
                shown = raw if raw is not None else _render(claim.fields)
                await self._dead_letter(channel, message_id, shown, error, claim.deliveries)
                continue
            self.stats.reclaimed += 1
            log.info(
                "bus.reclaimed",
                channel=channel,
                message_id=message_id,
                from_consumer=claim.holder,
                delivery=claim.deliveries + 1,
            )
            self._dispatch(channel, message_id, claim.fields, attempt=claim.deliveries + 1)


def _group_lost(exc: ResponseError) -> bool:
    """NOGROUP: the group (or its stream) is gone. UNBLOCKED: a blocked read's stream was deleted
    (DEL, FLUSHALL/FLUSHDB) while it waited."""
    message = str(exc)
    return "NOGROUP" in message or message.startswith("UNBLOCKED")


def _text(value: Any) -> str:
    """Decode a reply element read as bytes; names and ids are ours, but never fail on junk."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    return str(value)


def _mapping(reply: Any) -> dict[Any, Any]:
    """A map reply: already a dict (parsed by redis-py, or RESP3), or a flat key/value list."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2], strict=True))


def _fields(raw: Any) -> RawFields | None:
    """An entry's fields as a dict of bytes: parsed by redis-py, or a flat list from a script."""
    if raw is None:
        return None
    return {bytes(k): bytes(v) for k, v in _mapping(raw).items()}


def _render(fields: RawFields | None) -> bytes:
    """An entry without an `event` field, shown whole in its dead letter (bytes reprs: ASCII, each
    bad byte escaped once)."""
    return repr(fields).encode()


def _parse_id(message_id: str) -> tuple[int, int]:
    ms, _, seq = message_id.partition("-")
    return int(ms), int(seq or 0)


def _excerpt(payload: bytes, limit: int) -> tuple[str, bool]:
    """At most `limit` bytes of the payload as text, and whether that leaves some out. The cut
    falls on a character boundary; where the payload is not UTF-8 the bad bytes are
    backslash-escaped, so whoever reads the dead letter can decode it in turn."""
    head = payload[:limit]
    try:
        return head.decode("utf-8"), len(payload) > limit
    except UnicodeDecodeError as exc:
        if exc.reason == "unexpected end of data" and len(payload) > limit:
            return head[: exc.start].decode("utf-8"), True  # the cut split a character
    shown = head.decode("utf-8", errors="backslashreplace")  # up to 4 characters per bad byte
    text = shown.encode()[:limit].decode("utf-8", errors="ignore")
    return text, len(payload) > limit or len(text) < len(shown)


def _stream_items(response: Any) -> list[tuple[str, list[tuple[str, RawFields | None]]]]:
    """XREADGROUP replies are a list of [stream, messages] (RESP2) or a dict (RESP3)."""
    if not response:
        return []
    if isinstance(response, dict):
        streams = [(k, v[0] if v and isinstance(v[0], list) else v) for k, v in response.items()]
    else:
        streams = [(stream, messages) for stream, messages in response]
    return [
        (_text(stream), [(_text(message_id), _fields(fields)) for message_id, fields in messages])
        for stream, messages in streams
    ]


async def _first(*aws: Awaitable[Any]) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()

"""A group consumer of the event bus: one consumer of a group (one group per agent type, one
consumer per replica) reading a set of channels.

- Handlers run concurrently up to a bound; a message is acknowledged only after its handler
  returned. A failing handler is retried with backoff (each retry is a real redelivery: a claim
  bumps the delivery counter); after `max_deliveries` the message goes to the dead-letter stream
  with the error. A handler that hangs is cancelled after `handler_timeout_s` and treated as
  failed. Messages left pending by a dead consumer are reclaimed after `claim_idle_ms`; a slow
  live handler keeps its messages claimed so nobody steals them, and never takes back a message
  another replica reclaimed from it (after it stalled). Claims: shared/redelivery.py.
  Handlers learn which stream entry they handle from `current_delivery()`.
- Bad data never stops a consumer: entries are read as bytes and decoded one at a time, so one
  that is not UTF-8, not JSON or not a valid envelope is dead-lettered alone with the reason while
  the rest of its batch is handled.
- Lost keys never stop a consumer: a stream or group deleted under it (DEL, FLUSHALL, XGROUP
  DESTROY, a restore from an older snapshot) is recreated, after the last entry this consumer had
  seen, so nothing is replayed. A message trimmed away (`MAXLEN ~`) while still pending is counted
  and dead-lettered with the reason, never dropped silently.
- Redis outages: every loop retries with backoff; nothing crashes and no acknowledged work is lost
  (an ack that could not be sent means a redelivery, never a loss: delivery is at-least-once, and
  handlers are idempotent through the events' idempotency keys).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from shared.acks import AckBatcher
from shared.backoff import backoff_delay
from shared.consumer_groups import ConsumerGroups
from shared.errors import InvalidEventError
from shared.eventbus import (
    ConsumerOptions,
    ConsumerStats,
    Delivery,
    Handler,
    PartitionKey,
    delivering,
)
from shared.events import Event, parse_event
from shared.log import get_logger
from shared.redelivery import Claim, Claimer, ClaimStatus
from shared.redis_client import CONNECTION_ERRORS
from shared.stream_wire import (
    RawFields,
    is_group_lost,
    raw_command,
    render_fields,
    stream_items,
)
from shared.tasks import KeyedLocks, join_tasks

if TYPE_CHECKING:
    from shared.bus import Bus

__all__ = ["Consumer"]

log = get_logger(__name__)


@dataclass
class _InFlight:
    channel: str
    message_id: str
    claimed_at: float = field(default_factory=time.monotonic)
    lost: bool = False  # another consumer holds it now: its delivery decides, not ours
    trimmed: bool = False  # deleted from the stream (and acknowledged) while its handler ran
    task: asyncio.Task[None] | None = None


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
        self._acks = AckBatcher(self.redis, group)
        self._claim = Claimer(self.redis, group=group, consumer=name)
        self._groups = ConsumerGroups(bus, group=group, channels=channels, stats=self.stats)
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._locks = KeyedLocks()
        self._connected = True
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
        await self._until_connected(self._groups.ensure)
        ack_task = asyncio.create_task(self._acks.run(), name=f"{self.group}-acks")
        reclaim_task = asyncio.create_task(self._reclaim_loop(), name=f"{self.group}-reclaim")
        try:
            await self._until_connected(self._resume_own_pending)
            await self._read_loop()
        finally:
            self._stopping.set()
            await self._drain()
            # Background loops end on the stop flag rather than by cancellation: a cancel landing
            # inside a Redis call can be swallowed by the client and leave the task hanging.
            self._acks.close()
            for exc in await join_tasks(reclaim_task, ack_task, timeout=10.0):
                log.error("bus.background_task_failed", group=self.group, error=str(exc))
            await self._acks.flush(deadline=time.monotonic() + 5.0)

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

    async def _recover_groups(self, cause: Exception) -> None:
        """The stream or the group vanished under us (DEL, FLUSHALL, XGROUP DESTROY, a restart
        without persistence, a restore from an older snapshot): recreate it and carry on."""
        async with self._recovering:  # the read loop, the reclaim loop and retries may all notice
            await self._until_connected(lambda: self._groups.recreate(str(cause)))

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
                response = await raw_command(
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
                if not is_group_lost(exc):
                    raise
                log.warning("bus.group_missing", group=self.group, error=str(exc))
                await self._recover_groups(exc)
                continue
            attempt = 0
            self._connected = True
            for channel, messages in stream_items(response):
                for message_id, fields in messages:
                    self._groups.saw(channel, message_id)
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
            shown = raw if raw is not None else render_fields(fields)
            await self._dead_letter(channel, message_id, shown, str(exc), attempt)
            return
        assert raw is not None  # parse_event refuses a missing payload
        while True:
            failure = await self._run_handler(flight, event, attempt)
            if failure is None:
                self.stats.handled += 1
                if not flight.lost:
                    self._acks.add(channel, message_id)
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
            if claim.status is ClaimStatus.LOST:
                log.info("bus.retry_taken_over", **where, holder=claim.holder)
                return
            if claim.status is ClaimStatus.GONE:
                self.stats.trimmed += 1
                await self._dead_letter_trimmed(flight, raw, attempt, last_error=error)
                return
            if claim.status is ClaimStatus.SKIPPED:
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

    async def _claim_for_retry(self, channel: str, message_id: str) -> Claim | None:
        """Redeliver to ourselves (a full claim bumps Redis's delivery counter), only if we still
        hold the message. None when stopping."""
        while not self._stopping.is_set():
            try:
                [claim] = await self._claim(channel, ids=[message_id], holder=self.name)
                return claim
            except CONNECTION_ERRORS:
                await self._sleep(0.5)
            except ResponseError as exc:
                if not is_group_lost(exc):
                    raise
                await self._recover_groups(exc)
                return Claim(message_id, ClaimStatus.SKIPPED)  # its pending entry went too
        return None

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

    # ------------------------------------------------------------------ reclaiming

    async def _resume_own_pending(self) -> None:
        """Messages this consumer name held in a previous life (same instance name) are ours."""
        for channel in self.channels:
            try:
                claims = await self._claim(channel, count=self.concurrency, holder=self.name)
            except ResponseError as exc:
                if not is_group_lost(exc):
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
                if not is_group_lost(exc):
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
                if claim.status is ClaimStatus.LOST:
                    flight.lost = True
                    self.stats.claims_lost += 1
                    log.warning("bus.claim_lost", **where, holder=claim.holder)
                elif claim.status is ClaimStatus.GONE:
                    # Acknowledged by the claim script so no replica reports it while the handler
                    # still runs; if the handler fails, it is dead-lettered with its payload.
                    flight.trimmed = True
                    self.stats.trimmed += 1
                    log.warning("bus.trimmed_while_pending", **where, reason=self._trimmed_reason())

    async def _take_over(self, channel: str, claims: list[Claim]) -> None:
        for claim in claims:
            message_id = claim.message_id
            if claim.status is ClaimStatus.GONE:
                self.stats.trimmed += 1
                delivered = f"{claim.deliveries} deliver{'y' if claim.deliveries == 1 else 'ies'}"
                error = f"{self._trimmed_reason()}; held by {claim.holder} after {delivered}"
                log.error("bus.dead_lettered", channel=channel, message_id=message_id, error=error)
                await self._dead_letter(channel, message_id, None, error, claim.deliveries)
                continue
            if claim.status is not ClaimStatus.CLAIMED:
                continue
            if claim.deliveries >= self.max_deliveries:
                error = (
                    f"not acknowledged after {claim.deliveries} deliveries "
                    f"(last consumer {claim.holder} crashed or stalled)"
                )
                log.error("bus.dead_lettered", channel=channel, message_id=message_id, error=error)
                raw = (claim.fields or {}).get(b"event")
                shown = raw if raw is not None else render_fields(claim.fields)
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


async def _first(*aws: Awaitable[Any]) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()

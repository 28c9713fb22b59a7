"""An in-memory `EventBus` for tests of a handler's logic (dramatiq's `StubBroker`): no Redis.

    stub = StubBus()
    agent = SomeAgent(settings=settings, redis=None, bus=stub)   # run() builds its consumer here
    await stub.publish(event)
    await stub.join(Channel.HEALTH_ALERT)          # every group on it handled everything
    assert stub.published(Channel.REMEDIATION_NEEDED) == [...]

What it keeps like the Redis bus:
- Events travel as their JSON (encoded on publish, parsed on delivery), so a handler receives what
  it would from Redis, and a payload that does not parse is dead-lettered with the reason.
- One group per agent type reads every event of its channels; the consumers of a group (replicas)
  share its events. A group created with start "0" (the default, as `consumer_from_settings` does)
  reads the whole channel, events published before it existed included; "$" only newer ones; an
  entry id only later ones. Entry ids are `<ms>-<seq>` like XADD's.
- Handlers run under `current_delivery()` with the entry's `Delivery`, concurrently up to the
  consumer's concurrency, one at a time per partition key, cancelled after the handler timeout.
- A failing handler is redelivered (same `message_id`, `attempt` + 1) until the settings' max
  deliveries, then the event goes to `dead_letters` with the error and the exception.

What it leaves out: retry backoff (retries are immediate; of `ConsumerOptions` only
concurrency, max_deliveries and handler_timeout_s apply), reclaiming from dead consumers,
acknowledgements, trimming (`MAXLEN`), lost streams or groups, replication (`replication=` is
accepted and ignored: in memory, everything is "confirmed"), marker TTLs of `publish_once`
(a marker never expires), and pub/sub for live viewers. Those are the Redis bus's own tests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from shared.errors import InvalidEventError
from shared.eventbus import (
    ConsumerOptions,
    ConsumerStats,
    Delivery,
    EventBus,
    Handler,
    PartitionKey,
    delivering,
)
from shared.events import Envelope, Event, encode_event, parse_event
from shared.replication import Replication
from shared.settings import Settings
from shared.tasks import KeyedLocks

__all__ = ["DeadLetter", "StubBus", "StubConsumer"]


@dataclass(frozen=True)
class DeadLetter:
    """An event a group gave up on: its handler failed `attempts` times (or it did not parse)."""

    channel: str
    group: str
    consumer: str
    message_id: str
    event: Event | None
    error: str
    attempts: int
    exception: BaseException


@dataclass(frozen=True)
class _Entry:
    message_id: str
    data: str


@dataclass
class _Group:
    cursor: int  # index of the next entry to deliver
    inflight: int = 0  # taken and not finished (retries included)


def _id_key(message_id: str) -> tuple[int, int]:
    ms, _, seq = message_id.partition("-")
    return int(ms), int(seq or 0)


class StubBus:
    """Queues in memory; every published event stays inspectable (`published`)."""

    def __init__(self) -> None:
        self._streams: dict[str, list[_Entry]] = {}
        self._groups: dict[str, dict[str, _Group]] = {}
        self._markers: set[str] = set()
        self._last_id = (0, 0)
        self._wake = asyncio.Event()
        self._raised: set[int] = set()  # dead letters a fail-fast join raised (each once)
        self.dead_letters: list[DeadLetter] = []
        self.consumers: list[StubConsumer] = []

    # ------------------------------------------------------------------ publishing

    async def publish(self, event: Envelope, *, replication: Replication | None = None) -> str:
        return self._append(event.channel, encode_event(event))

    async def publish_many(self, events: Sequence[Envelope]) -> list[str]:
        return [self._append(e.channel, encode_event(e)) for e in events]

    async def publish_once(
        self,
        event: Envelope,
        marker: str,
        ttl_s: int,
        *,
        replication: Replication | None = None,
    ) -> str | None:
        if marker in self._markers:
            return None
        self._markers.add(marker)
        return self._append(event.channel, encode_event(event))

    async def publish_raw(self, channel: str, data: str) -> str:
        """Append already-encoded data (how a test feeds a malformed message)."""
        return self._append(channel, data)

    def _append(self, channel: str, data: str) -> str:
        ms = int(time.time() * 1000)
        last_ms, last_seq = self._last_id
        self._last_id = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
        message_id = f"{self._last_id[0]}-{self._last_id[1]}"
        self._streams.setdefault(channel, []).append(_Entry(message_id, data))
        self._changed()
        return message_id

    # ------------------------------------------------------------------ inspecting

    def published(self, channel: str) -> list[Event]:
        """Every event published on `channel`, in order (handled or not)."""
        return [parse_event(e.data, channel) for e in self._streams.get(channel, [])]

    def dead_letters_on(self, channel: str) -> list[DeadLetter]:
        return [d for d in self.dead_letters if d.channel == channel]

    # ------------------------------------------------------------------ groups and consumers

    async def create_group(self, channel: str, group: str, start: str = "0") -> bool:
        return self._create_group(channel, group, start)

    def _create_group(self, channel: str, group: str, start: str = "0") -> bool:
        groups = self._groups.setdefault(channel, {})
        if group in groups:
            return False
        entries = self._streams.setdefault(channel, [])
        if start == "$":
            cursor = len(entries)
        else:
            after = _id_key(start)
            cursor = next(
                (i for i, e in enumerate(entries) if _id_key(e.message_id) > after), len(entries)
            )
        groups[group] = _Group(cursor)
        return True

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
    ) -> StubConsumer:
        """A consumer of `group` (created at "0" if missing, as the Redis consumer does). Of its
        options, the stub uses concurrency, max_deliveries and handler_timeout_s."""
        consumer = StubConsumer(
            self,
            group=group,
            name=name,
            channels=list(channels),
            handler=handler,
            options=replace(options or ConsumerOptions(), **tuning),
            partition_key=partition_key,
        )
        for channel in consumer.channels:
            self._create_group(channel, group)
        self.consumers.append(consumer)
        return consumer

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
    ) -> StubConsumer:
        return self.consumer(
            group=group,
            name=name,
            channels=channels,
            handler=handler,
            options=ConsumerOptions.from_settings(settings, concurrency=concurrency),
            partition_key=partition_key,
        )

    # ------------------------------------------------------------------ waiting

    async def join(self, channel: str, *, fail_fast: bool = True, timeout: float = 10.0) -> None:
        """Wait until every group consuming `channel` has handled every event on it (a running
        consumer does the work: an agent's `run()` or a consumer's `run()`). With `fail_fast`,
        raise the exception of an event dead-lettered on `channel` (each one once)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    wake = self._wake
                    if fail_fast:
                        self._raise_dead_letter(channel)
                    if self._drained(channel):
                        return
                    await wake.wait()
        except TimeoutError:
            behind = sorted(self._behind(channel))
            raise TimeoutError(
                f"{channel} not drained after {timeout:g}s: {behind} have events left "
                "(is a consumer of each group running?)"
            ) from None

    def _behind(self, channel: str) -> list[str]:
        size = len(self._streams.get(channel, []))
        groups = self._groups.get(channel, {})
        return [name for name, g in groups.items() if g.cursor < size or g.inflight]

    def _drained(self, channel: str) -> bool:
        return not self._behind(channel)

    def _raise_dead_letter(self, channel: str) -> None:
        for letter in self.dead_letters_on(channel):
            if id(letter) not in self._raised:
                self._raised.add(id(letter))
                raise letter.exception

    def _changed(self) -> None:
        self._wake.set()
        self._wake = asyncio.Event()

    def _take(self, channel: str, group: str) -> tuple[_Entry, _Group] | None:
        g = self._groups[channel][group]
        entries = self._streams[channel]
        if g.cursor >= len(entries):
            return None
        entry = entries[g.cursor]
        g.cursor += 1
        g.inflight += 1
        return entry, g


class StubConsumer:
    """One consumer of a group on a `StubBus`: `run()` delivers until `stop()`, then drains."""

    def __init__(
        self,
        bus: StubBus,
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
        self.group = group
        self.name = name
        self.channels = channels
        self.handler = handler
        self.options = options
        self.concurrency = options.concurrency
        self.max_deliveries = options.max_deliveries
        self.handler_timeout_s = options.handler_timeout_s
        self.partition_key = partition_key
        self.stats = ConsumerStats()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._locks = KeyedLocks()

    @property
    def inflight(self) -> int:
        return len(self._tasks)

    @property
    def connected(self) -> bool:
        return True

    def stop(self) -> None:
        self._stopping.set()
        self.bus._changed()

    async def run(self) -> None:
        try:
            while not self._stopping.is_set():
                wake = self.bus._wake
                if not self._dispatch():
                    await wake.wait()
        finally:
            if self._tasks:
                await asyncio.wait(self._tasks)

    def _dispatch(self) -> bool:
        """Start handlers for what is waiting, up to the concurrency; False when none started."""
        started = False
        for channel in self.channels:
            while len(self._tasks) < self.concurrency:
                taken = self.bus._take(channel, self.group)
                if taken is None:
                    break
                task = asyncio.create_task(self._process(channel, *taken))
                self._tasks.add(task)
                task.add_done_callback(self._finished)
                started = True
        return started

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.bus._changed()

    async def _process(self, channel: str, entry: _Entry, group: _Group) -> None:
        try:
            try:
                event = parse_event(entry.data, channel)
            except InvalidEventError as exc:
                self.stats.invalid += 1
                self._dead_letter(channel, entry, None, str(exc), exc, 1)
                return
            attempt = 1
            while True:
                failure = await self._run_handler(channel, entry, event, attempt)
                if failure is None:
                    self.stats.handled += 1
                    return
                if attempt >= self.max_deliveries:
                    self._dead_letter(channel, entry, event, *failure, attempt)
                    return
                attempt += 1
        finally:
            group.inflight -= 1

    async def _run_handler(
        self, channel: str, entry: _Entry, event: Event, attempt: int
    ) -> tuple[str, Exception] | None:
        delivery = Delivery(channel, entry.message_id, self.group, self.name, attempt)
        deadline = asyncio.timeout(self.handler_timeout_s)
        try:
            with delivering(delivery):
                key = self.partition_key(event) if self.partition_key else None
                async with self._locks.hold(key), deadline:
                    await self.handler(event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # as on the Redis bus: a failure is retried, then dead-lettered
            self.stats.failed += 1
            if isinstance(exc, TimeoutError) and deadline.expired():
                self.stats.timed_out += 1
                return f"handler timed out after {self.handler_timeout_s:g}s (cancelled)", exc
            return f"{type(exc).__name__}: {exc}", exc
        return None

    def _dead_letter(
        self,
        channel: str,
        entry: _Entry,
        event: Event | None,
        error: str,
        exc: BaseException,
        attempts: int,
    ) -> None:
        self.stats.dead_lettered += 1
        self.bus.dead_letters.append(
            DeadLetter(
                channel, self.group, self.name, entry.message_id, event, error, attempts, exc
            )
        )
        self.bus._changed()


if TYPE_CHECKING:
    _conforms: EventBus = StubBus()  # mypy: the stub offers what agents use of a bus

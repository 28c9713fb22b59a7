"""What an agent uses of the event bus, whatever carries the events.

`EventBus` is the publishing side and the way to build an `EventConsumer`, which calls a handler
once per event (retrying a failing one, then dead-lettering it) between `run()` and `stop()`.
Two implementations: `shared.bus.Bus` (Redis Streams, production) and `shared.stub_bus.StubBus`
(in memory, for tests of a handler's logic; dramatiq's `StubBroker`).

A handler learns which delivery it handles from `current_delivery()`, on either bus.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

from shared.events import Envelope, Event
from shared.replication import Replication
from shared.settings import Settings

__all__ = [
    "ConsumerOptions",
    "ConsumerStats",
    "Delivery",
    "EventBus",
    "EventConsumer",
    "Handler",
    "PartitionKey",
    "current_delivery",
    "delivering",
]

Handler = Callable[[Event], Awaitable[None]]
PartitionKey = Callable[[Event], str | None]


@dataclass(frozen=True)
class Delivery:
    """The stream entry a handler is handling. A retry of the same entry keeps `message_id` and
    raises `attempt`; a twin entry (the same event or idempotency key published again) has its own
    `message_id`."""

    channel: str
    message_id: str
    group: str
    consumer: str
    attempt: int


_delivery: ContextVar[Delivery | None] = ContextVar("hemostat_bus_delivery", default=None)


def current_delivery() -> Delivery | None:
    """The delivery the running bus handler is handling; None outside a handler."""
    return _delivery.get()


@contextmanager
def delivering(delivery: Delivery) -> Iterator[None]:
    """Run a handler with `delivery` as its `current_delivery()` (for bus implementations)."""
    token = _delivery.set(delivery)
    try:
        yield
    finally:
        _delivery.reset(token)


@dataclass(frozen=True)
class ConsumerOptions:
    """How a consumer reads and handles (httpx's `Timeout`/`Limits`): one value passed where a
    consumer is built, instead of a dozen keyword arguments. The defaults are the settings'."""

    concurrency: int = 16  # handlers running at once
    block_ms: int = 1_000  # how long one read blocks waiting for events
    max_deliveries: int = 5  # deliveries of a failing event before it is dead-lettered
    claim_idle_ms: int = 30_000  # idle time after which a dead consumer's event is reclaimed
    reclaim_interval_s: float = 5.0  # how often to look for events to reclaim
    retry_backoff_s: float = 0.5  # first retry delay of a failed handler (doubles each time)
    handler_timeout_s: float | None = 900.0  # a handler running longer is cancelled (None: never)
    grace_s: float = 20.0  # on stop, how long in-flight handlers may still run

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {self.concurrency}")
        if self.max_deliveries < 1:
            raise ValueError(f"max_deliveries must be at least 1, not {self.max_deliveries}")

    @classmethod
    def from_settings(
        cls, settings: Settings, *, concurrency: int | None = None
    ) -> ConsumerOptions:
        """The configured options (HEMOSTAT_BUS_*, HEMOSTAT_SHUTDOWN_GRACE_S); `concurrency`
        overrides HEMOSTAT_BUS_CONCURRENCY when given."""
        return cls(
            concurrency=concurrency or settings.bus_concurrency,
            block_ms=settings.bus_block_ms,
            max_deliveries=settings.bus_max_deliveries,
            claim_idle_ms=settings.bus_claim_idle_ms,
            reclaim_interval_s=settings.bus_reclaim_interval_s,
            retry_backoff_s=settings.bus_retry_backoff_s,
            handler_timeout_s=settings.bus_handler_timeout_s,
            grace_s=settings.shutdown_grace_s,
        )


@dataclass
class ConsumerStats:
    handled: int = 0
    failed: int = 0  # handler failures, timeouts included (one per attempt)
    dead_lettered: int = 0
    reclaimed: int = 0
    invalid: int = 0  # not UTF-8, not JSON or not a valid envelope
    timed_out: int = 0  # handler attempts cancelled after handler_timeout_s
    trimmed: int = 0  # messages trimmed from their stream while pending
    claims_lost: int = 0  # in-flight messages another replica reclaimed (this one had stalled)
    groups_recreated: int = 0  # streams or groups lost under this consumer and recreated

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class EventConsumer(Protocol):
    """One consumer of a group over several channels: `run()` until `stop()`, then drain."""

    @property
    def stats(self) -> ConsumerStats: ...

    @property
    def inflight(self) -> int:
        """Handlers running now."""
        ...

    @property
    def connected(self) -> bool:
        """False while the transport is unreachable (for health reporting)."""
        ...

    async def run(self) -> None: ...

    def stop(self) -> None: ...


class EventBus(Protocol):
    """Publishing events and consuming them as a group."""

    async def publish(self, event: Envelope, *, replication: Replication | None = None) -> str:
        """Append the event to its channel; returns the entry id."""
        ...

    async def publish_many(self, events: Sequence[Envelope]) -> list[str]: ...

    async def publish_once(
        self,
        event: Envelope,
        marker: str,
        ttl_s: int,
        *,
        replication: Replication | None = None,
    ) -> str | None:
        """Publish unless `marker` was published already: the entry id, or None for a repeat."""
        ...

    async def create_group(self, channel: str, group: str, start: str = "0") -> bool:
        """Create the group at `start` if missing; True when it was created."""
        ...

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
    ) -> EventConsumer:
        """A consumer of `group`; `tuning` overrides fields of `options` by name."""
        ...

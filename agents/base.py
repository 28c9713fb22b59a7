"""BaseAgent: the lifecycle every HemoStat agent shares.

An agent declares what it consumes (`consumes`), how it handles one event (`handle`) and its
background loops (`@background` / `@periodic`). `run()` does the rest: lifecycle hooks
(`on_start` → loops and consumer → `on_started` … `on_stop`), a heartbeat key with a TTL, and a
graceful stop that lets in-flight handlers finish within the grace period.

Agents never touch signals, the event loop or logging configuration: the runner owns those and
calls `stop()`. Collaborators (Redis, bus, clock, Docker, LLM clients) are injected. A test can run
an agent on a `StubBus` with `redis=None`: no heartbeat is written, and only handlers that keep no
state in Redis can work that way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Protocol, TypeVar, cast

from redis.asyncio import Redis

from shared import __version__
from shared.backoff import backoff_delay
from shared.bus import Bus
from shared.clock import Clock, SystemClock
from shared.errors import AgentCrashed
from shared.eventbus import ConsumerOptions, EventBus, EventConsumer
from shared.events import Channel, Envelope, Event, Severity, Source, Subject, make_event
from shared.heartbeat import AgentStatus, Heartbeat, clear_heartbeat, write_heartbeat
from shared.log import Logger, get_logger
from shared.model import Model
from shared.redis_client import CONNECTION_ERRORS
from shared.settings import Settings
from shared.tasks import join_tasks

__all__ = ["AgentContext", "BaseAgent", "Interval", "LoopSpec", "background", "periodic"]

F = TypeVar("F", bound=Callable[..., Awaitable[None]])
E = TypeVar("E", bound=Envelope)
Interval = float | Callable[[Any], float]


@dataclass(frozen=True)
class LoopSpec:
    interval: Interval | None  # None: a long-running coroutine, restarted if it crashes


def background(fn: F) -> F:
    """Declare a long-running loop; it is restarted with backoff if it raises."""
    fn.__hemostat_loop__ = LoopSpec(None)  # type: ignore[attr-defined]
    return fn


def periodic(interval: Interval) -> Callable[[F], F]:
    """Declare a method run every `interval` seconds (a number, or `lambda self: ...`)."""

    def mark(fn: F) -> F:
        fn.__hemostat_loop__ = LoopSpec(interval)  # type: ignore[attr-defined]
        return fn

    return mark


class AgentContext(Protocol):
    """What a component of an agent (the Responder's Issuer, Verification...) may use of the agent
    that composes it: its identity, clock and log, events stamped as its own, and a sleep that
    ends when the agent stops. Not its Redis, bus, settings or other components: those a
    component is given explicitly."""

    instance: str
    clock: Clock
    log: Logger

    def event(
        self,
        cls: type[E],
        payload: Model,
        *,
        subject: Subject,
        severity: Severity,
        caused_by: Envelope | str | None = None,
        incident_id: str | None = None,
        idempotency_key: str | None = None,
        occurred_at: datetime | None = None,
    ) -> E: ...

    async def emit(
        self,
        cls: type[E],
        payload: Model,
        *,
        subject: Subject,
        severity: Severity,
        caused_by: Envelope | str | None = None,
        incident_id: str | None = None,
        idempotency_key: str | None = None,
        occurred_at: datetime | None = None,
    ) -> E: ...

    async def sleep(self, seconds: float) -> bool: ...


class BaseAgent:
    name: ClassVar[str] = "agent"
    consumes: ClassVar[tuple[Channel, ...]] = ()
    _loops: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._loops = tuple(
            attr
            for attr in dir(cls)
            if not attr.startswith("__") and hasattr(getattr(cls, attr, None), "__hemostat_loop__")
        )

    def __init__(
        self,
        *,
        settings: Settings,
        redis: Redis | None,
        bus: EventBus | None = None,
        clock: Clock | None = None,
        instance: str | None = None,
        concurrency: int | None = None,
    ) -> None:
        self.settings = settings
        # None only in tests on a StubBus (see the module's docstring); agents that keep state
        # in Redis use it as a client.
        self.redis = cast(Redis, redis)
        self._beats = redis is not None
        if bus is None:
            if redis is None:
                raise ValueError(
                    "an agent needs a bus: pass bus=, or a Redis client for the Redis bus"
                )
            bus = Bus.from_settings(redis, settings)
        self.bus: EventBus = bus
        self.clock: Clock = clock or SystemClock()
        self.instance = instance or settings.instance_name()
        self.concurrency = concurrency or settings.bus_concurrency
        self.source = Source(agent=self.name, instance=self.instance, version=__version__)
        self.log: Logger = get_logger(f"hemostat.{self.name}").bind(
            agent=self.name, instance=self.instance
        )
        self.consumer: EventConsumer | None = None
        self.started_at: datetime | None = None
        self._stop = asyncio.Event()
        self._degraded: dict[str, str] = {}

    @property
    def group(self) -> str:
        """The consumer group this agent's replicas share (override to split the stream)."""
        return self.name

    # ------------------------------------------------------------------ hooks (override)

    async def on_start(self) -> None:
        """Before loops and the consumer start: open connections, load files."""

    async def on_started(self) -> None:
        """Everything is running."""

    async def on_stopping(self) -> None:
        """Stop was asked: release what a loop blocks on outside the agent's own `sleep` (an
        event stream), so the loops end now rather than at the grace period's end."""

    async def on_stop(self) -> None:
        """Loops stopped and in-flight handlers finished (or the grace period ran out)."""

    async def handle(self, event: Event) -> None:
        """Handle one consumed event; raise to have it retried and eventually dead-lettered."""
        raise NotImplementedError(f"{type(self).__name__} consumes events but has no handle()")

    def partition_key(self, event: Event) -> str | None:
        """Events with the same key are handled one at a time, in order (default: none)."""
        return None

    def health_details(self) -> dict[str, Any]:
        """Extra fields for the heartbeat record (shown by `hemostat status` and the dashboard)."""
        details: dict[str, Any] = {}
        if self.consumer is not None:
            details["consumer"] = self.consumer.stats.as_dict() | {
                "inflight": self.consumer.inflight
            }
        if self._degraded:
            details["degraded"] = dict(self._degraded)
        return details

    # ------------------------------------------------------------------ events

    def event(
        self,
        cls: type[E],
        payload: Model,
        *,
        subject: Subject,
        severity: Severity,
        caused_by: Envelope | str | None = None,
        incident_id: str | None = None,
        idempotency_key: str | None = None,
        occurred_at: datetime | None = None,
    ) -> E:
        """A new event from this agent, stamped with its source and its clock's now (occurred
        then too, unless `occurred_at`). Answering `caused_by`, it carries that event's id as
        causation and its incident, unless `incident_id` names another; `caused_by` may be just
        an id (when only the id was kept), which brings no incident. Without `idempotency_key`
        the event's own id is its key."""
        causation_id = caused_by if isinstance(caused_by, str) else None
        if isinstance(caused_by, Envelope):
            causation_id = caused_by.id
            if incident_id is None:
                incident_id = caused_by.incident_id
        now = self.clock.now()
        return make_event(
            cls,
            source=self.source,
            subject=subject,
            severity=severity,
            payload=payload,
            occurred_at=occurred_at or now,
            emitted_at=now,
            incident_id=incident_id,
            causation_id=causation_id,
            idempotency_key=idempotency_key,
        )

    async def emit(
        self,
        cls: type[E],
        payload: Model,
        *,
        subject: Subject,
        severity: Severity,
        caused_by: Envelope | str | None = None,
        incident_id: str | None = None,
        idempotency_key: str | None = None,
        occurred_at: datetime | None = None,
    ) -> E:
        """Build an event as `event()` does and publish it; returns it."""
        event = self.event(
            cls,
            payload,
            subject=subject,
            severity=severity,
            caused_by=caused_by,
            incident_id=incident_id,
            idempotency_key=idempotency_key,
            occurred_at=occurred_at,
        )
        await self.bus.publish(event)
        return event

    # ------------------------------------------------------------------ state

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def status(self) -> AgentStatus:
        if self.stopping:
            return AgentStatus.STOPPING
        if self._degraded or (self.consumer is not None and not self.consumer.connected):
            return AgentStatus.DEGRADED
        return AgentStatus.OK

    def set_degraded(self, component: str, reason: str) -> None:
        if self._degraded.get(component) != reason:
            self.log.warning("agent.degraded", component=component, reason=reason)
        self._degraded[component] = reason

    def clear_degraded(self, component: str) -> None:
        if self._degraded.pop(component, None) is not None:
            self.log.info("agent.recovered", component=component)

    def stop(self) -> None:
        """Ask the agent to stop (safe to call from a signal handler, more than once)."""
        self._stop.set()
        if self.consumer is not None:
            self.consumer.stop()

    async def wait_stopped(self) -> None:
        """Return once the agent is asked to stop (to unblock waits on other things)."""
        await self._stop.wait()

    async def sleep(self, seconds: float) -> bool:
        """Sleep up to `seconds`, returning early when the agent stops. True while running."""
        if seconds > 0 and not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        return not self._stop.is_set()

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        self.started_at = self.clock.now()
        await self.on_start()
        core: dict[asyncio.Task[Any], str] = {}
        loops: list[asyncio.Task[None]] = []
        if self.consumes:
            self.consumer = self.bus.consumer(
                group=self.group,
                name=self.instance,
                channels=[str(c) for c in self.consumes],
                handler=self.handle,
                options=ConsumerOptions.from_settings(self.settings, concurrency=self.concurrency),
                partition_key=self.partition_key,
            )
            if self.stopping:
                self.consumer.stop()
            core[asyncio.create_task(self.consumer.run(), name=f"{self.name}-consumer")] = (
                "consumer"
            )
        heartbeat = asyncio.create_task(self._heartbeat_loop(), name=f"{self.name}-heartbeat")
        for attr in self._loops:
            loops.append(
                asyncio.create_task(self._run_loop(attr), name=f"{self.name}-{attr.strip('_')}")
            )
        await self.on_started()
        self.log.info("agent.started", pid=os.getpid(), consumes=[str(c) for c in self.consumes])
        crashed: BaseException | None = None
        stop_waiter: asyncio.Task[Any] = asyncio.create_task(self._stop.wait())
        try:
            done, _ = await asyncio.wait([stop_waiter, *core], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is stop_waiter:
                    continue
                if task.exception() is None and self.stopping:
                    continue  # it returned because stop was asked, in the same loop iteration
                crashed = task.exception() or AgentCrashed(f"{core[task]} ended unexpectedly")
                self.log.critical("agent.core_task_ended", task=core[task], error=str(crashed))
        finally:
            self.stop()
            stop_waiter.cancel()
            self.log.info("agent.stopping")
            # Others (the fleet's host watch, `hemostat check`) see it is going at once.
            if self._beats:
                with contextlib.suppress(*CONNECTION_ERRORS):
                    await write_heartbeat(self.redis, self._heartbeat())
            await self.on_stopping()
            # The consumer drains its in-flight handlers within the grace period; loops end on
            # the stop flag (their `sleep` returns), cancellation is the last resort.
            grace = self.settings.shutdown_grace_s
            await join_tasks(*core, timeout=grace + 15.0)
            await join_tasks(*loops, timeout=grace)
            try:
                await self.on_stop()
            finally:
                heartbeat.cancel()
                await join_tasks(heartbeat, timeout=2.0)
                if self._beats:
                    with contextlib.suppress(*CONNECTION_ERRORS):
                        await clear_heartbeat(self.redis, self.name, self.instance)
                self.log.info("agent.stopped")
        if crashed is not None:
            raise AgentCrashed(str(crashed)) from crashed

    async def _run_loop(self, attr: str) -> None:
        method: Callable[[], Awaitable[None]] = getattr(self, attr)
        spec: LoopSpec = method.__hemostat_loop__  # type: ignore[attr-defined]
        failures = 0
        while not self.stopping:
            started = self.clock.monotonic()
            try:
                await method()
                if spec.interval is None:
                    return  # a background loop that returns has finished its work
            except asyncio.CancelledError:
                raise
            except CONNECTION_ERRORS as exc:  # an outage: said once per outage, not per tick
                failures += 1
                if failures == 1:
                    self.log.warning("agent.loop_unavailable", loop=attr, error=str(exc))
            except Exception:  # loop boundary: log, back off, keep the agent alive
                failures += 1
                self.log.exception("agent.loop_failed", loop=attr, failures=failures)
            else:
                if failures > 1:
                    self.log.info("agent.loop_recovered", loop=attr, failures=failures)
                failures = 0
            await self.sleep(self._next_run_in(spec, started, failures))

    def _next_run_in(self, spec: LoopSpec, started: float, failures: int) -> float:
        """A loop's next run: its interval after a success, and a growing back-off (never
        shorter than the interval) after consecutive failures."""
        interval = 0.0
        if spec.interval is not None:
            interval = spec.interval(self) if callable(spec.interval) else spec.interval
        if failures:
            return max(interval, backoff_delay(failures, base=0.5, cap=5.0))
        return max(0.0, interval - (self.clock.monotonic() - started))

    def _heartbeat(self) -> Heartbeat:
        assert self.started_at is not None
        return Heartbeat(
            agent=self.name,
            instance=self.instance,
            host=self.settings.host_name,
            pid=os.getpid(),
            version=__version__,
            status=self.status,
            started_at=self.started_at,
            beat_at=self.clock.now(),
            ttl_s=self.settings.heartbeat_ttl_s,
            details=self.health_details(),
        )

    async def _heartbeat_loop(self) -> None:
        if not self._beats:
            return  # no Redis (a test on a StubBus): nobody to tell
        while True:
            try:
                await write_heartbeat(self.redis, self._heartbeat())
            except CONNECTION_ERRORS as exc:
                self.log.warning("agent.heartbeat_failed", error=str(exc))
            await asyncio.sleep(self.settings.heartbeat_interval_s)

"""Following the Docker daemon's container events without losing or doubling any.

On every (re)connect — the Monitor's own start, a daemon restart, a stream that ended or
stalled — the follower:

1. subscribes to live events from `t0` (the daemon's clock) before looking at anything else;
2. reads what the daemon still remembers between the **cursor** (the last event fully handled,
   kept in Redis per host, so a restarted Monitor resumes where it stopped) and `t0`;
3. hands that history to the agent's catch-up, which judges every container that died
   meanwhile by its own events — or says it cannot tell, when the daemon no longer has them;
4. then handles live events, skipping any it already handled (`since` is inclusive, and a
   reconnect replays), and moves the cursor only past events whose handling finished.

A stream can also stall (open, no error, no events). The poller reports container state
changes newer than the newest event received; when one is older than the stall grace, the
follower drops the stream and reconnects, and the catch-up covers the gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from agents.monitor.causes import Seen
from shared import keys
from shared.backoff import backoff_delay
from shared.containers import parse_time
from shared.docker_api import DockerGateway, EventStream
from shared.errors import DockerError
from shared.log import Logger
from shared.redis_client import CONNECTION_ERRORS

__all__ = ["Cursor", "DockerEventFollower", "History", "as_since", "event_nano"]

History = dict[str, list[Seen]]  # container id -> its events, oldest first
_END = object()

# Only ever moves forward, whichever replica writes it (nanosecond strings of equal length).
_ADVANCE = """
local cur = redis.call('GET', KEYS[1])
if (not cur) or (string.len(ARGV[1]) > string.len(cur))
   or (string.len(ARGV[1]) == string.len(cur) and ARGV[1] > cur) then
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
"""


def event_nano(event: dict[str, Any]) -> int:
    return int(event.get("timeNano") or int(event.get("time", 0)) * 1_000_000_000)


def as_since(nano: int) -> str:
    """The daemon's `since`/`until` form: seconds.nanoseconds."""
    return f"{nano // 1_000_000_000}.{nano % 1_000_000_000:09d}"


class Cursor:
    """The last event whose handling (and every handling before it) finished."""

    def __init__(self, redis: Redis, host: str) -> None:
        self.redis = redis
        self.key = keys.MONITOR_CURSOR + host
        self._advance = redis.register_script(_ADVANCE)
        self.done = 0  # nano of the newest event such that all events before it are handled
        self._inflight: dict[int, int] = defaultdict(int)
        self._received = 0
        self._saved = 0

    async def load(self) -> int | None:
        raw = await self.redis.get(self.key)
        return int(raw) if raw else None

    def begin(self, nano: int) -> None:
        self._inflight[nano] += 1
        self._received = max(self._received, nano)

    def end(self, nano: int) -> None:
        self._inflight[nano] -= 1
        if self._inflight[nano] <= 0:
            del self._inflight[nano]
        oldest = min(self._inflight, default=None)
        self.done = max(self.done, (oldest - 1) if oldest is not None else self._received)

    def reset_to(self, nano: int) -> None:
        self.done = max(self.done, nano)
        self._received = max(self._received, nano)

    async def save(self) -> None:
        if self.done > self._saved:
            await self._advance(keys=[self.key], args=[str(self.done)])
            self._saved = self.done


class DockerEventFollower:
    def __init__(
        self,
        *,
        docker: DockerGateway,
        cursor: Cursor,
        label: str | None,
        lookback_s: float,
        log: Logger,
        on_event: Callable[[dict[str, Any]], Awaitable[None]],
        on_catch_up: Callable[[History | None, float], Awaitable[None]],
        on_state: Callable[[bool, str], None],
        stopping: Callable[[], bool],
        sleep: Callable[[float], Awaitable[bool]],
    ) -> None:
        self.docker = docker
        self.cursor = cursor
        self.label = label
        self.lookback_s = lookback_s
        self.log = log
        self.on_event = on_event
        self.on_catch_up = on_catch_up
        self.on_state = on_state  # (connected, reason)
        self.stopping = stopping
        self.sleep = sleep
        self.connected = asyncio.Event()
        self.subscribed_at: float | None = None  # t0 of the current subscription (daemon clock)
        self.newest_event_at = 0.0  # seconds, newest event received on this subscription
        self.reconnects = 0
        self.stalls = 0
        self._stream: EventStream | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._seen: dict[str, None] = {}  # recently handled event identities, bounded

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()

    async def wait_idle(self, timeout: float) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout)
        with contextlib.suppress(*CONNECTION_ERRORS):
            await self.cursor.save()

    def report_stall(self, reason: str) -> None:
        """The poller saw a change no event told us about: drop the stream, catch up."""
        if self._stream is not None and self.connected.is_set():
            self.stalls += 1
            self.log.warning("monitor.events_stalled", reason=reason)
            self._stream.close()

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        attempt = 0
        while not self.stopping():
            if not await self.docker.ping():
                attempt += 1
                self._disconnected("Docker daemon unreachable")
                await self.sleep(backoff_delay(attempt, base=0.5, cap=10.0))
                continue
            try:
                t0 = await self._daemon_now()
                stream = self.docker.events(since=as_since(t0), label=self.label)
                self._stream = stream
                await asyncio.to_thread(stream.open)
                history, since = await self._history(t0)
            except DockerError as exc:
                attempt += 1
                self._disconnected(str(exc))
                await self.sleep(backoff_delay(attempt, base=0.5, cap=10.0))
                continue
            attempt = 0
            self.subscribed_at = t0 / 1e9
            self.newest_event_at = 0.0
            await self.on_catch_up(history, since)
            self.cursor.reset_to(t0)
            with contextlib.suppress(*CONNECTION_ERRORS):
                await self.cursor.save()
            self.connected.set()
            self.on_state(True, "")
            self.log.info("monitor.events_subscribed", since=since, history=history is not None)
            await self._follow(stream)
            if not self.stopping():
                self.reconnects += 1
                self._disconnected("event stream ended (daemon restarted, or it stalled)")
                await self.sleep(0.5)

    def _disconnected(self, reason: str) -> None:
        self.connected.clear()
        self.on_state(False, reason)

    async def _daemon_now(self) -> int:
        """Now on the daemon's clock (the one its `since` and `until` use), in nanoseconds."""
        info = await self.docker.info()
        at = parse_time(str(info.get("SystemTime") or ""))
        return int(at.timestamp() * 1e9) if at is not None else time.time_ns()

    async def _history(self, t0: int) -> tuple[History | None, float]:
        """What the daemon remembers since the cursor (or the look-back on a first start)."""
        try:
            stored = await self.cursor.load()
        except CONNECTION_ERRORS:
            stored = None
        start = max(stored or 0, self.cursor.done) or int(t0 - self.lookback_s * 1e9)
        raw = await self.docker.events_between(as_since(start), as_since(t0), self.label)
        history: History = defaultdict(list)
        for event in raw:
            nano = event_nano(event)
            if nano <= start:
                continue  # `since` is inclusive: that one was handled before
            actor = event.get("Actor") or {}
            cid = str(actor.get("ID") or event.get("id") or "")
            action = str(event.get("Action") or event.get("status") or "")
            attrs = {str(k): str(v) for k, v in (actor.get("Attributes") or {}).items()}
            history[cid].append(Seen(action, attrs, nano / 1e9))
        return dict(history), start / 1e9

    async def _follow(self, stream: EventStream) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def pump() -> None:
            try:
                for event in stream:
                    loop.call_soon_threadsafe(queue.put_nowait, event)
            except Exception as exc:  # thread boundary: hand the error to the loop
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _END)

        thread = threading.Thread(target=pump, name="docker-events", daemon=True)
        thread.start()
        saver = asyncio.create_task(self._save_cursor_periodically())
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    return
                if isinstance(item, Exception):
                    self.log.warning("monitor.events_error", error=str(item))
                    continue
                self._dispatch(item)
        finally:
            saver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await saver
            stream.close()
            await asyncio.to_thread(thread.join, 2)

    def _dispatch(self, event: dict[str, Any]) -> None:
        nano = event_nano(event)
        actor = event.get("Actor") or {}
        identity = f"{actor.get('ID') or event.get('id')}/{event.get('Action')}/{nano}"
        if identity in self._seen or nano <= self.cursor.done:
            return  # replayed after a reconnect (`since` is inclusive): handled already
        self._seen[identity] = None
        if len(self._seen) > 10_000:
            self._seen.pop(next(iter(self._seen)))
        self.newest_event_at = max(self.newest_event_at, nano / 1e9)
        self.cursor.begin(nano)
        task = asyncio.create_task(self._handle(event, nano))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, event: dict[str, Any], nano: int) -> None:
        try:
            await self.on_event(event)
        finally:
            self.cursor.end(nano)

    async def _save_cursor_periodically(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            try:
                await self.cursor.save()
            except CONNECTION_ERRORS as exc:
                self.log.warning("monitor.cursor_not_saved", error=str(exc))

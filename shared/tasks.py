"""Helpers for asyncio task lifetimes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["KeyedLocks", "join_tasks"]


async def join_tasks(*tasks: asyncio.Task[Any], timeout: float) -> list[BaseException]:
    """Wait for tasks to end by themselves, cancel what still runs after `timeout`, and return
    the exceptions they ended with.

    We end loops with a stop flag and only cancel as a last resort: a cancel that lands inside a
    Redis call can be swallowed by the client, leaving the task running forever."""
    if not tasks:
        return []
    _, late = await asyncio.wait(tasks, timeout=timeout)
    for task in late:
        task.cancel()
    if late:
        await asyncio.wait(late, timeout=1.0)
    return [
        exc
        for task in tasks
        if task.done() and not task.cancelled() and (exc := task.exception()) is not None
    ]


class KeyedLocks:
    """One asyncio lock per key, dropped when nobody holds or waits for it. Locks are FIFO, so
    work for one key runs in the order it arrived while other keys proceed concurrently."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @contextlib.asynccontextmanager
    async def hold(self, key: str | None) -> AsyncIterator[None]:
        if key is None:
            yield
            return
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

"""Helpers for asyncio task lifetimes."""

from __future__ import annotations

import asyncio
from typing import Any


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

"""The event follower's bookkeeping with no services: a replayed event is handled once, the
cursor only moves past events whose handling (and every earlier one's) finished."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis

from agents.monitor.event_stream import Cursor, DockerEventFollower, as_since
from shared.log import get_logger

NEVER = Redis.from_url("redis://127.0.0.1:1/0")  # scripts are registered, never run here


def event(nano: int, action: str = "die", cid: str = "c1") -> dict[str, Any]:
    return {"Action": action, "Actor": {"ID": cid, "Attributes": {}}, "timeNano": nano}


def follower(handled: list[int], gate: asyncio.Event | None = None) -> DockerEventFollower:
    async def on_event(e: dict[str, Any]) -> None:
        if gate is not None and e["timeNano"] == 1_000:
            await gate.wait()
        handled.append(e["timeNano"])

    async def nothing(*_: Any) -> None:
        return None

    async def no_sleep(_: float) -> bool:
        return True

    return DockerEventFollower(
        docker=None,  # type: ignore[arg-type]
        cursor=Cursor(NEVER, "h"),
        label=None,
        lookback_s=300,
        log=get_logger("test"),
        on_event=on_event,
        on_catch_up=nothing,
        on_state=lambda *_: None,
        stopping=lambda: False,
        sleep=no_sleep,
    )


async def test_a_replayed_event_is_handled_once():
    handled: list[int] = []
    f = follower(handled)
    for e in (event(1_000), event(2_000), event(2_000)):  # `since` is inclusive: 2_000 again
        f._dispatch(e)
    await asyncio.gather(*f._tasks)
    f._dispatch(event(1_000))  # after a reconnect: before the cursor
    await asyncio.gather(*f._tasks)
    assert handled == [1_000, 2_000]
    assert f.cursor.done == 2_000


async def test_the_cursor_never_passes_an_event_still_being_handled():
    handled: list[int] = []
    gate = asyncio.Event()
    f = follower(handled, gate)
    f._dispatch(event(1_000, cid="slow"))
    f._dispatch(event(2_000, cid="fast"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert handled == [2_000]
    assert f.cursor.done == 999, "the slow one is not finished: a restart must see it again"
    gate.set()
    await asyncio.gather(*f._tasks)
    assert f.cursor.done == 2_000


def test_since_is_the_daemons_seconds_dot_nanoseconds():
    assert as_since(1_796_000_000_123_456_789) == "1796000000.123456789"
    assert as_since(5) == "0.000000005"

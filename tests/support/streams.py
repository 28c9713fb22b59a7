"""Reading what agents published, straight from the Redis streams."""

from __future__ import annotations

from typing import Any

from shared.events import Channel, parse_event


async def events_on(redis: Any, channel: Channel) -> list[Any]:
    return [parse_event(fields["event"]) for _, fields in await redis.xrange(channel)]


async def alerts_for(redis: Any, container_id: str) -> list[Any]:
    return [
        e
        for e in await events_on(redis, Channel.HEALTH_ALERT)
        if e.subject.container_id == container_id
    ]


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def acknowledged(redis: Any, channel: str, group: str, entry_id: str) -> bool:
    """True once `group` has read `entry_id` and acknowledged it: its handler has finished,
    whatever it decided (the observable fact a "nothing happened" check waits for)."""
    groups = await redis.xinfo_groups(channel)
    info = next((g for g in groups if g["name"] == group), None)
    if info is None or _id(str(info["last-delivered-id"])) < _id(entry_id):
        return False
    pending = await redis.xpending_range(channel, group, min=entry_id, max=entry_id, count=1)
    return not pending


def settled(redis: Any) -> bool:
    """(sync client) Every consumer group of every hemostat stream has read everything and
    acknowledged it: the system has finished with every event published so far. After an
    outcome, a test waits for this before checking that nothing else happened."""
    for channel in Channel:
        if not redis.exists(channel):
            continue
        last = str(redis.xinfo_stream(channel)["last-generated-id"])
        for group in redis.xinfo_groups(channel):
            if int(group["pending"]) or _id(str(group["last-delivered-id"])) < _id(last):
                return False
    return True

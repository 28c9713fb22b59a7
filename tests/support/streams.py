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

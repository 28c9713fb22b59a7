"""A consumer's acknowledgements, sent in batches.

A handled message is acknowledged by `add()`; a background `run()` sends what accumulated in one
pipeline per round. A batch that could not be sent (Redis unreachable) is put back and sent again
later; if the process dies first, the messages are simply delivered again (at-least-once).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

from redis.asyncio import Redis

from shared.log import get_logger
from shared.redis_client import CONNECTION_ERRORS

__all__ = ["AckBatcher"]

log = get_logger(__name__)


class AckBatcher:
    """The acknowledgements of one consumer of `group`: `add()` them, `run()` sends them until
    `close()`, then `flush()` sends what is left."""

    def __init__(self, redis: Redis, group: str) -> None:
        self.redis = redis
        self.group = group
        self._acks: dict[str, list[str]] = defaultdict(list)
        self._ready = asyncio.Event()
        self._closed = False

    def add(self, channel: str, message_id: str) -> None:
        self._acks[channel].append(message_id)
        self._ready.set()

    def close(self) -> None:
        """End `run()` once its current round is sent."""
        self._closed = True
        self._ready.set()

    async def run(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            sent = await self._send()
            if self._closed:
                return  # the final flush happens in flush()
            if not sent:
                await asyncio.sleep(0.5)
                self._ready.set()

    async def _send(self) -> bool:
        if not self._acks:
            return True
        batch, self._acks = self._acks, defaultdict(list)
        try:
            # XACK of a lost group or stream answers 0, not an error: nothing to special-case.
            pipe = self.redis.pipeline(transaction=False)
            for channel, ids in batch.items():
                pipe.xack(channel, self.group, *ids)
            await pipe.execute()
            return True
        except CONNECTION_ERRORS as exc:
            for channel, ids in batch.items():
                self._acks[channel][:0] = ids
            log.warning("bus.ack_failed", group=self.group, error=str(exc), pending=len(batch))
            return False

    async def flush(self, deadline: float) -> None:
        while self._acks and time.monotonic() < deadline:
            if not await self._send():
                await asyncio.sleep(0.2)
        if self._acks:
            # Redis still down at shutdown: these will be redelivered (at-least-once).
            log.warning(
                "bus.acks_unsent", group=self.group, count=sum(map(len, self._acks.values()))
            )

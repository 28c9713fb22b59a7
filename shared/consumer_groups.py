"""A consumer's group on each of its channels, kept through lost keys.

A stream or group deleted under a running consumer (DEL, FLUSHALL, XGROUP DESTROY, a restart
without persistence, a restore from an older snapshot) is recreated after the newest entry this
consumer knows the group had reached, so handled events are not replayed; from the start of the
stream when the stream itself was deleted or replaced, so no event published since is skipped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from redis.exceptions import ResponseError

from shared.eventbus import ConsumerStats
from shared.log import get_logger
from shared.stream_wire import as_mapping, as_text, parse_stream_id, raw_command

if TYPE_CHECKING:
    from shared.bus import Bus

__all__ = ["ConsumerGroups"]

log = get_logger(__name__)


class ConsumerGroups:
    """`group` on each of `channels`: created when missing (`ensure`), followed as entries are
    read (`saw`), recreated where it vanished (`recreate`, counted in `stats`)."""

    def __init__(self, bus: Bus, *, group: str, channels: list[str], stats: ConsumerStats) -> None:
        self.bus = bus
        self.redis = bus.redis
        self.group = group
        self.channels = channels
        self.stats = stats
        # Per channel, the newest entry id this consumer knows its group had reached: where a
        # lost group is recreated.
        self._seen: dict[str, tuple[int, int]] = {}

    async def ensure(self) -> None:
        for channel in self.channels:
            await self.bus.create_group(channel, self.group)
            groups = await raw_command(self.redis, "XINFO", "GROUPS", channel)
            for info in map(as_mapping, groups or []):
                if as_text(info.get(b"name")) == self.group:
                    self.saw(channel, as_text(info.get(b"last-delivered-id") or b"0-0"))

    def saw(self, channel: str, message_id: str) -> None:
        self._seen[channel] = max(self._seen.get(channel, (0, 0)), parse_stream_id(message_id))

    async def recreate(self, cause: str) -> None:
        for channel in self.channels:
            start = await self._restart_point(channel)
            if await self.bus.create_group(channel, self.group, start):
                self.stats.groups_recreated += 1
                log.warning(
                    "bus.group_recreated",
                    channel=channel,
                    group=self.group,
                    start=start,
                    cause=cause,
                )

    async def _restart_point(self, channel: str) -> str:
        """Where a lost group restarts: after the last entry this consumer knows the group had
        reached, so handled events are not replayed (a whole retained stream replayed into the
        Analyzer or the Alert agent would act on stale events again); from the start when the
        stream was deleted or replaced (its ids no longer reach that far), so that no event
        published since is skipped."""
        seen = self._seen.get(channel, (0, 0))
        if seen == (0, 0):
            return "0"
        try:
            info = as_mapping(await raw_command(self.redis, "XINFO", "STREAM", channel))
        except ResponseError as exc:
            if "no such key" not in str(exc).lower():
                raise
            return "0"
        last = parse_stream_id(as_text(info.get(b"last-generated-id") or b"0-0"))
        return f"{seen[0]}-{seen[1]}" if last >= seen else "0"

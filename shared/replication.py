"""Replicated acknowledgements: a publish that counts as done only once replicas confirmed it.

A publisher that acknowledges something to the outside passes a `Replication`; the publish then
ends with `WAIT n timeout` on the same connection, and `NotReplicated` is raised when fewer than n
replicas confirmed in time (the event is on the primary, not known to be safe from a failover).
Everything else is published without waiting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.errors import NotReplicated
from shared.settings import Settings

__all__ = ["Replication"]


@dataclass(frozen=True)
class Replication:
    """Confirm a publish on `replicas` replicas within `timeout_ms` (Redis WAIT) before it counts
    as done. WAIT counts the replicas that acknowledged every write this connection made, so it
    is sent in the same pipeline as the write it guards: no extra round trip from here, but the
    answer waits for the replicas' acknowledgement (up to the timeout when one is slow or gone)."""

    replicas: int
    timeout_ms: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Replication | None:
        """The configured replication of acknowledgements (None when HEMOSTAT_REDIS_WAIT_REPLICAS
        is 0)."""
        if settings.redis_wait_replicas <= 0:
            return None
        return cls(settings.redis_wait_replicas, settings.redis_wait_timeout_ms)

    def check(self, confirmed: Any) -> None:
        if int(confirmed) < self.replicas:
            raise NotReplicated(
                f"confirmed on {int(confirmed)} of {self.replicas} replica(s) within "
                f"{self.timeout_ms} ms",
                confirmed=int(confirmed),
                wanted=self.replicas,
            )

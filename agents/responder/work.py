"""Work: one request (or one approved proposal) on its way through this replica, from its claim
to its stored outcome. Every component of the Responder hands it on."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from shared.approvals import Proposal
from shared.events import RemediationNeededEvent

__all__ = ["Work"]


@dataclass
class Work:
    """One request (or one approved proposal) being decided by this replica."""

    request: RemediationNeededEvent
    actor: str
    record_key: str
    holder: str
    proposal: Proposal | None = None
    causation_id: str | None = None
    received_at: float = field(default_factory=time.time)
    timings: dict[str, float] = field(default_factory=dict)

"""The audit log: an append-only Redis stream of every Responder decision — executed, dry-run,
rejected, and every approval transition — with its inputs, actor and outcome. Trimmed by age
(XTRIM MINID), never to a fixed handful of entries. The reason and every guard's detail are
redacted on the way in: they quote container state and error text, and the stream outlives logs."""

from __future__ import annotations

import time
from typing import Any

from pydantic import Field
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from shared import keys
from shared.model import Model
from shared.redaction import Redactor

__all__ = ["REASON_MAX", "AuditRecord", "GuardResult", "append", "read", "redact", "trim"]

REASON_MAX = 2000
_PATTERNS = Redactor()  # key names and token shapes, when the caller has no configured redactor


class GuardResult(Model):
    guard: str
    passed: bool
    detail: str = ""


class AuditRecord(Model):
    at: float
    actor: str  # "responder:<instance>" or the human who decided
    event: str  # executed | dry_run | rejected | proposed | approved | denied | expired | ...
    outcome: str
    request_id: str | None = None
    incident_id: str | None = None
    proposal_id: str | None = None
    host: str | None = None  # the Docker host of the container (fleet mode)
    container_id: str | None = None
    container_name: str | None = None
    runbook_id: str | None = None
    action_id: str | None = None
    action_type: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    guards: list[GuardResult] = Field(default_factory=list)
    dry_run: bool = False
    reason: str = ""
    durations_ms: dict[str, float] = Field(default_factory=dict)


def redact(record: AuditRecord, redactor: Redactor | None = None) -> AuditRecord:
    """The record with its reason and guard details redacted (then cut), the rest as it was."""
    r = redactor or _PATTERNS
    return record.model_copy(
        update={
            "reason": r.clip(record.reason, REASON_MAX),
            "guards": [g.model_copy(update={"detail": r.text(g.detail)}) for g in record.guards],
        }
    )


async def append(redis: Redis, record: AuditRecord, redactor: Redactor | None = None) -> str:
    """Append the redacted record; pass the caller's redactor so configured secrets and the
    container's environment values are masked too, not only recognisable shapes."""
    record = redact(record, redactor)
    entry_id = await redis.xadd(keys.AUDIT, {"record": record.model_dump_json()})
    return str(entry_id)


async def trim(redis: Redis, retention_days: float, now: float | None = None) -> int:
    """Drop records older than the retention period (by entry id time)."""
    cutoff_ms = int(((now or time.time()) - retention_days * 86_400) * 1000)
    removed: int = await redis.xtrim(keys.AUDIT, minid=f"{cutoff_ms}-0", approximate=False)
    return removed


def read(
    redis: SyncRedis,
    *,
    limit: int = 50,
    container: str | None = None,
    since: float | None = None,
    event: str | None = None,
    host: str | None = None,
) -> list[AuditRecord]:
    """Newest first, filtered; reads in pages so filters see far enough back."""
    out: list[AuditRecord] = []
    end = "+"
    start = f"{int(since * 1000)}-0" if since else "-"
    while len(out) < limit:
        page: Any = redis.xrevrange(keys.AUDIT, max=end, min=start, count=500)
        if not page:
            break
        for _, fields in page:
            try:
                record = AuditRecord.model_validate_json(fields["record"])
            except (KeyError, ValueError):
                continue
            if container and not _is_container(record, container):
                continue
            if event and record.event != event:
                continue
            if host and record.host != host:
                continue
            out.append(record)
            if len(out) >= limit:
                break
        last = str(page[-1][0])
        ms, seq = last.split("-")
        end = f"{ms}-{int(seq) - 1}" if int(seq) > 0 else f"{int(ms) - 1}-18446744073709551615"
        if len(page) < 500:
            break
    return out


def _is_container(record: AuditRecord, wanted: str) -> bool:
    return record.container_name == wanted or (record.container_id or "").startswith(wanted)

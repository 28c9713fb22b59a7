"""Fill Redis with the state and events every metric is made from, using the agents' own models."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from shared import keys
from shared.approvals import PENDING
from shared.bus import Bus
from shared.container_state import ContainerSnapshot, write_snapshots
from shared.events import (
    AlertKind,
    Analysis,
    AnalysisMethod,
    ApprovalDecision,
    ApprovalDecisionEvent,
    Channel,
    Decision,
    Detector,
    RemediationStatus,
    Severity,
    make_event,
)
from shared.heartbeat import AgentStatus, Heartbeat, write_heartbeat
from shared.hosts import HostRecord, HostState
from tests.support import factories

AGENTS = ("monitor", "analyzer", "responder", "alert", "metrics")


async def seed_state(redis: Any) -> None:
    now = time.time()
    # The fleet: h1 watched; h2's edge agents stopped (HemoStatHostUnwatched has data).
    for record in (
        HostRecord(host="h1", state=HostState.WATCHED, since=now - 600, last_seen=now,
                   monitors=1, responders=1),
        HostRecord(host="h2", state=HostState.UNWATCHED, since=now - 300, last_seen=now - 300,
                   told=HostState.UNWATCHED),
    ):  # fmt: skip
        await redis.hset(keys.HOSTS, record.host, record.model_dump_json())
    await write_snapshots(
        redis,
        [
            ContainerSnapshot(
                id="a" * 64,
                name="web",
                host="h1",
                state="running",
                health="healthy",
                compose_service="web",
                compose_project="shop",
                cpu_percent=42.5,
                cpu_cores=0.42,
                memory_percent=91.0,
                memory_working_set=300_000_000,
                memory_limit=330_000_000,
                restart_count=2,
                updated_at=now,
                active_alerts=["high_memory"],
            ),
            ContainerSnapshot(
                id="b" * 64,
                name="db",
                host="h1",
                state="running",
                health="unhealthy",
                cpu_percent=3.0,
                memory_percent=5.0,
                memory_working_set=50_000_000,
                memory_limit=16_000_000_000,
                memory_limit_is_host=True,
                updated_at=now,
            ),
            ContainerSnapshot(
                id="c" * 64,
                name="job",
                host="h1",
                state="exited",
                exit_code=1,
                monitored=True,
                updated_at=now,
            ),
        ],
        ttl_s=600,
    )
    started = datetime.fromtimestamp(now - 60, UTC)
    for agent in AGENTS:
        await write_heartbeat(
            redis,
            Heartbeat(
                agent=agent,
                instance=f"{agent}-1",
                host="h1",
                pid=1,
                version="0",
                status=AgentStatus.DEGRADED if agent == "monitor" else AgentStatus.OK,
                started_at=started,
                beat_at=datetime.now(UTC),
                ttl_s=600,
                details={"consumer": {"handled": 10, "failed": 1}},
            ),
        )
    await redis.zadd(PENDING, {"p-seeded": now + 600})


def wave() -> list[Any]:
    """One of every event that feeds a pipeline metric."""
    llm_fallback = Analysis(
        method=AnalysisMethod.RULES,
        confidence=0.9,
        root_cause="x",
        model="anthropic:claude",
        fallback_reason="timeout: no answer",
    )
    t = factories.now()
    decision = make_event(
        ApprovalDecisionEvent,
        source=factories.SOURCE,
        subject=factories.subject("web"),
        severity=Severity.INFO,
        occurred_at=t,
        emitted_at=t,
        payload=ApprovalDecision(proposal_id="p-1", decision=Decision.APPROVED, actor="alice"),
    )
    alert = factories.health_alert("web", AlertKind.CRASH, exit_code=1)
    needed = factories.remediation_needed("web").model_copy(update={"causation_id": alert.id})
    return [
        alert,
        factories.health_alert("db", AlertKind.HIGH_CPU, detector=Detector.STATS),
        needed,
        needed.model_copy(
            update={"payload": needed.payload.model_copy(update={"analysis": llm_fallback})}
        ),
        factories.false_alarm("db"),
        factories.remediation_complete("web", RemediationStatus.SUCCEEDED, request_id=needed.id),
        factories.remediation_complete(
            "web", RemediationStatus.FAILED, Severity.CRITICAL, request_id=needed.id
        ),
        factories.remediation_complete(
            "db", RemediationStatus.FAILED, Severity.CRITICAL, request_id=needed.id
        ),
        factories.remediation_complete(
            "web", RemediationStatus.REJECTED, Severity.WARNING, guard="circuit_breaker"
        ),
        factories.remediation_complete(
            "job", RemediationStatus.EXPIRED, Severity.WARNING, proposal_id="p-1"
        ),
        factories.approval_request("job", "p-2"),
        decision,
        factories.escalation("web", "crash_loop"),
    ]


async def publish_wave(redis: Any) -> None:
    bus = Bus(redis)
    await bus.publish_many(wave())
    await redis.xadd(
        "hemostat:notifications",
        {"channel": "slack", "status": "sent", "latency_ms": "12.5", "event_id": "x"},
    )
    await redis.xadd(
        "hemostat:notifications",
        {"channel": "discord", "status": "failed", "latency_ms": "1000", "event_id": "x"},
    )


async def publish_poison(redis: Any) -> None:
    await redis.xadd(Channel.HEALTH_ALERT, {"event": "{not json"})

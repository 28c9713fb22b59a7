"""A realistic HemoStat state in Redis, written with the agents' own models and stores: what the
dashboard tests read back."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agents.analyzer.incidents import IncidentStore
from shared import audit, keys
from shared.approvals import ApprovalStore, ProposalState
from shared.bus import Bus
from shared.container_state import ContainerSnapshot, write_snapshots
from shared.events import AlertKind, RemediationStatus, Severity
from shared.heartbeat import AgentStatus, Heartbeat, write_heartbeat
from shared.hosts import HostRecord, HostState
from tests.support import factories

WEB, DB, JOB = "a" * 64, "b" * 64, "c" * 64


@dataclass
class Seeded:
    incident_id: str
    pending_proposal: str
    decided_proposal: str
    alert_id: str


async def seed(redis: Any) -> Seeded:
    now = time.time()
    bus = Bus(redis)
    await write_snapshots(
        redis,
        [
            ContainerSnapshot(
                id=WEB,
                name="shop-web-1",
                host="h1",
                state="running",
                health="healthy",
                compose_service="web",
                compose_project="shop",
                cpu_percent=12.5,
                memory_percent=40.0,
                memory_working_set=100 * 2**20,
                restart_count=1,
                updated_at=now,
                labels={"hemostat.remediate": "true"},
            ),
            ContainerSnapshot(
                id=DB,
                name="shop-db-1",
                host="h1",
                state="running",
                health="unhealthy",
                cpu_percent=95.0,
                memory_percent=70.0,
                memory_working_set=500 * 2**20,
                restart_count=4,
                updated_at=now,
                active_alerts=["unhealthy"],
            ),
            ContainerSnapshot(
                id=JOB,
                name="nightly-job",
                host="h2",
                state="exited",
                exit_code=0,
                updated_at=now,
                monitored=False,
            ),
        ],
        ttl_s=600,
    )
    # The fleet: h1 watched and healed, h2's edge agents gone for 10 minutes.
    for record in (
        HostRecord(host="h1", state=HostState.WATCHED, since=now - 3600, last_seen=now,
                   monitors=1, responders=1),
        HostRecord(host="h2", state=HostState.UNWATCHED, since=now - 600, last_seen=now - 660,
                   told=HostState.UNWATCHED),
    ):  # fmt: skip
        await redis.hset(keys.HOSTS, record.host, record.model_dump_json())
    started = datetime.fromtimestamp(now - 120, UTC)
    for agent in ("monitor", "analyzer", "responder", "alert"):  # metrics is down
        await write_heartbeat(
            redis,
            Heartbeat(
                agent=agent,
                instance=f"{agent}-1",
                host="h1",
                pid=1,
                version="0",
                status=AgentStatus.OK,
                started_at=started,
                beat_at=datetime.now(UTC),
                ttl_s=600,
                details={"consumer": {"handled": 7, "failed": 0}}
                | ({"dry_run": True} if agent == "responder" else {}),
            ),
        )

    alert = factories.health_alert(
        DB, AlertKind.UNHEALTHY, summary="shop-db-1 is unhealthy: pg down"
    )
    alert = alert.model_copy(
        update={
            "subject": factories.subject(DB).model_copy(
                update={"container_name": "shop-db-1", "host": "h1"}
            )
        }
    )
    attached = await IncidentStore(redis).attach(alert, now)
    incident = attached.incident_id
    needed = factories.remediation_needed(DB).model_copy(
        update={"incident_id": incident, "causation_id": alert.id, "subject": alert.subject}
    )
    await bus.publish_many([alert, needed])
    await IncidentStore(redis).record_decision(
        incident, needed.payload.analysis, "unhealthy", "restart", cache=False
    )
    completes = [
        factories.remediation_complete(DB, RemediationStatus.SUCCEEDED, request_id=needed.id),
        factories.remediation_complete(WEB, RemediationStatus.SUCCEEDED),
        factories.remediation_complete(WEB, RemediationStatus.FAILED, Severity.CRITICAL),
        factories.remediation_complete(WEB, RemediationStatus.DRY_RUN, dry_run=True),
    ]
    completes[0] = completes[0].model_copy(
        update={"incident_id": incident, "subject": alert.subject}
    )
    await bus.publish_many([*completes, factories.false_alarm(WEB)])
    await redis.xadd(
        "hemostat:notifications",
        {"event_id": completes[0].id, "channel": "slack", "status": "sent", "detail": "HTTP 200"},
    )

    store = ApprovalStore(redis)
    pending = await store.create(
        needed, 900, "runbook unhealthy requires approval for restart", key="seed-pending"
    )
    decided = await store.create(needed, 900, "low confidence (0.40)", key="seed-decided")
    await store.deny(decided.id, "bob", "maintenance window")
    await audit.append(
        redis,
        audit.AuditRecord(
            at=now - 30,
            actor="responder:r1",
            event="rejected",
            outcome="rejected:cooldown",
            container_id=WEB,
            container_name="shop-web-1",
            action_id="restart",
            action_type="restart",
            guards=[audit.GuardResult(guard="cooldown", passed=False, detail="42s left")],
            reason="cooling down",
        ),
    )
    await audit.append(
        redis,
        audit.AuditRecord(
            at=now - 20,
            actor="responder:r1",
            event="dry_run",
            outcome="dry_run",
            dry_run=True,
            container_id=DB,
            container_name="shop-db-1",
            action_id="restart",
            action_type="restart",
        ),
    )
    await bus.dead_letter(
        channel="hemostat:health_alert",
        group="analyzer",
        consumer="a-1",
        message_id="1-0",
        raw="{bad",
        error="malformed JSON",
        attempts=1,
    )
    assert (await store.get(decided.id)).state is ProposalState.DENIED
    return Seeded(incident, pending.id, decided.id, alert.id)

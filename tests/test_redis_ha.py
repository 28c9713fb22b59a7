"""Redis high availability and transport security, with real processes on loopback ports:

- TLS with a CA, server and client certificates this test makes with openssl: rediss:// with the
  CA works, without it or with another CA it is refused; mutual TLS; sentinels over TLS.
- Redis Sentinel: the primary SIGKILLed while alerts flow in through the Monitor's webhook to the
  Analyzer; every acknowledged alert is decided after the failover (WAIT on).
- A primary demoted under a running agent (plain URL) is "Redis unavailable", never a crash.
- WAIT: with the replica stuck, the webhook answers 503 (and says why) and a dashboard/CLI
  decision reports that it is not confirmed.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from redis.asyncio.sentinel import MasterNotFoundError
from redis.exceptions import ConnectionError as RedisConnectionError

from shared.approvals import ApprovalStore, decide
from shared.bus import Bus
from shared.errors import NotReplicated
from shared.events import Channel, Decision, parse_event
from shared.heartbeat import AgentStatus, heartbeat_key
from shared.redaction import Redactor
from shared.redis_client import CONNECTION_ERRORS, connect, connect_sync, describe
from shared.redis_server import RedisServer
from shared.replication import Replication
from shared.settings import Settings
from tests.conftest import make_settings
from tests.support import factories
from tests.support.alert_flow import (
    TOKEN,
    Sender,
    alert_body,
    all_decided,
    decided_at_least,
    decided_keys,
    decision_key,
    first_decision_after,
    running_agents,
    webhook_settings,
)
from tests.support.bus import wait_until
from tests.support.sentinel import sentinel_group
from tests.support.streams import events_on
from tests.support.tls import Certs, make_certs

pytestmark = pytest.mark.redis

PASSWORD = "data-pw-5e1b7c"  # the data servers' (requirepass, in REDIS_URL)
SENTINEL_PASSWORD = "sentinel-pw-93ad04"  # the sentinels' own


def redis_settings(url: str, **kw: Any) -> Settings:
    return make_settings(url, llm_provider="none", **kw)


def group_settings(group: Any, **kw: Any) -> Settings:
    options = group.settings()
    return redis_settings(options.pop("redis_url"), **(options | kw))


# ---------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_server(tmp_path, certs):
    server = RedisServer(tmp_path / "redis", password=PASSWORD, tls=certs.server()).start()
    yield server
    server.stop()


async def test_rediss_with_the_ca_works_without_it_or_with_another_ca_is_refused(tls_server, certs):
    url = tls_server.url
    assert url.startswith("rediss://")
    trusted = connect(redis_settings(url, redis_tls_ca_file=certs.ca))
    try:
        await Bus(trusted).publish(factories.health_alert())
        assert await trusted.xlen(Channel.HEALTH_ALERT) == 1
    finally:
        await trusted.aclose()
    with connect_sync(redis_settings(url, redis_tls_ca_file=certs.ca)) as sync_client:
        assert sync_client.xlen(Channel.HEALTH_ALERT) == 1

    for ca in (None, certs.other_ca):  # None: the system's CAs, which never signed this server
        refused = connect(redis_settings(url, redis_tls_ca_file=ca))
        try:
            with pytest.raises(RedisConnectionError, match="certificate verify failed"):
                await refused.ping()
        finally:
            await refused.aclose()
    cleartext = connect(redis_settings(url.replace("rediss://", "redis://")))
    try:
        with pytest.raises(CONNECTION_ERRORS):
            await cleartext.ping()
    finally:
        await cleartext.aclose()


async def test_mutual_tls_needs_the_client_certificate(tmp_path, certs):
    server = RedisServer(
        tmp_path / "redis", password=PASSWORD, tls=certs.server(auth_clients=True)
    ).start()
    try:
        anonymous = connect(redis_settings(server.url, redis_tls_ca_file=certs.ca))
        try:
            with pytest.raises(CONNECTION_ERRORS):
                await anonymous.ping()
        finally:
            await anonymous.aclose()
        client = connect(
            redis_settings(
                server.url,
                redis_tls_ca_file=certs.ca,
                redis_tls_cert_file=certs.client_cert,
                redis_tls_key_file=certs.client_key,
            )
        )
        try:
            assert await client.ping()
        finally:
            await client.aclose()
    finally:
        server.stop()


async def test_sentinels_and_the_primary_over_mutual_tls_with_passwords(tmp_path, certs):
    with sentinel_group(
        tmp_path,
        replicas=0,
        sentinels=1,
        quorum=1,
        password=PASSWORD,
        sentinel_password=SENTINEL_PASSWORD,
        tls=certs.server(auth_clients=True),
    ) as group:
        client_tls = {
            "redis_tls_cert_file": certs.client_cert,
            "redis_tls_key_file": certs.client_key,
        }
        settings = group_settings(group, **client_tls)
        redis = connect(settings)
        try:
            await Bus(redis).publish(factories.health_alert())
        finally:
            await redis.aclose()
        with group.client(group.primary) as direct:
            assert direct.xlen(Channel.HEALTH_ALERT) == 1, "written on the primary, over TLS"
        with connect_sync(settings) as sync_client:
            assert sync_client.xlen(Channel.HEALTH_ALERT) == 1

        # Without a client certificate, or with a wrong password, the sentinel itself refuses
        # us, so no primary can be found.
        for refused_settings, why in (
            (group_settings(group), "ConnectionError"),
            (
                group_settings(group, redis_sentinel_password="wrong-password", **client_tls),
                "AuthenticationError",
            ),
        ):
            refused = connect(refused_settings)
            try:
                with pytest.raises(MasterNotFoundError, match=why):
                    await refused.ping()
            finally:
                await refused.aclose()

        where = describe(settings)
        assert group.addresses in where and "TLS" in where
        assert PASSWORD not in where and SENTINEL_PASSWORD not in where
        assert {PASSWORD, SENTINEL_PASSWORD} <= set(settings.secret_values())


# ---------------------------------------------------------------- agents on a real setup


async def test_alerts_acknowledged_through_a_sentinel_failover_are_all_decided(tmp_path):
    with sentinel_group(tmp_path, password=PASSWORD, sentinel_password=SENTINEL_PASSWORD) as group:
        settings = group_settings(
            group, redis_wait_replicas=1, redis_wait_timeout_ms=500, **webhook_settings()
        )
        async with running_agents(settings) as (_, _, tasks):
            redis = connect(settings)
            sender = Sender(settings.webhook_port)
            sending = asyncio.create_task(sender.run())
            try:
                await wait_until(lambda: len(sender.acked) >= 40, timeout=60, what="40 acked")
                await wait_until(
                    lambda: decided_at_least(redis, 20), timeout=60, what="the Analyzer deciding"
                )
                old, new = group.primary, group.replicas[0]
                await asyncio.to_thread(old.kill)  # SIGKILL, and reaped: it is gone now
                killed_ms = int(time.time() * 1000)
                killed = time.monotonic()
                await asyncio.to_thread(group.wait_promoted, new)
                promoted = time.monotonic()
                # WAIT 1 needs a replica again: the old primary comes back, and the sentinels
                # make it a replica of the new one.
                await asyncio.to_thread(old.start)
                await asyncio.to_thread(group.wait_linked, old, new)
                rejoined = time.monotonic()
                await wait_until(
                    lambda: sender.acked_since(rejoined) >= 40,
                    timeout=60,
                    what="alerts acknowledged again after the failover",
                )
            finally:
                sender.stop.set()
                await asyncio.wait_for(sending, 60)
            acked = {decision_key(body) for body in sender.acked}
            await wait_until(
                lambda: all_decided(redis, acked), timeout=60, what="every acked alert decided"
            )
            decided = await decided_keys(redis)
            first_decision_ms = await first_decision_after(redis, killed_ms)
            assert not any(task.done() for task in tasks), "an agent stopped"
            await wait_until(
                lambda: _beating(redis, ["monitor", "analyzer"]), what="heartbeats on the new one"
            )
            await redis.aclose()

        lost = acked - decided
        first_ack = min(acked for sent, acked in sender.acked.values() if sent > killed)
        print(
            "\n[sentinel failover] "
            f"alerts in {len(sender.bodies)}, acknowledged {len(acked)}, "
            f"decided {len(acked & decided)}, lost {len(lost)}; refusals retried: "
            f"{sum(sender.refusals.values())} {dict(sender.refusals)}\n"
            f"   SIGKILL -> replica promoted {promoted - killed:.2f}s, first decision "
            f"{(first_decision_ms or 0) / 1000 - killed_ms / 1000:.2f}s, old primary rejoined as "
            f"a replica {rejoined - killed:.2f}s, webhook acknowledging again (WAIT 1) "
            f"{first_ack - killed:.2f}s"
        )
        assert not lost, f"{len(lost)} acknowledged alert(s) never decided"
        assert first_decision_ms is not None


async def _beating(redis: Redis, agents: list[str]) -> bool:
    return all([await redis.exists(heartbeat_key(a, "test-1")) for a in agents])


@pytest.mark.parametrize("wait_replicas", [0, 1])
async def test_what_a_failover_loses_of_what_the_webhook_acknowledged(tmp_path, wait_replicas):
    """The replica stops receiving (SIGSTOP, and the primary drops its link), alerts arrive, the
    primary dies and the replica is promoted. Without WAIT the webhook acknowledged alerts the new
    primary never got; with WAIT it acknowledged none of them (Alertmanager keeps those and sends
    them again)."""
    with sentinel_group(tmp_path) as group:
        settings = group_settings(
            group,
            redis_wait_replicas=wait_replicas,
            redis_wait_timeout_ms=200,
            **webhook_settings(),
        )
        async with running_agents(settings):
            url = f"http://127.0.0.1:{settings.webhook_port}/webhook/alertmanager"
            headers = {"Authorization": f"Bearer {TOKEN}"}
            replica = group.replicas[0]
            replica.pause()
            try:
                with group.client(group.primary) as admin:
                    assert admin.client_kill_filter(_type="replica") == 1
                async with httpx.AsyncClient(headers=headers, timeout=30) as http:
                    answers = {i: await http.post(url, content=alert_body(i)) for i in range(5)}
                await asyncio.to_thread(group.primary.kill)
            finally:
                replica.resume()
            await asyncio.to_thread(group.wait_promoted, replica)
        with group.client(replica) as survivor:
            kept = {
                parse_event(fields["event"]).payload.alertname
                for _, fields in survivor.xrange(Channel.HEALTH_ALERT)
            }
    acked = {f"Probe{i}" for i, answer in answers.items() if answer.status_code == 200}
    lost = acked - kept
    print(f"\n[WAIT {wait_replicas}] 5 alerts, {len(acked)} acknowledged, {len(lost)} lost")
    if wait_replicas:
        assert not acked, "acknowledged without a replica confirming"
        assert {a.status_code for a in answers.values()} == {503}
        assert all("not replicated" in a.json()["error"] for a in answers.values())
    else:
        # What WAIT is for: every one of these was answered 200, and the failover lost it.
        assert acked == lost == {f"Probe{i}" for i in range(5)}


async def test_a_primary_demoted_under_a_running_agent_is_an_outage_not_a_crash(tmp_path):
    """A plain URL (no sentinels) to a primary that becomes a replica (a switchover, or a
    partitioned old primary rejoining): its writes answer READONLY. The agent must wait as for
    any outage, and carry on when its server is primary again."""
    a = RedisServer(tmp_path / "a").start()
    b = RedisServer(tmp_path / "b", replica_of=a.port).start()
    admin_a, admin_b = Redis(port=a.port), Redis(port=b.port)
    try:
        await wait_until(lambda: _linked(admin_b, admin_a), what="b replicating a")
        # The Analyzer alone: every SET refused below is its heartbeat, every XREADGROUP or
        # XGROUP CREATE its consumer.
        async with running_agents(redis_settings(a.url), monitor=False) as (_, analyzer, tasks):
            bus = Bus(admin_a)
            await bus.publish(factories.health_alert("c1"))
            await wait_until(lambda: analyzer.counts["decisions"] == 1, what="first decision")

            await admin_b.replicaof("NO", "ONE")  # switchover: b is the primary now ...
            await admin_a.replicaof("127.0.0.1", str(b.port))  # ... and a its replica
            await wait_until(lambda: _linked(admin_a, admin_b), what="a replicating b")
            await wait_until(
                unless_crashed(tasks, lambda: _refused(admin_a, "cmdstat_set")),
                what="a heartbeat refused READONLY",
            )
            await wait_until(
                unless_crashed(
                    tasks,
                    lambda: _refused(admin_a, "cmdstat_xreadgroup", "cmdstat_xgroup|create"),
                ),
                what="the consumer refused READONLY",
            )
            await wait_until(lambda: analyzer.status is AgentStatus.DEGRADED, what="degraded")

            await admin_a.replicaof("NO", "ONE")  # and back
            await admin_b.replicaof("127.0.0.1", str(a.port))
            back = time.time()
            await bus.publish(factories.health_alert("c2"))
            await wait_until(
                unless_crashed(tasks, lambda: analyzer.counts["decisions"] == 2),
                what="decided again",
            )
            await wait_until(lambda: _beat_since(admin_a, "analyzer", back), what="heartbeat")
            await wait_until(lambda: analyzer.status is AgentStatus.OK, what="healthy again")
            assert not any(task.done() for task in tasks), "the agent crashed"
    finally:
        await admin_a.aclose()
        await admin_b.aclose()
        b.stop()
        a.stop()


def unless_crashed(tasks: list[asyncio.Task[None]], condition: Any) -> Any:
    """`condition` for wait_until, failing at once (with the reason) if an agent stopped."""

    async def check() -> Any:
        for task in tasks:
            if task.done():
                raise AssertionError(f"an agent stopped: {task.exception()!r}")
        result = condition()
        return await result if asyncio.iscoroutine(result) else result

    return check


async def _refused(admin: Redis, *commands: str) -> bool:
    """Whether the server refused one of these commands before running it (READONLY here)."""
    stats = await admin.info("commandstats")
    return any(int(stats.get(c, {}).get("rejected_calls", 0)) > 0 for c in commands)


async def _linked(admin: Redis, primary: Redis) -> bool:
    """`admin`'s server replicates `primary`'s, confirming writes (see SentinelGroup)."""
    info = await admin.info("replication")
    if not (info["role"] == "slave" and info["master_link_status"] == "up"):
        return False
    await primary.incr("hemostat:test:replication-probe")
    return int(await primary.wait(1, 100)) >= 1


async def _beat_since(admin: Redis, agent: str, since: float) -> bool:
    raw = await admin.get(heartbeat_key(agent, "test-1"))
    if raw is None:
        return False
    return datetime.fromisoformat(json.loads(raw)["beat_at"]).timestamp() > since


# ---------------------------------------------------------------- WAIT


async def test_without_a_replica_confirming_nothing_is_acknowledged(tmp_path):
    primary = RedisServer(tmp_path / "primary").start()
    replica = RedisServer(tmp_path / "replica", replica_of=primary.port).start()
    admin = Redis(port=primary.port, decode_responses=True)
    replica_admin = Redis(port=replica.port, decode_responses=True)
    try:
        await wait_until(lambda: _linked(replica_admin, admin), what="replica linked")
        settings = redis_settings(
            primary.url,
            redis_wait_replicas=1,
            redis_wait_timeout_ms=300,
            **webhook_settings(),
        )
        async with running_agents(settings):
            url = f"http://127.0.0.1:{settings.webhook_port}/webhook/alertmanager"
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with httpx.AsyncClient(headers=headers, timeout=30) as http:
                first = await http.post(url, content=alert_body(1))
                assert (first.status_code, first.json()) == (200, {"published": 1, "duplicates": 0})

                replica.pause()  # alive, connected, confirming nothing
                try:
                    refused = await http.post(url, content=alert_body(2))
                    assert refused.status_code == 503
                    assert refused.json()["error"] == (
                        "not replicated: confirmed on 0 of 1 replica(s) within 300 ms; "
                        "Alertmanager will retry"
                    )
                    repeat = await http.post(url, content=alert_body(1))
                    assert repeat.status_code == 503, "a repeat is acknowledged once confirmed"
                    store = ApprovalStore(admin)
                    request = factories.remediation_needed()
                    proposal = await store.create(request, 600, "a human decides")
                    with pytest.raises(NotReplicated, match="recorded on the Redis primary but"):
                        await decide(
                            admin,
                            proposal.id,
                            Decision.APPROVED,
                            "alice",
                            replication=Replication(1, 300),
                        )
                finally:
                    replica.resume()

                # Alertmanager's retry once the replica confirms again: acknowledged, and the
                # alert published once, not twice.
                retried = await http.post(url, content=alert_body(2))
                assert (retried.status_code, retried.json()) == (
                    200,
                    {"published": 0, "duplicates": 1},
                )
            alerts = await events_on(admin, Channel.HEALTH_ALERT)
            assert sorted(a.payload.alertname for a in alerts) == ["Probe1", "Probe2"]
        assert (await admin.hget(f"hemostat:proposal:{proposal.id}", "state")) == "approved"
    finally:
        await admin.aclose()
        await replica_admin.aclose()
        replica.stop()
        primary.stop()


def test_passwords_never_show_in_where_redis_is():
    settings = redis_settings(f"rediss://:{PASSWORD}@redis.example:6380/2", redis_sentinels=None)
    assert describe(settings) == "rediss://redis.example:6380/2"
    assert PASSWORD not in Redactor(settings.secret_values()).text(settings.effective_redis_url())

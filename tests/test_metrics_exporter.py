"""The Metrics exporter on a real Redis: events through the real bus, state from the agents'
own models, `/metrics` scraped over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time

import httpx
import pytest
import redis as sync_redis
from prometheus_client.parser import text_string_to_metric_families

from agents.metrics.agent import MetricsAgent, build_registry
from shared.events import Channel
from shared.redis_server import free_port
from tests.conftest import make_settings
from tests.support.bus import wait_until
from tests.support.metrics_seed import publish_poison, publish_wave, seed_state

pytestmark = pytest.mark.redis


@contextlib.asynccontextmanager
async def exporter(redis, redis_url, port=None):
    settings = make_settings(redis_url, metrics_host="127.0.0.1", bus_max_deliveries=1)
    client = sync_redis.Redis.from_url(redis_url, decode_responses=True)
    registry, metrics = build_registry(client, settings)
    agent = MetricsAgent(settings=settings, redis=redis, registry=registry, metrics=metrics,
                         port=free_port() if port is None else port)  # fmt: skip
    task = asyncio.create_task(agent.run())
    await wait_until(lambda: redis.exists(Channel.HEALTH_ALERT), what="exporter group")
    try:
        yield agent
    finally:
        agent.stop()
        await asyncio.wait_for(task, 30)
        client.close()


def samples(text):
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(parsed, name, **labels):
    return parsed.get((name, tuple(sorted(labels.items()))))


async def scrape(agent):
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{agent.port}/metrics")
    assert response.status_code == 200
    return response.text


H = "test-host"  # every pipeline counter names the host the event is about


async def test_exporter_counts_the_pipeline_and_reads_state(redis, redis_url):
    await seed_state(redis)
    async with exporter(redis, redis_url) as agent:
        await publish_wave(redis)
        await publish_poison(redis)
        await wait_until(lambda: agent.consumer.stats.handled >= 13, timeout=10)
        await wait_until(lambda: _has(agent, "hemostat_dead_letters_total"), timeout=10)
        text = await scrape(agent)
    m = samples(text)
    assert (
        value(
            m,
            "hemostat_health_alerts_total",
            host="test-host",
            kind="crash",
            severity="critical",
            status="firing",
            detector="docker_events",
        )
        == 1
    )
    assert (
        value(m, "hemostat_decisions_total", method="rules", outcome="remediate", runbook="crash")
        == 2
    )
    assert value(m, "hemostat_llm_fallbacks_total", reason="timeout") == 1
    assert value(m, "hemostat_false_alarms_total", kind="anomaly") == 1
    assert value(m, "hemostat_remediations_total", host=H, action="restart", status="failed") == 2
    assert value(m, "hemostat_guard_rejections_total", host=H, guard="circuit_breaker") == 1
    assert value(m, "hemostat_approvals_total", state="requested") == 1
    assert value(m, "hemostat_approvals_total", state="approved") == 1
    assert value(m, "hemostat_approvals_total", state="expired") == 1
    assert value(m, "hemostat_escalations_total", host=H, guard="crash_loop") == 1
    assert value(m, "hemostat_notifications_total", channel="slack", status="sent") == 1
    assert value(m, "hemostat_dead_letters_total", channel="hemostat:health_alert") == 1
    assert value(m, "hemostat_detection_latency_seconds_count", detector="docker_events") == 1
    assert value(m, "hemostat_end_to_end_latency_seconds_count", action="restart") == 3
    assert value(m, "hemostat_remediation_latency_seconds_count", action="restart") == 3
    # State read at scrape time
    web = {"container": "web", "service": "web", "project": "shop", "host": "h1"}
    db = {"container": "db", "service": "", "project": "", "host": "h1"}
    assert value(m, "hemostat_container_cpu_percent", **web) == 42.5
    assert value(m, "hemostat_container_memory_percent", **web, limit="container") == 91.0
    assert value(m, "hemostat_container_memory_percent", **db, limit="host") == 5.0
    assert value(m, "hemostat_container_health", **db, state="unhealthy") == 1.0
    assert value(m, "hemostat_container_restarts_total", **web) == 2
    assert value(m, "hemostat_agent_up", agent="responder") == 1
    assert value(m, "hemostat_agent_degraded", agent="monitor", instance="monitor-1") == 1
    assert value(m, "hemostat_approvals_pending") == 1
    assert (
        value(m, "hemostat_consumer_pending", channel="hemostat:health_alert", group="metrics") == 0
    )
    assert value(m, "hemostat_stream_length", channel="hemostat:remediation_complete") == 5
    assert any(name == "process_resident_memory_bytes" for name, _ in m)


async def _has(agent, name):
    return name in await scrape(agent)


async def test_labels_are_bounded_never_ids(redis, redis_url):
    await seed_state(redis)
    async with exporter(redis, redis_url) as agent:
        await publish_wave(redis)
        await wait_until(lambda: agent.consumer.stats.handled >= 13, timeout=10)
        text = await scrape(agent)
    ulid = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")
    hexid = re.compile(r"[0-9a-f]{32,}")
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            for key, val in s.labels.items():
                assert not ulid.fullmatch(val), f"{s.name}{{{key}={val}}} is an event id"
                assert not hexid.fullmatch(val), f"{s.name}{{{key}={val}}} is a container id"


async def test_stale_containers_disappear_and_a_silent_agent_reads_zero(redis, redis_url):
    await seed_state(redis)
    async with exporter(redis, redis_url) as agent:
        assert 'container="web"' in await scrape(agent)
        await redis.zadd("hemostat:containers", {"a" * 64: time.time() - 10_000})
        await redis.delete("hemostat:heartbeat:alert:alert-1")
        text = await scrape(agent)
    m = samples(text)
    assert 'container="web"' not in text
    assert value(m, "hemostat_agent_up", agent="alert") == 0

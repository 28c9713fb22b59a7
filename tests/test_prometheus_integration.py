"""A real Prometheus scrapes the exporter fed through the real bus: every PromQL expression of
every Grafana panel and every alert rule parses and returns data — or is expected empty for a
stated reason, and then the metrics it reads are shown to exist."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from shared.redis_server import free_port
from tests.support.bus import wait_until
from tests.support.metrics_seed import publish_poison, publish_wave, seed_state
from tests.support.services import unavailable
from tests.test_metrics_exporter import exporter

pytestmark = pytest.mark.redis
ROOT = Path(__file__).parent.parent

# Alert conditions that are false in this scenario, and why; their metrics must still exist.
EXPECTED_EMPTY = {
    "HemoStatAgentDown": "every agent type has a fresh heartbeat",
    "HemoStatHeartbeatStale": "heartbeats were written seconds ago",
    "HemoStatConsumerLagGrowing": "the exporter keeps up; lag stays at 0",
    "HemoStatAnalysisSlow": "seeded decisions are fast (rules)",
    "ContainerCrashLooping": "restart counts do not change during the test",
}


def panel_expressions() -> list[tuple[str, str]]:
    dashboard = json.loads((ROOT / "grafana/dashboards/hemostat-overview.json").read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]


def rule_expressions() -> list[tuple[str, str]]:
    rules = yaml.safe_load((ROOT / "prometheus/rules/hemostat.yml").read_text())
    return [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]


async def test_every_panel_and_rule_expression_returns_data(redis, redis_url, tmp_path):
    binary = shutil.which("prometheus")
    if binary is None:
        unavailable("prometheus not installed (make test installs it)")
    await seed_state(redis)
    async with exporter(redis, redis_url) as agent:
        port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ROOT / "prometheus/rules/hemostat.yml")],
            "scrape_configs": [{"job_name": "hemostat",
                                "static_configs": [{"targets": [f"127.0.0.1:{agent.port}"]}]}],
        }  # fmt: skip
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        proc = subprocess.Popen(
            [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
             "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient(base_url=base, timeout=5) as http:
                await wait_until(lambda: _ready(http), timeout=30, what="prometheus ready")
                # A first scrape sees the counters at 0, so the dead letter below is an increase.
                await wait_until(lambda: _query(http, "hemostat_dead_letters_total"), timeout=20)
                await publish_poison(redis)
                for _ in range(8):  # several waves, so rates and quantiles have something to see
                    await publish_wave(redis)
                    await asyncio.sleep(1.0)
                await wait_until(lambda: _scraped(http), timeout=20, what="samples")
                await asyncio.sleep(2.0)
                problems = []
                for title, expr in panel_expressions():
                    result = await _query(http, expr)
                    if result is None:
                        problems.append(f"panel {title!r}: {expr} -> does not parse")
                    elif not result:
                        problems.append(f"panel {title!r}: {expr} -> no data")
                for name, expr in rule_expressions():
                    result = await _query(http, expr)
                    if result is None:
                        problems.append(f"rule {name}: does not parse")
                    elif not result and name not in EXPECTED_EMPTY:
                        problems.append(f"rule {name}: no data")
                    elif result and name in EXPECTED_EMPTY:
                        problems.append(
                            f"rule {name}: expected empty ({EXPECTED_EMPTY[name]}) but fired"
                        )
                    for metric in set(re.findall(r"hemostat_[a-z_]+", expr)):
                        if not await _query(http, f"count({metric})"):
                            problems.append(f"rule {name}: metric {metric} has no series")
        finally:
            proc.terminate()
            proc.wait(30)
    assert not problems, "\n".join(problems)


async def _ready(http):
    try:
        return (await http.get("/-/ready")).status_code == 200
    except httpx.TransportError:
        return False


async def _scraped(http):
    return bool(
        await _query(
            http,
            'increase(hemostat_events_consumed_total{channel="hemostat:health_alert"}[1m]) > 0',
        )
    )


async def _query(http, expr):
    response = await http.get("/api/v1/query", params={"query": expr, "time": f"{time.time():.3f}"})
    body = response.json()
    if body.get("status") != "success":
        return None
    return body["data"]["result"]

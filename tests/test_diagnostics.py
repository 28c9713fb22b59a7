"""Runbook diagnostics for the LLM: inspect fields picked and masked, PromQL over real HTTP."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from agents.analyzer.diagnostics import DiagnosticsCollector, pick, redact_inspect
from shared.redaction import MASK, Redactor
from shared.runbooks import Runbook
from tests.support import factories
from tests.support.local_http import LocalHTTPServer, QuietHandler


def test_pick_follows_dotted_paths():
    data = {"State": {"Health": {"Status": "unhealthy"}}, "Config": {"Env": ["A=1"]}}
    assert pick(data, "State.Health.Status") == "unhealthy"
    assert pick(data, "State.Missing.Field") is None
    assert pick(data, "Config.Env") == ["A=1"]


def test_inspect_env_is_masked_wherever_it_appears():
    redactor = Redactor()
    out = redact_inspect(
        {
            "Config.Env": ["DB_PASSWORD=x1", "MODE=prod"],
            "Config": {"Env": ["TOKEN=y"], "Image": "app:1"},
        },
        redactor,
    )
    assert out["Config.Env"] == [f"DB_PASSWORD={MASK}", f"MODE={MASK}"]
    assert out["Config"]["Env"] == [f"TOKEN={MASK}"]
    assert out["Config"]["Image"] == "app:1"


@pytest.fixture
def prometheus():
    queries: list[str] = []

    class Handler(QuietHandler):
        def do_GET(self):
            query = parse_qs(urlsplit(self.path).query).get("query", [""])[0]
            queries.append(query)
            body = json.dumps(
                {
                    "status": "success",
                    "data": {
                        "resultType": "vector",
                        "result": [
                            {
                                "metric": {"container": "web", "password": "leaky-secret-1"},
                                "value": [1, "42"],
                            }
                        ],
                    },
                }
            ).encode()
            self.reply(200, body, "application/json")

    server = LocalHTTPServer(Handler)
    server.start()
    yield server.base_url, queries
    server.stop()


async def test_promql_diagnostics_substitute_the_container_and_are_redacted(prometheus):
    url, queries = prometheus
    runbook = Runbook.model_validate(
        {
            "id": "rb",
            "version": 1,
            "match": {"kinds": ["crash"]},
            "diagnostics": [
                {"type": "promql", "name": "trend", "query": 'rate(x{container="{container}"}[5m])'}
            ],
            "actions": [{"id": "notify", "type": "none"}],
            "default_action": "notify",
        }
    )
    async with httpx.AsyncClient() as http:
        collector = DiagnosticsCollector(None, Redactor(), url, http)
        evidence, _ = await collector.collect(factories.health_alert("c1"), runbook)
    assert queries == ['rate(x{container="name-c1"}[5m])']
    [series] = evidence["promql:trend"]
    assert series["value"] == [1, "42"]
    assert series["metric"]["password"] == MASK


async def test_an_unreachable_prometheus_is_reported_not_raised():
    runbook = Runbook.model_validate(
        {
            "id": "rb",
            "version": 1,
            "match": {"kinds": ["crash"]},
            "diagnostics": [{"type": "promql", "name": "trend", "query": "up"}],
            "actions": [{"id": "notify", "type": "none"}],
            "default_action": "notify",
        }
    )
    async with httpx.AsyncClient() as http:
        collector = DiagnosticsCollector(None, Redactor(), "http://127.0.0.1:1", http)
        evidence, _ = await collector.collect(factories.health_alert("c1"), runbook)
    assert evidence["error:promql"].startswith("could not collect")

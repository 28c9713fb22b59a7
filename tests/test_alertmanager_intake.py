"""Alertmanager webhook intake: payload parsing (pure) and the HTTP endpoint on a running Monitor
(real HTTP, real Redis): valid, duplicate, resolved, malformed, wrong token."""

from __future__ import annotations

import asyncio
import copy
import json

import docker as docker_sdk
import httpx
import pytest

from agents.monitor.agent import MonitorAgent
from agents.monitor.alertmanager import convert, parse_payload
from agents.monitor.cgroups import CgroupReader
from shared.docker_api import DockerGateway
from shared.errors import InvalidPayload
from shared.events import AlertKind, AlertStatus, Channel, Severity
from shared.redis_server import free_port
from tests.conftest import make_settings
from tests.support.streams import events_on

FIRING = {
    "version": "4",
    "groupKey": '{}:{alertname="HighErrorRate"}',
    "truncatedAlerts": 0,
    "status": "firing",
    "receiver": "hemostat",
    "groupLabels": {"alertname": "HighErrorRate"},
    "commonLabels": {},
    "commonAnnotations": {},
    "externalURL": "http://alertmanager:9093",
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "HighErrorRate", "severity": "critical", "container": "web-1"},
            "annotations": {
                "summary": "5xx above 5% on web-1",
                "runbook": "see https://wiki/x?token=abcdef123456",
            },
            "startsAt": "2026-11-21T10:00:00.000Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus:9090/graph",
            "fingerprint": "a1b2c3d4e5f60718",
        }
    ],
}


def resolved_payload():
    data = copy.deepcopy(FIRING)
    data["status"] = "resolved"
    data["alerts"][0]["status"] = "resolved"
    data["alerts"][0]["endsAt"] = "2026-11-21T10:05:00.000Z"
    return data


def test_valid_payload_converts_to_an_external_alert():
    [alert] = parse_payload(json.dumps(FIRING).encode()).alerts
    ext = convert(alert)
    assert ext.payload.kind is AlertKind.EXTERNAL
    assert ext.payload.alertname == "HighErrorRate"
    assert ext.payload.fingerprint == "a1b2c3d4e5f60718"
    assert ext.severity is Severity.CRITICAL
    assert ext.container_name == "web-1"
    assert ext.payload.ends_at is None, "firing alerts carry no end"


def test_resolved_alert_is_a_resolution_with_its_end_time():
    [alert] = parse_payload(json.dumps(resolved_payload()).encode()).alerts
    ext = convert(alert)
    assert ext.payload.status is AlertStatus.RESOLVED
    assert ext.severity is Severity.INFO
    assert ext.occurred_at.isoformat().startswith("2026-11-21T10:05")
    assert ext.dedup_key != convert(parse_payload(json.dumps(FIRING).encode()).alerts[0]).dedup_key


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: "not json", "body is not JSON"),
        (lambda d: [], "JSON object"),
        (lambda d: d | {"version": "3"}, "version"),
        (lambda d: d | {"alerts": []}, "alerts"),
        (lambda d: d | {"alerts": [{"status": "firing"}]}, "alerts.0.labels"),
        (
            lambda d: d | {"alerts": [FIRING["alerts"][0] | {"status": "exploded"}]},
            "alerts.0.status",
        ),
        (lambda d: d | {"alerts": [FIRING["alerts"][0] | {"startsAt": "yesterday"}]}, "startsAt"),
        (lambda d: d | {"alerts": [FIRING["alerts"][0] | {"fingerprint": ""}]}, "fingerprint"),
    ],
)
def test_malformed_payloads_name_what_is_wrong(mutate, reason):
    data = mutate(copy.deepcopy(FIRING))
    body = data.encode() if isinstance(data, str) else json.dumps(data).encode()
    with pytest.raises(InvalidPayload, match=reason):
        parse_payload(body)


def test_extra_fields_from_newer_alertmanagers_are_tolerated():
    data = copy.deepcopy(FIRING) | {"somethingNew": 1}
    data["alerts"][0]["newField"] = "x"
    assert parse_payload(json.dumps(data).encode()).alerts[0].fingerprint


@pytest.fixture
async def webhook(redis, redis_url):
    port = free_port()
    settings = make_settings(
        redis_url,
        webhook_port=port,
        webhook_host="127.0.0.1",
        watch_label="hemostat.test=no-container",  # the webhook only: no Docker alerts here
        webhook_token="s3cret-token",
        monitor_poll_interval_s=60,
    )
    client = docker_sdk.from_env()
    agent = MonitorAgent(
        settings=settings, redis=redis, docker=DockerGateway(client), cgroups=CgroupReader()
    )
    task = asyncio.create_task(agent.run())
    url = f"http://127.0.0.1:{port}/webhook/alertmanager"
    async with httpx.AsyncClient(headers={"Authorization": "Bearer s3cret-token"}) as http:
        for _ in range(100):
            try:
                if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                    break
            except httpx.TransportError:
                await asyncio.sleep(0.05)
        yield http, url
    agent.stop()
    await asyncio.wait_for(task, 30)
    client.close()


@pytest.mark.redis
@pytest.mark.docker
async def test_webhook_publishes_once_dedups_resolves_and_rejects(webhook, redis):
    http, url = webhook
    first = await http.post(url, json=FIRING)
    assert first.status_code == 200
    assert first.json() == {"published": 1, "duplicates": 0}
    again = await http.post(url, json=FIRING)  # Alertmanager re-delivers on its repeat interval
    assert again.json() == {"published": 0, "duplicates": 1}

    bad = await http.post(url, content=b'{"version": "4", "alerts": "nope"}')
    assert bad.status_code == 400
    assert "invalid Alertmanager payload" in bad.json()["error"]
    assert "alerts" in bad.json()["error"]

    done = await http.post(url, json=resolved_payload())
    assert done.json() == {"published": 1, "duplicates": 0}

    events = await events_on(redis, Channel.HEALTH_ALERT)
    assert [(e.payload.kind, e.payload.status) for e in events] == [
        (AlertKind.EXTERNAL, AlertStatus.FIRING),
        (AlertKind.EXTERNAL, AlertStatus.RESOLVED),
    ]
    fired = events[0]
    assert fired.payload.labels["alertname"] == "HighErrorRate"
    assert fired.payload.annotations["summary"] == "5xx above 5% on web-1"
    assert "abcdef123456" not in fired.model_dump_json(), "annotations are redacted"
    assert fired.subject.container_name == "web-1"
    assert fired.severity is Severity.CRITICAL
    assert fired.idempotency_key.startswith("alertmanager:")


@pytest.mark.redis
@pytest.mark.docker
async def test_webhook_requires_the_token_when_configured(webhook, redis):
    http, url = webhook
    async with httpx.AsyncClient() as anonymous:
        denied = await anonymous.post(url, json=FIRING)
        wrong = await anonymous.post(url, json=FIRING, headers={"Authorization": "Bearer nope"})
    assert denied.status_code == 401
    assert wrong.status_code == 401
    assert await redis.xlen(Channel.HEALTH_ALERT) == 0
    assert (await http.post(url, json=FIRING)).status_code == 200
    assert (await http.post(url.replace("alertmanager", "other"), json=FIRING)).status_code == 404


# ---------------------------------------------------------------- the door itself


class Door:
    """The webhook server alone, with an ingest that only counts what got through."""

    def __init__(self, **kw):
        self.bodies: list[bytes] = []
        self.kw = kw

    async def __aenter__(self):
        from agents.monitor.alertmanager import WebhookServer

        async def ingest(body: bytes):
            self.bodies.append(body)
            return 200, {"published": 0}

        self.server = WebhookServer(
            "127.0.0.1", 0, ingest, asyncio.get_running_loop(), token="s3cret", **self.kw
        )
        self.server.start()
        return self

    async def __aexit__(self, *exc):
        await asyncio.to_thread(self.server.stop)

    async def raw(self, head: bytes, body: bytes = b"", read_timeout: float = 30) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.server.port)
        writer.write(head + body)
        await writer.drain()
        try:
            return await asyncio.wait_for(reader.read(65536), timeout=read_timeout)
        finally:
            writer.close()


def head(length: str | None = "2", token: str = "s3cret", extra: str = "") -> bytes:
    lines = ["POST /webhook/alertmanager HTTP/1.1", "Host: x", f"Authorization: Bearer {token}"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + extra + "\r\n\r\n").encode()


async def test_a_stranger_is_refused_before_a_byte_of_the_body_is_read():
    async with Door() as door:
        # Announces a 900 KiB body and sends none of it: the answer comes anyway, at once.
        answer = await door.raw(head(str(900 * 1024), token="wrong"))
    assert answer.startswith(b"HTTP/1.1 401")
    assert door.bodies == []


@pytest.mark.parametrize(
    ("length", "extra", "status"),
    [
        ("-1", "", b"400"),  # "read until the end": the old way past the 1 MiB limit
        ("abc", "", b"400"),
        (None, "", b"411"),
        ("2", "\r\nTransfer-Encoding: chunked", b"400"),
        (str(10 * 1024 * 1024), "", b"413"),
    ],
)
async def test_the_body_limit_holds_whatever_the_headers_say(length, extra, status):
    async with Door() as door:
        answer = await door.raw(head(length, extra=extra), b"{}")
    assert answer.split(b" ", 2)[1] == status, answer[:80]
    assert door.bodies == []


async def test_a_client_that_stalls_is_cut_off():
    async with Door(read_timeout_s=0.5) as door:
        # Headers promise 100 bytes, 2 arrive, then nothing: the server closes the connection.
        answer = await door.raw(head("100"), b"{}", read_timeout=30)
    assert not answer.startswith(b"HTTP/1.1 200")
    assert door.bodies == []


async def test_each_client_is_rate_limited():
    async with Door(rate_per_s=2.0) as door:
        codes = [(await door.raw(head("2"), b"{}")).split(b" ", 2)[1] for _ in range(8)]
    assert codes[:4] == [b"200"] * 4, "a burst of twice the rate goes through"
    assert b"429" in codes[4:]


async def test_the_monitor_refuses_to_open_the_webhook_beyond_loopback_without_a_token(
    redis, redis_url
):
    from shared.errors import ConfigError

    settings = make_settings(redis_url, webhook_port=free_port(), webhook_host="0.0.0.0")
    client = docker_sdk.from_env()
    agent = MonitorAgent(
        settings=settings, redis=redis, docker=DockerGateway(client), cgroups=CgroupReader()
    )
    with pytest.raises(ConfigError, match="HEMOSTAT_WEBHOOK_TOKEN"):
        await agent.on_start()
    client.close()

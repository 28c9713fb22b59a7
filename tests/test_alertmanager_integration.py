"""A real Alertmanager, fed an alert through its API, delivers to the Monitor's webhook and a
health alert appears on the bus; resolving it delivers a resolution."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import docker as docker_sdk
import httpx
import pytest
import yaml

from agents.monitor.agent import MonitorAgent
from agents.monitor.cgroups import CgroupReader
from shared.docker_api import DockerGateway
from shared.events import AlertKind, AlertStatus, Channel
from shared.redis_server import free_port
from tests.conftest import make_settings
from tests.support.bus import wait_until
from tests.support.services import unavailable
from tests.support.streams import events_on

pytestmark = [pytest.mark.redis, pytest.mark.docker]


async def test_alertmanager_delivers_to_the_monitor_webhook(redis, redis_url, tmp_path):
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        unavailable("prometheus-alertmanager not installed (make test installs it)")
    hook_port, am_port = free_port(), free_port()
    settings = make_settings(
        redis_url,
        webhook_port=hook_port,
        webhook_host="127.0.0.1",
        webhook_token="am-to-monitor-token-1234",  # the bundled config must send it
        watch_label="hemostat.test=no-container",  # the webhook only: no Docker alerts here
        monitor_poll_interval_s=60,
    )
    client = docker_sdk.from_env()
    monitor = MonitorAgent(
        settings=settings, redis=redis, docker=DockerGateway(client), cgroups=CgroupReader()
    )
    # The bundled alertmanager.yml, with only the address, the token file's path and the
    # timings changed: it is what sends the Monitor its token in the stack.
    config = yaml.safe_load(
        (Path(__file__).parent.parent / "alertmanager/alertmanager.yml").read_text()
    )
    config["route"] |= {"group_wait": "1s", "group_interval": "1s"}
    [hook] = config["receivers"][0]["webhook_configs"]
    hook["url"] = f"http://127.0.0.1:{hook_port}/webhook/alertmanager"
    token_file = tmp_path / "webhook_token"
    token_file.write_text("am-to-monitor-token-1234")
    hook["http_config"]["authorization"]["credentials_file"] = str(token_file)
    (tmp_path / "am.yml").write_text(yaml.safe_dump(config))
    task = asyncio.create_task(monitor.run())
    proc = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'am.yml'}", f"--storage.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address=", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{am_port}", timeout=5) as http:
            await wait_until(lambda: _ready(http), timeout=30, what="alertmanager ready")
            starts = datetime.now(UTC) - timedelta(seconds=5)
            alert = {
                "labels": {
                    "alertname": "DiskAlmostFull",
                    "severity": "critical",
                    "container": "db-1",
                },
                "annotations": {"summary": "disk 97% full on db-1"},
                "startsAt": starts.isoformat(),
                "generatorURL": "http://prometheus/graph",
            }
            assert (await http.post("/api/v2/alerts", json=[alert])).status_code == 200
            await wait_until(
                lambda: _alerts(redis, AlertStatus.FIRING), timeout=30, what="firing alert"
            )
            resolved = alert | {"endsAt": datetime.now(UTC).isoformat()}
            assert (await http.post("/api/v2/alerts", json=[resolved])).status_code == 200
            await wait_until(
                lambda: _alerts(redis, AlertStatus.RESOLVED), timeout=30, what="resolution"
            )
    finally:
        proc.terminate()
        proc.wait(30)
        monitor.stop()
        await asyncio.wait_for(task, 30)
    events = await events_on(redis, Channel.HEALTH_ALERT)
    firing = next(e for e in events if e.payload.status is AlertStatus.FIRING)
    assert firing.payload.kind is AlertKind.EXTERNAL
    assert firing.payload.alertname == "DiskAlmostFull"
    assert firing.payload.summary == "disk 97% full on db-1"
    assert firing.subject.container_name == "db-1"
    assert firing.payload.fingerprint


async def _ready(http):
    try:
        return (await http.get("/-/ready")).status_code == 200
    except httpx.TransportError:
        return False


async def _alerts(redis, status):
    return any(e.payload.status is status for e in await events_on(redis, Channel.HEALTH_ALERT))

"""A canary planted in a container's environment and logs never reaches the LLM, a notification,
or any stream: the real Monitor, Analyzer, Responder and Alert agents, a real container, local
LLM and webhook servers."""

from __future__ import annotations

import asyncio

import docker as docker_sdk
import httpx
import pytest

from agents.alert.agent import AlertAgent, build_channels
from agents.analyzer.agent import AnalyzerAgent
from agents.analyzer.diagnostics import DiagnosticsCollector
from agents.analyzer.llm import build_client
from agents.monitor.agent import MonitorAgent
from agents.monitor.cgroups import CgroupReader
from agents.responder.agent import ResponderAgent
from shared.docker_api import DockerGateway
from shared.redaction import Redactor
from shared.runbooks import load_runbooks
from tests.conftest import make_settings
from tests.support.bus import wait_until
from tests.support.fake_llm import FakeLLM, Reply, verdict
from tests.support.webhooks import Receiver

pytestmark = [pytest.mark.docker, pytest.mark.redis]
CANARY = "cnry-5f0e19d2b7"  # a value with no secret-looking shape and an innocent variable name

RUNBOOK = """
id: canary-unhealthy
version: 1
match: {kinds: [unhealthy]}
diagnostics:
  - {type: inspect, fields: [Config.Env, State.Health]}
  - {type: logs, tail: 20}
actions:
  - id: dump-env
    type: exec
    params: {argv: [sh, -c, "env; echo config loaded: $APP_SETTING"]}
    verify: {enabled: false}
default_action: dump-env
"""


async def test_canary_from_env_and_logs_never_leaves(
    redis, redis_url, docker, test_image, run_label, tmp_path
):
    folder = tmp_path / "runbooks"
    folder.mkdir()
    (folder / "canary.yaml").write_text(RUNBOOK)
    receiver = Receiver().start()
    fake = FakeLLM(
        default=Reply(
            text=verdict(
                action_id="dump-env", root_cause=f"APP_SETTING is {CANARY}, the log says so"
            )
        )
    )  # a leaky model
    fake.start()
    [(key, value)] = run_label.items()
    settings = make_settings(
        redis_url,
        dry_run=False,
        watch_label=f"{key}={value}",  # this test's containers only
        runbooks_dir=folder,
        monitor_poll_interval_s=0.5,
        webhook_port=0,
        llm_provider="anthropic",
        anthropic_api_key="sk-ant-test-0000000000000000",
        anthropic_base_url=fake.url,
        llm_max_retries=0,
        slack_webhook_url=receiver.url("/slack"),
        discord_webhook_url=receiver.url("/discord"),
        ntfy_url=receiver.url("/ntfy"),
        ntfy_topic="ops",
        alert_routes="info=slack,discord,ntfy;warning=slack,discord,ntfy;critical=slack,discord,ntfy",
    )
    clients = [docker_sdk.from_env() for _ in range(3)]
    http = httpx.AsyncClient()
    redactor = Redactor(settings.secret_values())  # the canary is NOT registered anywhere
    agents = [
        MonitorAgent(
            settings=settings, redis=redis, docker=DockerGateway(clients[0]), cgroups=CgroupReader()
        ),
        AnalyzerAgent(
            settings=settings,
            redis=redis,
            runbooks=load_runbooks(folder),
            llm=build_client(settings),
            diagnostics=DiagnosticsCollector(DockerGateway(clients[1]), redactor),
        ),
        ResponderAgent(
            settings=settings,
            redis=redis,
            docker=DockerGateway(clients[2]),
            runbooks=load_runbooks(folder),
        ),
        AlertAgent(
            settings=settings,
            redis=redis,
            channels=build_channels(settings, http, redactor),
            http=http,
        ),
    ]
    tasks = [asyncio.create_task(a.run()) for a in agents]
    try:
        await asyncio.wait_for(agents[0]._connected.wait(), 20)
        docker.containers.run(
            test_image,
            [
                "sh",
                "-c",
                f"echo starting with APP_SETTING={CANARY}; echo using {CANARY} now; sleep 600",
            ],
            environment={"APP_SETTING": CANARY},
            healthcheck={"test": ["CMD", "false"], "interval": 300_000_000, "retries": 1},
            labels=run_label | {"hemostat.remediate": "true"},
            detach=True,
        )
        await wait_until(lambda: len(receiver.hits) >= 3, timeout=40, what="notifications")
    finally:
        for agent in agents:
            agent.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        receiver.stop()
        fake.stop()
        for client in clients:
            client.close()
    assert fake.requests, "the LLM was asked"
    assert CANARY not in fake.bodies(), "the canary reached the LLM"
    notifications = receiver.all_text()
    assert CANARY not in notifications, "the canary reached a notification"
    assert "APP_SETTING=***" in notifications, "the exec output is there, masked"
    for stream in [k async for k in redis.scan_iter("hemostat:*")]:
        if await redis.type(stream) == "stream":
            for _, fields in await redis.xrange(stream):
                assert CANARY not in str(fields), f"the canary is stored in {stream}"

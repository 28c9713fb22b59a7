"""The compose stack as the compose CLI reads it (no container starts): who can reach what,
what each service receives, how each is hardened, and `make up` refusing example secrets."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from shared import stack_env
from tests.support.services import unavailable

ROOT = Path(__file__).parent.parent
AGENTS = ("monitor", "analyzer", "responder", "alert", "metrics")
SECRETS = {
    "REDIS_PASSWORD": "redis-pw-4b1d9c0e7a",
    "GRAFANA_ADMIN_PASSWORD": "grafana-pw-51c0ff33",
    "HEMOSTAT_WEBHOOK_TOKEN": "webhook-token-9e8d7c6b5a",
    "ANTHROPIC_API_KEY": "sk-ant-test-llm-key-0000000000",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/slacksecret000",
    "HEMOSTAT_DASHBOARD_PASSWORD": "dashboard-pw-77aa",
}


def _compose() -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        unavailable("docker compose not installed (make test installs it)")
    return ["docker", "compose"]


def example_env(**values: str) -> str:
    lines = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        key = line.split("=", 1)[0] if "=" in line and not line.startswith("#") else None
        lines.append(f"{key}={values[key]}" if key in values else line)
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("compose")
    env_file = tmp / ".env"
    env_file.write_text(example_env(**SECRETS))
    stack_env.write(stack_env.read_env_file(env_file), tmp / "env")
    return compose_config(env_file, tmp / "env", "--profile", "demo")


def compose_config(env_file: Path, env_dir: Path, *args: str) -> dict[str, Any]:
    """What `docker compose ... config` makes of a compose file with this .env (no container)."""
    out = subprocess.run(
        [*_compose(), *args, "--env-file", str(env_file), "config", "--format", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin:/usr/local/bin", "STACK_ENV_DIR": str(env_dir),
             "DOCKER_SOCKET_GID": "998"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    parsed: dict[str, Any] = json.loads(out.stdout)
    return parsed


def test_only_the_socket_proxies_mount_the_docker_socket(config):
    services = config["services"]
    mounts = {
        name: [v["source"] for v in s.get("volumes", []) if v["type"] == "bind"]
        for name, s in services.items()
    }
    holders = sorted(n for n, m in mounts.items() if "/var/run/docker.sock" in m)
    assert holders == ["socket-proxy-act", "socket-proxy-read"]
    assert "ports" not in services["redis"], "Redis is never published"
    for name in ("dashboard", "prometheus", "alertmanager", "grafana"):
        assert all(p["host_ip"] == "127.0.0.1" for p in services[name]["ports"]), name


def _peers(config: dict[str, Any], service: str) -> set[str]:
    """Every service sharing at least one network with `service`."""
    services = config["services"]
    mine = set(services[service].get("networks") or {})
    return {
        name
        for name, s in services.items()
        if name != service and mine & set(s.get("networks") or {})
    }


def test_only_the_monitor_and_analyzer_reach_the_read_proxy_and_only_the_responder_the_act_one(
    config,
):
    assert _peers(config, "socket-proxy-read") == {"monitor", "analyzer"}
    assert _peers(config, "socket-proxy-act") == {"responder"}
    networks = config["networks"]
    for name in ("data", "proxy-read", "proxy-act", "obs"):
        assert networks[name].get("internal") is True, name
    assert "redis" not in _peers(config, "grafana")
    for demo in ("demo-crashloop", "demo-unhealthy", "demo-leak", "demo-cpu"):
        assert _peers(config, demo) <= {"demo-crashloop", "demo-unhealthy", "demo-leak", "demo-cpu"}


def test_each_agent_receives_only_its_own_settings(config):
    env = {name: s.get("environment") or {} for name, s in config["services"].items()}
    holders = {
        secret: sorted(n for n, e in env.items() if any(secret_value in str(v) for v in e.values()))
        for secret, secret_value in SECRETS.items()
    }
    assert holders["ANTHROPIC_API_KEY"] == ["analyzer"]
    assert holders["SLACK_WEBHOOK_URL"] == ["alert"]
    assert holders["HEMOSTAT_WEBHOOK_TOKEN"] == ["monitor"]
    assert holders["HEMOSTAT_DASHBOARD_PASSWORD"] == ["dashboard"]
    assert holders["GRAFANA_ADMIN_PASSWORD"] == ["grafana"]
    # Redis's password: Redis itself and whoever must talk to it, no one else.
    assert holders["REDIS_PASSWORD"] == sorted(["redis", *AGENTS, "dashboard"])


def test_every_service_is_hardened(config):
    for name, s in config["services"].items():
        if name.startswith("demo-"):
            continue
        assert "ALL" in (s.get("cap_drop") or []), name
        assert "no-new-privileges:true" in (s.get("security_opt") or []), name
        if name != "grafana":  # (not proven read-only: no Grafana to run here)
            assert s.get("read_only") is True, name
    for proxy in ("socket-proxy-read", "socket-proxy-act"):
        assert "user" not in config["services"][proxy], "the image's own non-root user"
        assert config["services"][proxy]["group_add"] == ["998"]
    assert config["services"]["responder"]["environment"]["HEMOSTAT_DRY_RUN"] == "true"
    for name in AGENTS:
        s = config["services"][name]
        assert s["healthcheck"]["test"] == ["CMD", "hemostat", "check", name]
        assert s["labels"]["hemostat.stack"] == "true"


def test_example_secrets_are_refused_with_the_variable_named_and_a_strong_value_offered(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text((ROOT / ".env.example").read_text())
    done = subprocess.run(
        [".venv/bin/hemostat", "config", "stack-env", "--env-file", str(env_file),
         "--out", str(tmp_path / "env")],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 1
    for name in stack_env.REQUIRED:
        assert name in done.stdout
    assert "still has its example value" in done.stdout
    assert not (tmp_path / "env").exists(), "nothing is written, nothing can start"
    suggested = [
        line.split("=", 1)[1] for line in done.stdout.splitlines() if "REDIS_PASSWORD=" in line
    ]
    assert len(suggested[0]) >= 32
    env_file.write_text(example_env(**SECRETS))
    ok = subprocess.run(
        [".venv/bin/hemostat", "config", "stack-env", "--env-file", str(env_file),
         "--out", str(tmp_path / "env")],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stdout
    assert oct((tmp_path / "env").stat().st_mode)[-3:] == "700"
    assert oct((tmp_path / "env" / "analyzer.env").stat().st_mode)[-3:] == "600"


def test_make_up_checks_the_secrets_before_compose_runs():
    dry = subprocess.run(["make", "-n", "up"], cwd=ROOT, capture_output=True, text=True).stdout
    assert dry.index("config stack-env") < dry.index("docker compose up")


def test_no_password_is_on_a_command_line(config):
    """A command line shows in `docker inspect` and /proc/<pid>/cmdline for anyone on the host."""
    for name, service in config["services"].items():
        command = service.get("command") or []
        text = command if isinstance(command, str) else " ".join(map(str, command))
        assert "redis-pw-4b1d9c0e7a" not in text, f"{name} has the Redis password in its command"


def test_every_agent_names_the_same_host(config):
    """A container's own hostname is its id: without one name for the whole stack, the Responder
    (which acts only on its host's requests) would never act on what the Monitor saw."""
    names = {
        name: (config["services"][name].get("environment") or {}).get("HEMOSTAT_HOST_NAME")
        for name in AGENTS
    }
    assert len(set(names.values())) == 1 and None not in names.values(), names


# ---------------------------------------------------------------- an edge host of a fleet

EDGE_URL = "rediss://:central-pw-0c1a2b3c@redis.central.example:6380/0"


@pytest.fixture(scope="module")
def edge_config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("edge")
    env_file = tmp / ".env"
    env_file.write_text(
        example_env(**SECRETS, REDIS_URL=EDGE_URL, HEMOSTAT_HOST_NAME="edge-7")
        + "HEMOSTAT_REDIS_TLS_CA_FILE=/run/hemostat/tls/ca.pem\n"
    )
    env = stack_env.read_env_file(env_file)
    assert stack_env.check_edge(env) == []
    stack_env.write(env, tmp / "env", stack_env.EDGE_ROLES)
    return compose_config(env_file, tmp / "env", "-f", "docker-compose.edge.yml")


def test_an_edge_runs_the_monitor_and_responder_against_the_central_redis_only(edge_config):
    services = edge_config["services"]
    assert sorted(services) == ["monitor", "responder", "socket-proxy-act", "socket-proxy-read"]
    assert _peers(edge_config, "socket-proxy-read") == {"monitor"}
    assert _peers(edge_config, "socket-proxy-act") == {"responder"}
    for name, s in services.items():
        assert "ports" not in s, f"{name}: an edge publishes nothing"
        assert "ALL" in s["cap_drop"] and s["read_only"] is True, name
        binds = [v["source"] for v in s.get("volumes", []) if v["type"] == "bind"]
        assert ("/var/run/docker.sock" in binds) == name.startswith("socket-proxy"), name
    for agent in ("monitor", "responder"):
        env = services[agent]["environment"]
        assert env["REDIS_URL"] == EDGE_URL, "the central Redis, from .env"
        assert env["HEMOSTAT_HOST_NAME"] == "edge-7", "every event names this host"
        assert env["HEMOSTAT_REDIS_TLS_CA_FILE"] == "/run/hemostat/tls/ca.pem"
        assert "ANTHROPIC_API_KEY" not in env and "SLACK_WEBHOOK_URL" not in env
        assert "HEMOSTAT_DASHBOARD_PASSWORD" not in env
    assert services["monitor"]["environment"]["HEMOSTAT_WEBHOOK_PORT"] == "0"
    assert services["responder"]["environment"]["HEMOSTAT_DRY_RUN"] == "true"


@pytest.mark.parametrize(
    "url", ["", "redis://:pw-0c1a2b3c@127.0.0.1:6379/0", "redis://:pw-0c1a2b3c@redis:6379/0"]
)
def test_an_edge_refuses_to_start_without_a_central_redis(tmp_path, url):
    env_file = tmp_path / ".env"
    env_file.write_text(example_env(**SECRETS, REDIS_URL=url))
    done = subprocess.run(
        [".venv/bin/hemostat", "config", "stack-env", "--edge", "--env-file", str(env_file),
         "--out", str(tmp_path / "env")],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 1
    assert "REDIS_URL" in done.stdout and "central" in done.stdout
    assert not (tmp_path / "env").exists(), "nothing written"

"""`make e2e`: the real compose stack on this machine's Docker engine, with the offline stand-in
images (scripts/offline-images.sh). Grafana has no Debian package, so it is the one service left
out. Set up as `make up` does it (strong secrets in .env, one env file per service, the socket's
group), starts the demo profile, proves healing end to end, checks who can reach which socket
proxy and what each allows, and tears everything down."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared import stack_env
from tests.support.services import unavailable

pytestmark = pytest.mark.compose
ROOT = Path(__file__).resolve().parent.parent.parent
PROJECT = "hemostat-e2e"
SERVICES = [
    "redis",
    "socket-proxy-read",
    "socket-proxy-act",
    "monitor",
    "analyzer",
    "responder",
    "alert",
    "metrics",
    "dashboard",
    "prometheus",
    "alertmanager",
]
DEMO = ["demo-crashloop", "demo-unhealthy", "demo-leak", "demo-cpu"]
TIMINGS: dict[str, float] = {}


def sh(
    *argv: str, check: bool = True, env: dict[str, str] | None = None, timeout: float = 600
) -> str:
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=env, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    return done.stdout


class Compose:
    def __init__(self, env_file: Path, env_dir: Path) -> None:
        self.base = [
            "docker",
            "compose",
            "--env-file",
            str(env_file),
            "-p",
            PROJECT,
            "--profile",
            "demo",
        ]
        self.env = dict(os.environ) | {
            "HEMOSTAT_DRY_RUN": "false",  # the demo acts
            "STACK_ENV_DIR": str(env_dir),
            "DOCKER_SOCKET_GID": str(os.stat("/var/run/docker.sock").st_gid),
        }

    def __call__(self, *args: str, check: bool = True, timeout: float = 600) -> str:
        return sh(*self.base, *args, check=check, env=self.env, timeout=timeout)

    def py(self, service: str, code: str) -> str:
        return self("exec", "-T", service, "python", "-c", code)


def timed(name: str):  # type: ignore[no-untyped-def]
    class Timer:
        def __enter__(self) -> None:
            self.started = time.monotonic()

        def __exit__(self, *exc: object) -> None:
            TIMINGS[name] = round(time.monotonic() - self.started, 1)

    return Timer()


REQUIRED_IMAGES = (
    "hemostat:latest",
    "python:3.11-slim",
    "redis:7-alpine",
    "prom/prometheus:v2.53.0",
    "prom/alertmanager:v0.27.0",
    "busybox:1.36",
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Compose]:
    folder = tmp_path_factory.mktemp("compose")
    env_file = folder / ".env"
    # What `make up` asks of a person: strong values for every secret the stack needs.
    secrets = {name: uuid.uuid4().hex for name in stack_env.REQUIRED}
    lines = [
        f"{line.split('=', 1)[0]}={secrets[line.split('=', 1)[0]]}"
        if "=" in line and not line.startswith("#") and line.split("=", 1)[0] in secrets
        else line
        for line in (ROOT / ".env.example").read_text().splitlines()
    ]
    env_file.write_text("\n".join(lines) + "\n")
    env = stack_env.read_env_file(env_file)
    assert not stack_env.check(env), stack_env.check(env)
    stack_env.write(env, folder / "env")
    compose = Compose(env_file, folder / "env")
    started = time.monotonic()
    try:
        # `make images` built them (outside any test's timeout); here they must exist.
        for image in REQUIRED_IMAGES:
            if not sh("docker", "images", "-q", image, check=False).strip():
                unavailable(f"image {image} is missing: `make images` builds it")
        with timed("compose up (healthy)"):
            compose("up", "-d", "--wait", "--wait-timeout", "180", *SERVICES)
            compose("up", "-d", "--no-deps", *DEMO)
        yield compose
    finally:
        with timed("teardown"):
            compose("down", "-v", "--remove-orphans", "--timeout", "5", check=False)
        TIMINGS["total"] = round(time.monotonic() - started, 1)
        print(f"\ncompose e2e timings (s): {json.dumps(TIMINGS)}")
        left = sh(
            "docker", "ps", "-a", "--filter", f"label=com.docker.compose.project={PROJECT}", "-q"
        )
        assert not left.strip(), "teardown left containers behind"


READ_OUTCOMES = """
import json, os, redis
r = redis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)
out = []
for _, f in r.xrange("hemostat:remediation_complete"):
    e = json.loads(f["event"])
    out.append({"container": e["subject"]["container_name"], "status": e["payload"]["status"],
                "guard": e["payload"]["guard"], "kind": e["payload"]["alert_kind"]})
print(json.dumps(out))
"""


def outcomes(stack: Compose) -> list[dict[str, str]]:
    return json.loads(stack.py("monitor", READ_OUTCOMES))


def wait(condition, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last})")


def test_every_service_is_healthy(stack):
    rows = [
        json.loads(line) for line in stack("ps", "--format", "json").splitlines() if line.strip()
    ]
    health = {row["Service"]: row.get("Health", "") for row in rows}
    for service in SERVICES:
        assert health.get(service) == "healthy", health


def test_demo_containers_are_detected_and_healed(stack):
    with timed("healing"):

        def healed() -> bool:
            done = outcomes(stack)
            ok = {o["container"] for o in done if o["status"] == "succeeded"}
            return all(any(d in c for c in ok) for d in ("demo-crashloop", "demo-unhealthy"))

        wait(healed, 240, "the crash-looping and the unhealthy demo containers remediated")
    kinds = {
        (o["container"].split("-", 2)[-1].rsplit("-", 1)[0], o["kind"]) for o in outcomes(stack)
    }
    assert ("demo-crashloop", "crash") in kinds
    assert ("demo-unhealthy", "unhealthy") in kinds


def test_dashboard_answers_on_its_port(stack):
    assert httpx.get("http://127.0.0.1:8501/_stcore/health", timeout=10).text == "ok"


def test_prometheus_scraped_hemostat(stack):
    def scraped():
        r = httpx.get(
            "http://127.0.0.1:9090/api/v1/query", params={"query": 'up{job="hemostat"}'}, timeout=10
        )
        result = r.json()["data"]["result"]
        return result and result[0]["value"][1] == "1"

    wait(scraped, 60, "Prometheus scraping the exporter")
    r = httpx.get(
        "http://127.0.0.1:9090/api/v1/query", params={"query": "sum(hemostat_health_alerts_total)"}
    )
    assert float(r.json()["data"]["result"][0]["value"][1]) > 0


def test_alertmanager_webhook_path_reaches_the_monitor(stack):
    alert = [
        {
            "labels": {"alertname": "E2EProbe", "severity": "warning"},
            "annotations": {"summary": "compose e2e probe"},
        }
    ]
    assert (
        httpx.post("http://127.0.0.1:9093/api/v2/alerts", json=alert, timeout=10).status_code == 200
    )
    probe = """
import json, os, redis
r = redis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)
print(any('"alertname":"E2EProbe"' in f["event"] for _, f in r.xrange("hemostat:health_alert")))
"""
    wait(
        lambda: stack.py("monitor", probe).strip() == "True",
        90,
        "the probe alert as a health alert",
    )


def test_redis_keeps_its_data_across_a_restart(stack):
    write = """
import os, redis
r = redis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)
r.set("e2e:marker", "kept"); print(r.xlen("hemostat:health_alert"))
"""
    before = int(stack.py("monitor", write))
    stack("restart", "redis")
    stack("up", "-d", "--wait", "--wait-timeout", "60", "redis")
    read = """
import os, redis
r = redis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)
print(r.get("e2e:marker"), r.xlen("hemostat:health_alert"))
"""
    marker, after = wait(lambda: _read(stack, read), 60, "Redis back").split()
    assert marker == "kept"
    assert int(after) >= before


def _read(stack, code):  # type: ignore[no-untyped-def]
    try:
        return stack.py("monitor", code).strip()
    except AssertionError:
        return None


PROXY = """
import json, urllib.request, urllib.error
def call(method, url, body=None):
    request = urllib.request.Request(url, method=method, data=body, headers={"Content-Type": "application/json"})
    try:
        return urllib.request.urlopen(request, timeout=10).status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError) as e:
        return "unreachable"
base = "http://HOSTPORT"
print(json.dumps({
  "ping": call("GET", base + "/_ping"),
  "list": call("GET", base + "/v1.41/containers/json"),
  "create": call("POST", base + "/v1.41/containers/create", b"{}"),
  "exec": call("POST", base + "/v1.41/containers/TARGET/exec", b"{}"),
  "restart": call("POST", base + "/v1.41/containers/TARGET/restart?t=1"),
  "images": call("GET", base + "/v1.41/images/json"),
}))
"""
READ, ACT = "socket-proxy-read:2375", "socket-proxy-act:2376"


def probe(stack: Compose, service: str, hostport: str, target: str) -> dict[str, object]:
    code = PROXY.replace("HOSTPORT", hostport).replace("TARGET", target)
    result: dict[str, object] = json.loads(stack.py(service, code))
    return result


def test_each_socket_proxy_allows_only_what_its_agents_need(stack):
    target = stack("ps", "-q", "demo-cpu").strip()
    responder = probe(stack, "responder", ACT, target)
    assert responder["ping"] == 200
    assert responder["list"] == 200
    assert responder["create"] == 403, "the Responder cannot create containers"
    assert responder["exec"] == 403, "the Responder cannot exec (no runbook asks for it)"
    assert responder["images"] == 403
    assert responder["restart"] == 204, "but it can restart"
    monitor = probe(stack, "monitor", READ, target)
    assert (monitor["ping"], monitor["list"]) == (200, 200)
    assert monitor["restart"] == 403, "the Monitor is read-only"
    assert monitor["create"] == 403


REACH = """
import socket
host, port = "HOSTPORT".split(":")
try:
    socket.create_connection((host, int(port)), timeout=3).close()
    print("reachable")
except OSError:
    print("unreachable")
"""


def reaches(stack: Compose, service: str, hostport: str) -> bool:
    return stack.py(service, REACH.replace("HOSTPORT", hostport)).strip() == "reachable"


def test_only_the_agents_that_need_a_socket_proxy_can_reach_it(stack):
    assert reaches(stack, "monitor", READ) and reaches(stack, "responder", ACT)
    # Not on proxy-act: the Monitor cannot act even through the acting proxy.
    assert not reaches(stack, "monitor", ACT)
    assert not reaches(stack, "responder", READ)
    # On neither proxy network: these see no Docker at all.
    for service in ("alert", "dashboard", "metrics"):
        for hostport in (READ, ACT):
            assert not reaches(stack, service, hostport), (service, hostport)


INSPECT = """
import json, urllib.request
body = json.load(urllib.request.urlopen("http://HOSTPORT/v1.41/containers/TARGET/json", timeout=10))
print(json.dumps(body["Config"]["Env"]))
"""


def test_inspect_through_the_read_proxy_shows_no_environment_values(stack):
    """The Responder's environment holds the Redis password; the Monitor inspecting it (as it
    inspects every container) sees the names only."""
    target = stack("ps", "-q", "responder").strip()
    env = json.loads(
        stack.py("monitor", INSPECT.replace("HOSTPORT", READ).replace("TARGET", target))
    )
    assert env and all(entry.endswith("=***") for entry in env), env
    assert any(entry.startswith("REDIS_URL=") for entry in env)

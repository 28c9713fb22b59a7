"""HemoStat's Docker socket proxy, against the real Docker engine.

Every refusal is proven twice: the answer (status and the rule named), and Docker's own state
queried right after it (the calls refused here are synchronous in Docker: had one been
forwarded, its effect would be visible before its answer was). Allowed calls go through the
agents' own code (shared/docker_api.DockerGateway, the Responder) with the SDK pointed at the
proxy."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agents.monitor.event_stream import as_since
from agents.socket_proxy import Mode, ProxyConfig, build_policy, check
from agents.socket_proxy.bodies import CLONE_OF, MASK, mask_env
from agents.socket_proxy.scrub import split_frames
from agents.socket_proxy.wire import Framing, ResponseHead, parse_request_head, read_body
from shared.bus import Bus
from shared.docker_api import DockerGateway
from shared.errors import ConfigError, ContainerNotFound, DockerError, RequestRefused
from shared.events import RemediationStatus
from shared.redis_server import free_port
from shared.runbooks import load_runbooks
from tests.support.bus import wait_until
from tests.support.responder import OPT_IN, outcome, running_responder
from tests.support.responder import request as remediation
from tests.support.services import TEST_LABEL
from tests.support.socket_proxy import ProxyInThread, exchange, request

pytestmark = pytest.mark.docker

SECRET = "s3cr3t-value-0xC0FFEE"


@pytest.fixture
def proxies(docker: Any) -> Iterator[Callable[..., ProxyInThread]]:
    """Start proxies on free ports: `proxies("act", allow_exec=True)`."""
    running: list[ProxyInThread] = []

    def start(mode: str = "read", **options: Any) -> ProxyInThread:
        options.setdefault("grace_s", 0.5)  # open streams are cut at teardown: no need to wait
        config = ProxyConfig(listen="127.0.0.1:0", mode=Mode(mode), **options)
        proxy = ProxyInThread(config).start()
        running.append(proxy)
        return proxy

    yield start
    for proxy in running:
        proxy.stop()


@pytest.fixture
def gateways() -> Iterator[Callable[[ProxyInThread], DockerGateway]]:
    made: list[DockerGateway] = []

    def make(proxy: ProxyInThread) -> DockerGateway:
        gateway = DockerGateway(proxy.client())
        made.append(gateway)
        return gateway

    yield make
    for gateway in made:
        gateway.close()


def sleeper(docker: Any, image: str, labels: dict[str, str], **kw: Any) -> Any:
    return docker.containers.run(image, ["sleep", "600"], labels=labels, detach=True, **kw)


def state(docker: Any, container_id: str) -> dict[str, Any]:
    return docker.api.inspect_container(container_id)["State"]


# ---------------------------------------------------------------- what the agents do, allowed


async def test_read_mode_serves_every_call_the_monitor_and_analyzer_make(
    proxies, gateways, docker, test_image, run_label
):
    proxy = proxies("read")
    gateway = gateways(proxy)
    label = f"{TEST_LABEL}={run_label[TEST_LABEL]}"
    t0 = time.time_ns()
    c = docker.containers.run(
        test_image,
        ["sh", "-c", "echo one; echo two; exec sleep 600"],
        labels=run_label,
        environment={"API_TOKEN": SECRET},
        detach=True,
    )
    assert await gateway.ping()
    assert (await gateway.info())["ID"]
    assert [x["Id"] for x in await gateway.list_raw(all=True, label=label)] == [c.id]
    info = await gateway.inspect(c.id)
    assert info.running and info.id == c.id
    assert info.secret_values == (), "the Monitor never learns the values"

    async def tail_is_complete() -> bool:
        return await gateway.logs_tail(c.id, 5) == ["one", "two"]

    await wait_until(tail_is_complete, what="a follow-less log tail through the proxy")
    assert "memory_stats" in await gateway.stats_once(c.id)

    history = await gateway.events_between(as_since(t0), as_since(time.time_ns()), label)
    assert ("start", c.id) in {(e["status"], e["id"]) for e in history}

    # The live stream: subscribed first, then an event happens, and it arrives while the
    # stream is still open (relayed as it comes, not buffered until the answer ends).
    stream = gateway.events(label=label)
    await asyncio.to_thread(stream.open)
    try:
        c.stop(timeout=0)
        events = iter(stream)
        seen: set[str] = set()
        while "die" not in seen:
            event = await asyncio.to_thread(next, events)
            if event.get("id") == c.id:
                seen.add(event["status"])
    finally:
        stream.close()
    assert proxy.proxy.refused == {}, "nothing the Monitor or Analyzer does is refused"


def test_a_stats_stream_is_relayed_sample_by_sample(proxies, docker, test_image, run_label):
    proxy = proxies("read")
    c = sleeper(docker, test_image, run_label)
    samples = proxy.client().api.stats(c.id, stream=True, decode=True)
    try:
        first, second = next(samples), next(samples)  # the answer never ends: a live stream
    finally:
        samples.close()
    assert first["id"] == second["id"] == c.id


async def test_act_mode_serves_every_call_the_responder_makes(
    proxies, gateways, docker, test_image, run_label
):
    gateway = gateways(proxies("act"))
    c = sleeper(docker, test_image, run_label)
    before = state(docker, c.id)["StartedAt"]
    await gateway.restart(c.id, 0)
    assert state(docker, c.id)["StartedAt"] != before
    await gateway.stop(c.id, 0)
    assert state(docker, c.id)["Running"] is False
    await gateway.start(c.id)
    assert state(docker, c.id)["Running"] is True
    await gateway.stop(c.id, 0)
    assert [m["Id"] for m in await gateway.list_by_image(test_image)].count(c.id) == 1
    await gateway.remove(c.id)
    with pytest.raises(ContainerNotFound):
        await gateway.inspect(c.id)


async def test_volume_removal_needs_its_own_flag(proxies, gateways, docker, test_image, run_label):
    c = docker.containers.create(test_image, ["true"], labels=run_label, volumes=["/data"])
    volume = next(m["Name"] for m in docker.api.inspect_container(c.id)["Mounts"])
    with pytest.raises(DockerError, match=r"containers\.remove.*--allow-volume-removal"):
        await gateways(proxies("act")).remove(c.id, volumes=True)
    assert docker.api.inspect_container(c.id)["Id"] == c.id
    assert docker.volumes.get(volume).name == volume

    await gateways(proxies("act", allow_volume_removal=True)).remove(c.id, volumes=True)
    assert not docker.api.containers(all=True, filters={"id": c.id})
    assert not (docker.api.volumes(filters={"name": volume}) or {}).get("Volumes")


async def test_exec_passes_only_with_its_flag(proxies, gateways, docker, test_image, run_label):
    c = sleeper(docker, test_image, run_label)
    argv = ["sh", "-c", "echo out; echo err >&2; exit 3"]
    with pytest.raises(DockerError, match="policy"):
        await gateways(proxies("act")).exec(c.id, argv, None, 10)
    assert docker.api.inspect_container(c.id)["ExecIDs"] is None

    gateway = gateways(proxies("act", allow_exec=True))
    for _ in range(5):  # the answer is a hijacked raw stream: relayed until Docker closes it
        code, output = await gateway.exec(c.id, argv, None, 10)
        assert code == 3
        assert sorted(output.split()) == [b"err", b"out"]


async def test_a_clone_through_the_proxy_gets_the_values_it_was_never_shown(
    proxies, gateways, docker, test_image, run_label
):
    src = sleeper(docker, test_image, run_label, environment={"API_TOKEN": SECRET})
    gateway = gateways(proxies("act", allow_scale=True))
    template = await gateway.inspect_raw(src.id)
    assert "API_TOKEN=***" in template["Config"]["Env"]

    name = f"hs-clone-{uuid.uuid4().hex[:8]}"
    clone_id = await gateway.clone(template, name, run_label | {"role": "clone"})
    clone = docker.api.inspect_container(clone_id)
    assert clone["State"]["Running"] is True
    assert clone["Config"]["Env"] == docker.api.inspect_container(src.id)["Config"]["Env"]
    assert f"API_TOKEN={SECRET}" in clone["Config"]["Env"]
    assert clone["Config"]["Labels"][CLONE_OF] == src.id


@pytest.mark.redis
async def test_the_responder_restarts_and_scales_through_the_proxy(
    proxies, gateways, redis, redis_url, docker, test_image, run_label, runbooks
):
    folder, rbs = runbooks
    project = f"hsproxy{uuid.uuid4().hex[:8]}"
    labels = (
        run_label
        | OPT_IN
        | {
            "com.docker.compose.project": project,
            "com.docker.compose.service": "web",
            "com.docker.compose.container-number": "1",
        }
    )
    first = sleeper(
        docker, test_image, labels, name=f"{project}-web-1", environment={"API_TOKEN": SECRET}
    )
    before = state(docker, first.id)["StartedAt"]
    gateway = gateways(proxies("act", allow_scale=True))
    async with running_responder(redis, redis_url, folder, gateway=gateway):
        restart = remediation(rbs, first, "restart")
        await Bus(redis).publish(restart)
        assert (await outcome(redis, restart.id)).payload.status is RemediationStatus.SUCCEEDED
        assert state(docker, first.id)["StartedAt"] != before

        up = remediation(rbs, first, "scale-up")
        await Bus(redis).publish(up)
        assert (await outcome(redis, up.id)).payload.status is RemediationStatus.SUCCEEDED
    members = docker.containers.list(filters={"label": f"com.docker.compose.project={project}"})
    clone = next(m for m in members if m.id != first.id)
    assert f"API_TOKEN={SECRET}" in clone.attrs["Config"]["Env"]


# ---------------------------------------------------------------- masking


def test_inspect_masks_environment_values_but_keeps_names(proxies, docker, test_image, run_label):
    c = sleeper(docker, test_image, run_label, environment={"API_TOKEN": SECRET, "EMPTY": ""})
    direct = docker.api.inspect_container(c.id)["Config"]["Env"]
    assert f"API_TOKEN={SECRET}" in direct

    proxy = proxies("read")
    masked = proxy.client().api.inspect_container(c.id)["Config"]["Env"]
    assert masked == [entry.split("=", 1)[0] + "=" + MASK for entry in direct]
    raw = exchange(proxy.port, request("GET", f"/v1.41/containers/{c.id}/json"))
    assert raw.status == 200
    assert SECRET.encode() not in raw.body, "the value appears nowhere in the answer"
    assert "transfer-encoding" not in raw.head.lower(), "re-framed with a Content-Length"
    assert f"content-length: {len(raw.body)}" in raw.head.lower()
    assert json.loads(raw.body)["Id"] == c.id

    missing = exchange(proxy.port, request("GET", "/containers/hs-no-such-container/json"))
    assert missing.status == 404
    assert b"No such container" in missing.body, "a non-2xx answer passes as Docker wrote it"


def test_masking_works_on_both_framings_docker_may_use():
    doc = {"Config": {"Env": [f"API_TOKEN={SECRET}", "PATH=/bin"]}}
    body = json.dumps(doc).encode()

    def reader_with(data: bytes) -> asyncio.StreamReader:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return reader

    async def both() -> tuple[bytes, bytes]:
        length = ResponseHead(200, "OK", (), Framing.LENGTH, len(body))
        chunked = ResponseHead(200, "OK", (), Framing.CHUNKED)
        half = len(body) // 2
        chunks = (
            f"{half:x};ext=1\r\n".encode() + body[:half] + b"\r\n"
            + f"{len(body) - half:X}\r\n".encode() + body[half:] + b"\r\n"
            + b"0\r\nTrailer: x\r\n\r\n"
        )  # fmt: skip
        return (
            await read_body(reader_with(body), length, 1 << 20),
            await read_body(reader_with(chunks), chunked, 1 << 20),
        )

    by_length, by_chunks = asyncio.run(both())
    assert by_length == by_chunks == body
    assert mask_env(json.loads(by_chunks)["Config"]["Env"]) == ["API_TOKEN=***", "PATH=***"]


# ---------------------------------------------------------------- scrubbing output


def talker(
    docker: Any, image: str, labels: dict[str, str], script: str, **kw: Any
) -> tuple[Any, str]:
    """A container whose environment holds a fresh secret, and that runs `script` (which may
    print it) before it sleeps."""
    secret = f"hs-{uuid.uuid4().hex}"
    c = docker.containers.run(
        image,
        ["sh", "-c", script + "; exec sleep 600"],
        labels=labels,
        environment={"API_TOKEN": secret},
        detach=True,
        **kw,
    )
    return c, secret


ECHO_BOTH = 'echo "out $API_TOKEN"; echo "err $API_TOKEN" >&2'


async def test_log_tails_through_the_proxy_never_carry_the_containers_env_values(
    proxies, gateways, docker, test_image, run_label
):
    c, secret = talker(docker, test_image, run_label, ECHO_BOTH)
    gateway = gateways(proxies("read"))

    async def both_lines() -> bool:
        return len(await gateway.logs_tail(c.id, 5)) == 2

    await wait_until(both_lines, what="two log lines")
    assert secret.encode() in docker.api.logs(c.id), "the control: Docker's own log has it"
    tail = await gateway.logs_tail(c.id, 5)
    assert sorted(tail) == ["err ***", "out ***"]
    assert not any(secret in line for line in tail)


def test_a_value_docker_split_across_two_log_frames_is_scrubbed(
    proxies, docker, test_image, run_label
):
    # Docker cuts a log line at 16 KiB into two messages (two frames): the value straddles it.
    script = "head -c 16380 /dev/zero | tr '\\0' x; echo $API_TOKEN"
    c, secret = talker(docker, test_image, run_label, script)
    value = secret.encode()

    def frames_direct() -> list[tuple[int, bytes]]:  # as Docker sent them (the SDK joins them)
        url = f"{docker.api.base_url}/containers/{c.id}/logs"
        return split_frames(docker.api.get(url, params={"stdout": 1, "stderr": 1}).content)

    wait_for(lambda: b"".join(p for _, p in frames_direct()).endswith(value + b"\n"))
    assert not any(value in p for _, p in frames_direct()), "the control: no frame holds it"

    proxy = proxies("read")
    query = "stdout=1&stderr=1&tail=all"
    raw = exchange(proxy.port, request("GET", f"/v1.41/containers/{c.id}/logs?{query}"))
    assert raw.status == 200
    assert f"content-length: {len(raw.body)}" in raw.head.lower(), "re-framed, length told"
    assert b"".join(p for _, p in split_frames(raw.body)) == b"x" * 16380 + b"***\n"
    assert value[:4] not in raw.body and value[4:] not in raw.body, "no half of it either"


async def test_a_tty_containers_log_is_scrubbed_as_raw_bytes(
    proxies, gateways, docker, test_image, run_label
):
    c, secret = talker(docker, test_image, run_label, ECHO_BOTH, tty=True)
    gateway = gateways(proxies("read"))

    async def both_lines() -> bool:
        return len(await gateway.logs_tail(c.id, 5)) == 2

    await wait_until(both_lines, what="two log lines")
    assert secret.encode() in docker.api.logs(c.id)
    assert sorted(await gateway.logs_tail(c.id, 5)) == ["err ***", "out ***"]


async def test_exec_output_through_the_proxy_never_carries_the_containers_env_values(
    proxies, gateways, docker, test_image, run_label
):
    c, secret = talker(docker, test_image, run_label, "true")
    gateway = gateways(proxies("act", allow_exec=True))
    code, output = await gateway.exec(c.id, ["sh", "-c", ECHO_BOTH + "; exit 2"], None, 10)
    assert code == 2
    assert sorted(output.decode().splitlines()) == ["err ***", "out ***"]
    assert secret.encode() not in output


@pytest.mark.redis
async def test_an_exec_actions_output_through_the_proxy_never_carries_an_env_value(
    proxies, gateways, redis, redis_url, docker, test_image, run_label, tmp_path
):
    folder = tmp_path / "runbooks"
    folder.mkdir()
    # The value alone, with no key and no secret-looking shape: only the proxy can catch it.
    (folder / "exec.yaml").write_text(
        """
id: test-actions
version: 1
match: {kinds: [crash]}
actions:
  - {id: exec-ok, type: exec, params: {argv: [sh, -c, 'echo "config $API_TOKEN"']},
     verify: {enabled: false}}
default_action: exec-ok
"""
    )
    c, secret = talker(docker, test_image, run_label | OPT_IN, "true")
    gateway = gateways(proxies("act", allow_exec=True))
    async with running_responder(redis, redis_url, folder, gateway=gateway):
        run = remediation(load_runbooks(folder), c, "exec-ok")
        await Bus(redis).publish(run)
        done = await outcome(redis, run.id)
    assert done.payload.status is RemediationStatus.SUCCEEDED, done.payload.reason
    assert done.payload.output.strip() == "config ***"
    for key in await redis.keys("*"):
        if await redis.type(key) == "stream":
            for _, fields in await redis.xrange(key):
                assert secret not in json.dumps(fields), f"the value is in {key}"


# ---------------------------------------------------------------- refusals: nothing happens


@dataclass(frozen=True)
class Targets:
    running: str  # a running container
    created: str  # created, never started
    image: str
    labels: dict[str, str]
    token: str  # names anything a refused call would have created
    template: dict[str, Any]  # the running container's inspection


def clone_body(t: Targets, **changes: Any) -> bytes:
    config = t.template["Config"]
    body = {
        "Image": config["Image"],
        "Cmd": config["Cmd"],
        "Entrypoint": config["Entrypoint"],
        "Env": mask_env(config["Env"]),
        "Labels": t.labels | {CLONE_OF: t.template["Id"]},
        "HostConfig": t.template["HostConfig"],
    }
    return json.dumps(body | changes).encode()


def _j(value: Any) -> bytes:
    return json.dumps(value).encode()


START = "/containers/{created}/start"
REMOVE_ARGS = "v=0&force=0&link=0"


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Targets], bytes]
    status: int
    rule: str
    mode: str = "act"
    flags: tuple[str, ...] = ()


def _req(method: str, target: str, body: bytes | None = None, **headers: str) -> Any:
    def build(t: Targets) -> bytes:
        def fill(text: str) -> str:
            for key in ("running", "created", "token", "image"):
                text = text.replace("{" + key + "}", getattr(t, key))
            return text

        data = fill(body.decode()).encode() if body is not None else None
        fields = {k.replace("_", "-"): v for k, v in headers.items()}
        return request(method, fill(target), data, fields)

    return build


CASES = [
    # mode read: nothing changes anything
    Case("read: restart", _req("POST", "/containers/{running}/restart"), 403, "policy", "read"),
    Case("read: stop", _req("POST", "/v1.41/containers/{running}/stop"), 403, "policy", "read"),
    Case(
        "read: remove", _req("DELETE", f"/containers/{{created}}?{REMOVE_ARGS}"), 403, "policy",
        "read",
    ),
    Case(
        "read: file from a container",
        _req("GET", "/containers/{running}/archive?path=/etc"), 403, "policy", "read",
    ),
    # mode act without flags
    Case(
        "create",
        _req("POST", "/containers/create?name=hs-{token}", _j({"Image": "busybox"})),
        403, "policy",
    ),
    Case("exec", _req("POST", "/containers/{running}/exec", _j({"Cmd": ["id"]})), 403, "policy"),
    Case("kill", _req("POST", "/containers/{running}/kill"), 403, "policy"),
    Case("image tag", _req("POST", "/images/{image}/tag?repo=hs-proxy-{token}&tag=x"), 403, "policy"),
    Case("volume", _req("POST", "/volumes/create", _j({"Name": "hs-{token}"})), 403, "policy"),
    Case("network", _req("POST", "/networks/create", _j({"Name": "hs-{token}"})), 403, "policy"),
    Case("delete v=true", _req("DELETE", "/containers/{created}?v=true"), 403, "containers.remove"),
    Case(
        "delete force=true", _req("DELETE", "/containers/{running}?force=true"), 403,
        "containers.remove",
    ),
    Case(
        "restart, t given twice",
        _req("POST", "/containers/{running}/restart?t=0&t=5"), 403, "containers.restart",
    ),
    Case(
        "delete with ';'", _req("DELETE", "/containers/{created}?v=0;force=1"), 403,
        "containers.remove",
    ),
    Case(
        "restart unknown parameter",
        _req("POST", "/containers/{running}/restart?t=0&signal=SIGKILL"), 403,
        "containers.restart",
    ),
    Case("start with a query", _req("POST", START + "?detachKeys=ctrl-x"), 403, "containers.start"),
    Case("start v1.23", _req("POST", "/v1.23/containers/{created}/start"), 403, "api-version"),
    Case("start v1.x", _req("POST", "/v1.x/containers/{created}/start"), 403, "api-version"),
    Case(
        "start v1.23 with a HostConfig binding /",
        _req("POST", "/v1.23/containers/{created}/start", _j({"Binds": ["/:/host"]})), 403,
        "api-version",
    ),
    Case(
        "start with a HostConfig body",
        _req("POST", START, _j({"Binds": ["/:/host"], "Privileged": True})), 403,
        "containers.start",
    ),
    Case(
        "start, huge Content-Length",
        _req("POST", START, None, Content_Length="99999999999"), 413, "body-limit",
    ),
    Case("start, Content-Length -1", _req("POST", START, None, Content_Length="-1"), 400, "http"),
    Case(
        "start, chunked body",
        lambda t: (
            f"POST /containers/{t.created}/start HTTP/1.1\r\nHost: p\r\n"
            "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
        ).encode(),
        400, "http",
    ),
    Case("bogus method", _req("BREW", START), 403, "policy"),
    Case(
        "encoded path",
        _req("POST", "/containers/..%2Fcontainers%2F{created}/start"), 403, "policy",
    ),
    Case(
        "absolute-form target",
        lambda t: f"POST http://docker/containers/{t.created}/start HTTP/1.1\r\n\r\n".encode(),
        400, "http",
    ),
    Case("follow logs", _req("GET", "/containers/{running}/logs?follow=1"), 403, "containers.logs"),
    # --allow-exec does not widen exec
    Case(
        "privileged exec",
        _req("POST", "/containers/{running}/exec", _j({"Cmd": ["id"], "Privileged": True})),
        403, "exec.create", flags=("allow_exec",),
    ),
    Case(
        "exec privileged, lower-case key",
        _req("POST", "/containers/{running}/exec", _j({"Cmd": ["id"], "privileged": True})),
        403, "exec.create", flags=("allow_exec",),
    ),
    Case(
        "exec with a key twice",
        _req(
            "POST", "/containers/{running}/exec", b'{"Cmd": ["id"], "cmd": ["reboot"]}'
        ),
        400, "exec.create", flags=("allow_exec",),
    ),
    Case(
        "exec with stdin, key spelt with a long s (Go folds it)",
        _req("POST", "/containers/{running}/exec", _j({"Cmd": ["sh"], "Attach\u017ftdin": True})),
        403, "exec.create", flags=("allow_exec",),
    ),
    Case(
        "exec with stdin",
        _req("POST", "/containers/{running}/exec", _j({"Cmd": ["sh"], "AttachStdin": True})),
        403, "exec.create", flags=("allow_exec",),
    ),
    # --allow-scale creates clones only
    Case(
        "create, not a clone",
        _req(
            "POST", "/containers/create?name=hs-{token}",
            _j({"Image": "hemostat-test/busybox:latest", "Cmd": ["id"]}),
        ),
        403, "containers.create", flags=("allow_scale",),
    ),
    Case(
        "clone with a bind of /",
        lambda t: request(
            "POST", f"/containers/create?name=hs-{t.token}",
            clone_body(t, HostConfig=t.template["HostConfig"] | {"Binds": ["/:/host"]}),
        ),
        403, "containers.create", flags=("allow_scale",),
    ),
    Case(
        "clone, privileged",
        lambda t: request(
            "POST", f"/containers/create?name=hs-{t.token}",
            clone_body(t, HostConfig=t.template["HostConfig"] | {"Privileged": True}),
        ),
        403, "containers.create", flags=("allow_scale",),
    ),
    Case(
        "clone with another command",
        lambda t: request(
            "POST", f"/containers/create?name=hs-{t.token}", clone_body(t, Cmd=["env"])
        ),
        403, "containers.create", flags=("allow_scale",),
    ),
    Case(
        "clone with another value",
        lambda t: request(
            "POST", f"/containers/create?name=hs-{t.token}",
            clone_body(t, Env=[e.split("=")[0] + "=/evil" for e in t.template["Config"]["Env"]]),
        ),
        403, "containers.create", flags=("allow_scale",),
    ),
]  # fmt: skip


def snapshot(docker: Any, t: Targets) -> dict[str, Any]:
    """Everything a refused call could have changed, read from Docker."""
    label = f"{TEST_LABEL}={t.labels[TEST_LABEL]}"
    containers = {}
    for c in docker.api.containers(all=True, filters={"label": label}):
        inspected = docker.api.inspect_container(c["Id"])
        s = inspected["State"]
        containers[c["Id"]] = (s["Status"], s["StartedAt"], inspected["ExecIDs"])
    return {
        "containers": containers,
        "named": docker.api.containers(all=True, filters={"name": t.token}),
        "volumes": (docker.api.volumes(filters={"name": t.token}) or {}).get("Volumes"),
        "networks": docker.api.networks(names=[t.token]),
        "images": docker.api.images(name=f"hs-proxy-{t.token}"),
    }


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refused_calls_change_nothing_in_docker(case, proxies, docker, test_image, run_label):
    running = sleeper(docker, test_image, run_label, environment={"API_TOKEN": SECRET})
    created = docker.containers.create(test_image, ["sleep", "600"], labels=run_label)
    t = Targets(
        running.id,
        created.id,
        test_image,
        run_label,
        uuid.uuid4().hex[:12],
        docker.api.inspect_container(running.id),
    )
    proxy = proxies(case.mode, **dict.fromkeys(case.flags, True))
    before = snapshot(docker, t)
    try:
        answer = exchange(proxy.port, case.build(t))
        after = snapshot(docker, t)
    finally:
        _remove_named(docker, t.token)
    assert (answer.status, case.rule) == (case.status, answer.body.decode().split(": ")[1])
    assert after == before, "Docker's state did not change"
    assert after["containers"][running.id][0] == "running"
    assert after["containers"][created.id][0] == "created"
    assert proxy.proxy.forwarded == 0, "nothing was sent on to Docker"
    assert proxy.proxy.refused == {case.rule: 1}, "one refusal, counted (and logged) once"


def _remove_named(docker: Any, token: str) -> None:
    """Only matters if a refusal failed: nothing a test made outlives it."""
    for c in docker.api.containers(all=True, filters={"name": token}):
        docker.api.remove_container(c["Id"], force=True)
    for v in (docker.api.volumes(filters={"name": token}) or {}).get("Volumes") or []:
        docker.api.remove_volume(v["Name"])
    for n in docker.api.networks(names=[token]):
        docker.api.remove_network(n["Id"])
    for i in docker.api.images(name=f"hs-proxy-{token}"):
        for tag in i.get("RepoTags") or []:
            docker.api.remove_image(tag)


def test_the_unmodified_clone_is_accepted(proxies, docker, test_image, run_label):
    """The control of the clone refusals above: the same body, untampered, creates it."""
    src = sleeper(docker, test_image, run_label, environment={"API_TOKEN": SECRET})
    template = docker.api.inspect_container(src.id)
    t = Targets(src.id, "", test_image, run_label, uuid.uuid4().hex[:12], template)
    proxy = proxies("act", allow_scale=True)
    create = request("POST", f"/containers/create?name=hs-{t.token}", clone_body(t))
    answer = exchange(proxy.port, create)
    assert answer.status == 201, answer.body
    made = docker.api.inspect_container(json.loads(answer.body)["Id"])
    assert made["Config"]["Env"] == template["Config"]["Env"]


# ---------------------------------------------------------------- request hygiene


def test_one_request_per_connection_so_nothing_rides_along(proxies, docker, test_image, run_label):
    created = docker.containers.create(test_image, ["true"], labels=run_label)
    proxy = proxies("act")
    ping = request("GET", "/_ping")
    remove = request("DELETE", f"/containers/{created.id}?{REMOVE_ARGS}")
    answer = exchange(proxy.port, ping + remove)
    assert answer.status == 200 and answer.body == b"OK"
    assert "connection: close" in answer.head.lower()
    assert docker.api.inspect_container(created.id)["Id"] == created.id
    assert proxy.proxy.forwarded == 1


def test_head_size_and_slowness_are_bounded(proxies):
    proxy = proxies("read", request_timeout_s=0.5)
    big = request("GET", "/_ping", None, {"X-Pad": "x" * 20_000})
    assert exchange(proxy.port, big).status == 431
    # A head that never ends, and a body shorter than its Content-Length: both time out.
    assert exchange(proxy.port, b"GET /_ping HTTP/1.1\r\nHost: p\r\n").status == 408
    short = b"GET /_ping HTTP/1.1\r\nContent-Length: 10\r\n\r\n{}"
    assert exchange(proxy.port, short).status == 408
    assert dict(proxy.proxy.refused) == {"head-limit": 1, "timeout": 2}


def test_connections_are_bounded(proxies):
    proxy = proxies("read", max_connections=1)
    with socket.create_connection(("127.0.0.1", proxy.port)) as held:
        held.sendall(request("GET", "/events"))
        assert held.recv(12).startswith(b"HTTP/1.1 200"), "a stream holds the one connection"
        assert exchange(proxy.port, request("GET", "/_ping")).status == 503
    wait_for(lambda: exchange(proxy.port, request("GET", "/_ping")).status == 200)


def test_docker_unreachable_is_a_502(proxies, tmp_path):
    proxy = proxies("read", socket_path=str(tmp_path / "no-docker.sock"))
    answer = exchange(proxy.port, request("GET", "/_ping"))
    assert answer.status == 502
    assert b"Docker failed" in answer.body
    ok, detail = check(f"127.0.0.1:{proxy.port}")
    assert not ok and "502" in detail, "the health check covers Docker behind the proxy"
    assert check(f"127.0.0.1:{proxies('read').port}")[0]


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {condition}")
        time.sleep(0.05)


# ---------------------------------------------------------------- swarm services (private engine)


@pytest.fixture
def swarm() -> Iterator[Any]:
    """A private dockerd in swarm mode: never the shared engine, which must stay as it is."""
    from tests.support.engines import PrivateEngine

    engine = PrivateEngine("swarm")
    engine.start()
    gc.collect()  # the SDK's sockets leaked while the daemon was starting (see the marks)
    client = engine.client()
    try:
        image = engine.ensure_test_image()
        client.swarm.init(advertise_addr="127.0.0.1", listen_addr=f"127.0.0.1:{free_port()}")
        yield engine, client, image
    finally:
        with contextlib.suppress(Exception):
            client.swarm.leave(force=True)
        client.close()
        engine.stop()


# While the daemon starts, docker-py's UnixHTTPConnection.connect() raises before it closes the
# socket it opened (an SDK leak, as in test_monitor_agent): these filters hide only that.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_scaling_a_swarm_service_changes_only_its_replicas(swarm, proxies, gateways):
    engine, client, image = swarm
    service = client.services.create(
        image, ["sleep", "600"], name="hs-web", env=[f"API_TOKEN={SECRET}"]
    )
    spec = client.api.inspect_service(service.id)["Spec"]
    proxy = proxies("act", allow_scale=True, socket_path=str(engine.socket))
    seen = proxy.client().api.inspect_service(service.id)
    assert seen["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"] == ["API_TOKEN=***"]

    await gateways(proxy).scale_service("hs-web", 2)
    after = client.api.inspect_service(service.id)
    assert after["Spec"] == spec | {"Mode": {"Replicated": {"Replicas": 2}}}, (
        "the masked Env the client saw did not round-trip"
    )
    # A body that asks for more than a replica count gets only the replica count.
    version = after["Version"]["Index"]
    evil = {
        "Mode": {"Replicated": {"Replicas": 3}},
        "TaskTemplate": {"ContainerSpec": {"Image": image, "Command": ["cat", "/etc/shadow"]}},
    }
    answer = exchange(
        proxy.port, request("POST", f"/services/{service.id}/update?version={version}", _j(evil))
    )
    assert answer.status == 200, answer.body
    assert client.api.inspect_service(service.id)["Spec"] == spec | {
        "Mode": {"Replicated": {"Replicas": 3}}
    }


# ---------------------------------------------------------------- the command


def _hemostat(*args: str, **kw: Any) -> subprocess.Popen[str]:
    env = os.environ | {"HEMOSTAT_LOG_FORMAT": "json"}
    return subprocess.Popen(
        [sys.executable, "-m", "agents.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=Path(__file__).parent.parent,
        **kw,
    )


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    proc = _hemostat(*args)
    out, err = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_the_command_serves_checks_and_stops_cleanly_on_sigterm(docker):
    address = f"127.0.0.1:{free_port()}"
    proc = _hemostat("socket-proxy", "--listen", address, "--mode", "read")
    try:
        wait_for(lambda: _run("socket-proxy", "--check", address).returncode == 0, timeout=20)
        host, port = address.split(":")
        with socket.create_connection((host, int(port)), timeout=20) as stream:
            stream.sendall(request("GET", "/events"))
            assert stream.recv(12).startswith(b"HTTP/1.1 200")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
            with contextlib.suppress(ConnectionResetError):
                while stream.recv(65536):
                    pass  # the open stream ends with the proxy
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=10)
    assert "socket_proxy.stopped" in err
    assert _run("socket-proxy", "--check", address).returncode == 1, "nothing listens now"


def test_the_command_refuses_flags_that_do_not_fit():
    wrong = _run("socket-proxy", "--mode", "read", "--allow-exec", "--listen", "127.0.0.1:0")
    assert wrong.returncode == 2 and "only make sense with --mode act" in wrong.stderr
    missing = _run("socket-proxy", "--listen", "127.0.0.1:0")
    assert missing.returncode == 2 and "--mode" in missing.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = _run("socket-proxy", "--listen", f"127.0.0.1:{port}", "--mode", "read")
    assert busy.returncode == 2 and "cannot listen" in busy.stderr


# ---------------------------------------------------------------- the policy and the parser


@pytest.mark.parametrize(
    ("method", "target", "allowed"),
    [
        ("GET", "/_ping", True),
        ("HEAD", "/v1.41/_ping", True),
        ("GET", "/v1.24/containers/json?all=1&filters=%7B%7D", True),
        ("GET", "/v01.041/info", True),  # what Go reads as 1.41
        ("GET", "/v1.23/info", False),
        ("GET", "/v1/info", False),
        ("GET", "/v1.41.0/info", False),
        ("GET", "/containers/abc/json", True),
        ("GET", "/containers/../json", False),
        ("GET", "/containers/abc/json/", False),
        ("GET", "//containers/abc/json", False),
        ("GET", "/containers/abc/logs?follow=0&tail=all", True),
        ("GET", "/containers/abc/logs?follow=yes", False),
        ("GET", "/containers/abc/logs?fol%6Cow=1", False),  # decoded as Go decodes it
        ("GET", "/containers/json?filters=%zz", False),  # Go would fail to parse it
        ("GET", "/containers/abc/stats?stream=False&one-shot=True", True),
        ("POST", "/containers/abc/restart?t=5", False),  # read mode
        ("GET", "/images/json", False),
    ],
)
def test_read_policy(method, target, allowed):
    path, _, query = target.partition("?")
    policy = build_policy("read")
    if allowed:
        assert policy.decide(method, path, query).target == target
    else:
        with pytest.raises(RequestRefused) as refused:
            policy.decide(method, path, query)
        assert refused.value.status == 403


def test_act_flags_need_act_mode_and_add_only_their_rules():
    with pytest.raises(ConfigError):
        build_policy("read", allow_scale=True)
    with pytest.raises(ConfigError):
        build_policy("write")
    names = lambda **kw: {r.name for r in build_policy("act", **kw).rules}  # noqa: E731
    base = names()
    assert names(allow_exec=True) - base == {"exec.create", "exec.start", "exec.inspect"}
    assert names(allow_scale=True) - base == {
        "containers.create",
        "services.inspect",
        "services.update",
    }
    assert names(allow_volume_removal=True) == base
    assert build_policy("act").decide("DELETE", "/containers/x", "v=False&force=0").rule.name
    allowing = build_policy("act", allow_volume_removal=True)
    assert allowing.decide("DELETE", "/containers/x", "v=True&force=False&link=False")
    with pytest.raises(RequestRefused, match="never force"):
        allowing.decide("DELETE", "/containers/x", "force=1")


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /_ping HTTP/1.1\nHost: x\r\n\r\n", 400),  # bare LF
        (b"GET /_ping HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
        (b"GET /_ping HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", 400),
        (b"GET /_ping HTTP/1.1\r\nContent-Length: +1\r\n\r\n", 400),
        (b"GET /_ping HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n", 400),
        (b"GET /_ping HTTP/1.0\r\n\r\n", 400),
        (b"GET /_ping#x HTTP/1.1\r\n\r\n", 400),
        (b"GET * HTTP/1.1\r\n\r\n", 400),
        (b"POST /x HTTP/1.1\r\nContent-Length: 65537\r\n\r\n", 413),
    ],
)
def test_request_heads_are_parsed_strictly(raw, status):
    with pytest.raises(RequestRefused) as refused:
        parse_request_head(raw, 64 * 1024)
    assert refused.value.status == status

"""An asyncio face on the (blocking) Docker SDK.

Every call runs in a worker thread under a concurrency bound, and every Docker SDK or transport
error is translated into HemoStat's tree: `DockerUnavailable` when the daemon cannot be reached,
`ContainerNotFound` for a missing container, `DockerError` for anything else the daemon refused.
The SDK client is injected; `connect_docker` builds the real one at the entry point."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

import docker
import requests
from docker.errors import APIError, DockerException, NotFound

from shared.containers import LABEL_CLONE_OF, ContainerInfo, parse_inspect
from shared.errors import ContainerNotFound, DockerError, DockerUnavailable
from shared.settings import Settings

__all__ = ["DockerGateway", "EventStream", "connect_docker"]

T = TypeVar("T")


def connect_docker(settings: Settings, timeout: int = 30) -> Any:
    """The real SDK client (no connection is made until the first call)."""
    env = dict(os.environ)
    if settings.docker_host:
        env["DOCKER_HOST"] = settings.docker_host
    return docker.from_env(environment=env, timeout=timeout)


def _translate(exc: BaseException, what: str) -> DockerError:
    if isinstance(exc, NotFound):
        return ContainerNotFound(f"{what}: {exc.explanation or exc}")
    if isinstance(exc, APIError):
        return DockerError(f"{what}: {exc.explanation or exc}")
    if isinstance(exc, requests.exceptions.ConnectionError | ConnectionError | FileNotFoundError):
        return DockerUnavailable(f"{what}: Docker daemon unreachable ({exc})")
    if isinstance(exc, requests.exceptions.ReadTimeout | TimeoutError):
        return DockerUnavailable(f"{what}: Docker daemon timed out ({exc})")
    return DockerError(f"{what}: {exc}")


class DockerGateway:
    def __init__(self, client: Any, *, concurrency: int = 8) -> None:
        self.client = client
        self.api = client.api
        self._limit = asyncio.Semaphore(concurrency)
        # Our own threads: the loop's default executor has only cpu+4 workers, and Docker calls
        # (stats waits up to a second per call) are waits, not work.
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="docker")
        adapter = getattr(self.api, "_custom_adapter", None)
        self._socket_path: str | None = getattr(adapter, "socket_path", None)

    async def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._socket_path and not os.path.exists(self._socket_path):  # noqa: ASYNC240 - a stat
            # Checked first: the SDK leaks the socket it opened when connect() fails.
            raise DockerUnavailable(f"{what}: Docker socket {self._socket_path} does not exist")
        async with self._limit:
            try:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._executor, partial(fn, *args, **kwargs))
            except (DockerException, requests.exceptions.RequestException, OSError) as exc:
                raise _translate(exc, what) from exc

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    async def ping(self) -> bool:
        try:
            return bool(await self.call("ping", self.api.ping))
        except DockerError:
            return False

    async def info(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.call("info", self.api.info)
        return result

    async def list_raw(self, all: bool = True, label: str | None = None) -> list[dict[str, Any]]:
        """The list endpoint (one call, no per-container inspect); `label` narrows it."""
        filters = {"label": [label]} if label else None
        result: list[dict[str, Any]] = await self.call(
            "list containers", self.api.containers, all=all, filters=filters
        )
        return result

    async def inspect_raw(self, container_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(
            f"inspect {container_id[:12]}", self.api.inspect_container, container_id
        )
        return result

    async def inspect(self, container_id: str) -> ContainerInfo:
        return parse_inspect(await self.inspect_raw(container_id))

    async def logs_tail(self, container_id: str, lines: int = 20) -> list[str]:
        raw: bytes = await self.call(
            f"logs {container_id[:12]}",
            self.api.logs,
            container_id,
            stdout=True,
            stderr=True,
            tail=lines,
            timestamps=False,
        )
        text = raw.decode("utf-8", errors="replace")
        return [line for line in text.splitlines() if line.strip()][-lines:]

    async def stats_once(self, container_id: str) -> dict[str, Any]:
        """One stats sample without the daemon's second pre-read (API >= 1.41 `one-shot`)."""
        result: dict[str, Any] = await self.call(
            f"stats {container_id[:12]}",
            self.api.stats,
            container_id,
            stream=False,
            one_shot=True,
        )
        return result

    # ---- changes (used by the Responder only; the Monitor never calls these)

    async def restart(self, container_id: str, timeout: int) -> None:
        await self.call(
            f"restart {container_id[:12]}", self.api.restart, container_id, timeout=timeout
        )

    async def stop(self, container_id: str, timeout: int) -> None:
        await self.call(f"stop {container_id[:12]}", self.api.stop, container_id, timeout=timeout)

    async def start(self, container_id: str) -> None:
        await self.call(f"start {container_id[:12]}", self.api.start, container_id)

    async def remove(self, container_id: str, volumes: bool = False) -> None:
        await self.call(
            f"remove {container_id[:12]}", self.api.remove_container, container_id, v=volumes
        )

    async def list_by_labels(
        self,
        labels: dict[str, str],
        all: bool = True,
    ) -> list[dict[str, Any]]:
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        result: list[dict[str, Any]] = await self.call(
            "list containers", self.api.containers, all=all, filters=filters
        )
        return result

    async def list_by_image(self, image: str, status: str = "exited") -> list[dict[str, Any]]:
        filters = {"ancestor": image, "status": status}
        result: list[dict[str, Any]] = await self.call(
            "list containers", self.api.containers, all=True, filters=filters
        )
        return result

    async def exec(
        self, container_id: str, argv: list[str], user: str | None, timeout_s: float
    ) -> tuple[int | None, bytes]:
        """Run an exact argv; returns (exit code, output). A timeout returns (None, output so
        far is not available) — the process may still run inside the container."""
        created: dict[str, Any] = await self.call(
            f"exec {container_id[:12]}",
            self.api.exec_create,
            container_id,
            argv,
            user=user or "",
            stdout=True,
            stderr=True,
        )
        exec_id = created["Id"]
        try:
            output: bytes = await asyncio.wait_for(
                self.call("exec start", self.api.exec_start, exec_id), timeout=timeout_s
            )
        except TimeoutError:
            return None, b""
        inspected: dict[str, Any] = await self.call("exec inspect", self.api.exec_inspect, exec_id)
        return inspected.get("ExitCode"), output or b""

    async def clone(self, template: dict[str, Any], name: str, labels: dict[str, str]) -> str:
        """Create and start a container from another's inspect data (compose-style scale up).
        The clone names its source in a label: behind the socket proxy the template's
        environment values are masked, and the proxy fills them in from that source."""
        config = template.get("Config") or {}
        host_config = dict(template.get("HostConfig") or {})
        networks = (template.get("NetworkSettings") or {}).get("Networks") or {}
        endpoints = {
            net: {"Aliases": [a for a in (conf.get("Aliases") or []) if a != template["Id"][:12]]}
            for net, conf in networks.items()
        }
        first_network = next(iter(endpoints), None)
        created: dict[str, Any] = await self.call(
            f"create {name}",
            self.api.create_container,
            image=config.get("Image"),
            command=config.get("Cmd"),
            entrypoint=config.get("Entrypoint"),
            environment=config.get("Env"),
            working_dir=config.get("WorkingDir") or None,
            user=config.get("User") or None,
            labels=labels | {LABEL_CLONE_OF: template["Id"]},
            name=name,
            healthcheck=config.get("Healthcheck"),
            host_config=host_config,
            networking_config={"EndpointsConfig": {first_network: endpoints[first_network]}}
            if first_network
            else None,
        )
        await self.start(created["Id"])
        return str(created["Id"])

    async def scale_service(self, service: str, replicas: int) -> None:
        """Set a swarm service's replica count."""

        def scale() -> None:
            self.client.services.get(service).scale(replicas)

        await self.call(f"scale service {service}", scale)

    async def events_between(
        self, since: str, until: str, label: str | None = None
    ) -> list[dict[str, Any]]:
        """The events the daemon still remembers in [since, until] (a bounded read)."""
        filters: dict[str, Any] = {"type": "container"} | ({"label": [label]} if label else {})

        def read() -> list[dict[str, Any]]:
            return list(self.api.events(since=since, until=until, filters=filters, decode=True))

        return await self.call("events history", read)

    def events(self, since: float | str | None = None, label: str | None = None) -> EventStream:
        return EventStream(self.api, since, label)


class EventStream:
    """The daemon's container event stream, iterated in a thread; `close()` from anywhere."""

    def __init__(self, api: Any, since: float | str | None, label: str | None = None) -> None:
        self._api = api
        self._since = since
        self._filters: dict[str, Any] = {"type": "container"} | (
            {"label": [label]} if label else {}
        )
        self._stream: Any = None
        self._lock = threading.Lock()
        self._closed = False

    def open(self) -> None:
        """Subscribe now (blocking): once this returns, the daemon sends every later event, so a
        caller can subscribe first and then look at the current state, losing nothing between."""
        try:
            stream = self._api.events(since=self._since, filters=self._filters, decode=True)
        except (DockerException, requests.exceptions.RequestException, OSError) as exc:
            raise _translate(exc, "events") from exc
        with self._lock:
            if self._closed:
                stream.close()
                return
            self._stream = stream

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._stream is None:
            self.open()
        with self._lock:
            if self._closed or self._stream is None:
                return iter(())
            return iter(self._stream)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._stream is not None:
                with contextlib.suppress(Exception):  # closing a dead socket may raise anything
                    self._stream.close()

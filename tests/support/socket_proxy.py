"""HemoStat's socket proxy for tests: served from a thread and event loop of its own (the Docker
SDK blocks its caller, and the proxy must keep serving meanwhile), plus a raw HTTP exchange for
the requests no SDK would send."""

from __future__ import annotations

import asyncio
import socket
import threading
from dataclasses import dataclass
from typing import Any

from agents.socket_proxy import ProxyConfig, SocketProxy


class ProxyInThread:
    def __init__(self, config: ProxyConfig) -> None:
        self.proxy = SocketProxy(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self._clients: list[Any] = []

    def start(self) -> ProxyInThread:
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop

            async def main() -> None:
                try:
                    await self.proxy.start()
                except BaseException as exc:
                    self._error = exc
                    return
                finally:
                    ready.set()
                await self.proxy.run()

            loop.run_until_complete(main())
            loop.close()

        self._thread = threading.Thread(target=serve, name="socket-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise TimeoutError("the socket proxy did not start within 10s")
        if self._error is not None:
            raise self._error
        return self

    @property
    def port(self) -> int:
        return self.proxy.port

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def client(self, timeout: int = 30) -> Any:
        import docker

        client = docker.DockerClient(base_url=self.url, timeout=timeout)
        self._clients.append(client)
        return client

    def stop(self) -> None:
        for client in self._clients:
            client.close()
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self.proxy.stop)
        self._thread.join(15)


@dataclass(frozen=True)
class Answer:
    status: int
    head: str
    body: bytes


def exchange(port: int, data: bytes, timeout: float = 15.0) -> Answer:
    """Send raw bytes, read until the proxy closes; a reset instead of an answer raises."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    text = head.decode("latin-1")
    return Answer(int(text.split(" ", 2)[1]), text, body)


def request(
    method: str,
    target: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: proxy"]
    headers = dict(headers or {})
    if body is not None:
        headers.setdefault("Content-Type", "application/json")
        headers.setdefault("Content-Length", str(len(body)))
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")

"""A small stdlib HTTP server in a thread of its own, for the two endpoints outsiders call (the
Alertmanager webhook, the Slack/Discord interactions endpoint): the thread's lifecycle, handing a
request's work to a coroutine on the agent's event loop with a deadline, and a JSON answer that
closes the connection after an error (an unread body must not become the next request).

What each endpoint reads, and in which order it refuses, stays with the endpoint."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

__all__ = ["ThreadedServer", "on_loop", "reply_json"]

T = TypeVar("T")


class ThreadedServer:
    """`ThreadingHTTPServer` serving `handler` from a daemon thread; port 0 picks a free port."""

    def __init__(
        self, host: str, port: int, handler: type[BaseHTTPRequestHandler], *, name: str
    ) -> None:
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=name,
            daemon=True,
        )

    @property
    def port(self) -> int:
        port: int = self._server.server_address[1]
        return port

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def on_loop(coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop, timeout_s: float) -> T:
    """Run `coro` on the agent's `loop` from the HTTP thread and wait for it; past `timeout_s`
    it is cancelled and `TimeoutError` raised (its own exceptions propagate)."""
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return future.result(timeout=timeout_s)
    except TimeoutError:
        future.cancel()
        raise


def reply_json(handler: BaseHTTPRequestHandler, status: int, body: Any | None) -> None:
    """Answer with `body` as JSON (None: an empty body); an error closes the connection."""
    data = b"" if body is None else json.dumps(body).encode()
    if status >= 400:
        handler.close_connection = True
    handler.send_response(status)
    if body is not None:
        handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    if status >= 400:
        handler.send_header("Connection", "close")
    handler.end_headers()
    handler.wfile.write(data)

"""The HTTP side of the interactions endpoint: a small stdlib server in a thread that reads one
request defensively and hands (path, headers, body) to a coroutine on the agent's event loop.

Reading defensively: unknown paths are answered before a byte of the body is read; the body is
capped whatever `Content-Length` or chunked encoding claim; every read has a timeout and the
whole body a deadline, so a client that trickles bytes cannot hold a thread. Nothing here trusts
the request — verifying its signature is the coroutine's first job (`interactions.py`).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from shared.errors import RequestRefused
from shared.http_thread import ThreadedServer, on_loop, reply_json
from shared.log import get_logger

__all__ = ["MAX_BODY", "Answer", "Handle", "InteractionsServer"]

log = get_logger(__name__)

# A click's payload is a few KiB (Slack echoes the message, at most ~50 KiB for ours).
MAX_BODY = 256 * 1024
_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,8}")


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any] | None = None  # None: an empty body (what Slack expects for a click)


Handle = Callable[[str, dict[str, str], bytes], Coroutine[Any, Any, Answer]]


class InteractionsServer:
    """Serves `paths` (POST) and `/healthz` from a thread; each body goes to `handle` on `loop`."""

    def __init__(
        self,
        host: str,
        port: int,
        handle: Handle,
        loop: asyncio.AbstractEventLoop,
        *,
        paths: frozenset[str],
        max_body: int = MAX_BODY,
        read_timeout_s: float = 5.0,
        body_deadline_s: float = 10.0,
        answer_timeout_s: float = 10.0,
    ) -> None:
        self._handle = handle
        self._loop = loop
        self.paths = paths
        self.max_body = max_body
        self.read_timeout_s = read_timeout_s
        self.body_deadline_s = body_deadline_s
        self.answer_timeout_s = answer_timeout_s
        self._server = ThreadedServer(host, port, self._handler_class(), name="alert-interactions")

    @property
    def port(self) -> int:
        return self._server.port

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop()

    def _answer(self, path: str, headers: dict[str, str], body: bytes) -> Answer:
        try:
            return on_loop(self._handle(path, headers, body), self._loop, self.answer_timeout_s)
        except TimeoutError:
            return Answer(503, {"error": "timed out; try again"})
        except Exception as exc:  # loop boundary of the HTTP thread
            log.exception("alert.interaction_failed", path=path)
            return Answer(500, {"error": f"internal error: {type(exc).__name__}"})

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = server.read_timeout_s  # each read of the request line and headers

            def log_message(self, format: str, *args: Any) -> None:
                pass  # our own structured log lines say what matters

            def _reply(self, answer: Answer) -> None:
                reply_json(self, answer.status, answer.body)

            def do_GET(self) -> None:
                if self.path == "/healthz":
                    self._reply(Answer(200, {"status": "ok"}))
                else:
                    self._reply(Answer(404, {"error": "not found"}))

            def do_POST(self) -> None:
                path = self.path.split("?", 1)[0]
                if path not in server.paths:
                    known = ", ".join(sorted(server.paths))
                    self._reply(Answer(404, {"error": f"unknown path {path}; POST {known}"}))
                    return
                deadline = time.monotonic() + server.body_deadline_s
                try:
                    body = self._body(deadline)
                except RequestRefused as exc:  # the body cannot be read as sent
                    self._reply(Answer(exc.status, {"error": exc.reason}))
                    return
                except TimeoutError:
                    self._reply(Answer(408, {"error": "the body did not arrive in time"}))
                    return
                finally:
                    self.connection.settimeout(server.read_timeout_s)
                headers: dict[str, str] = {}
                for name, value in self.headers.items():
                    headers.setdefault(name.lower(), value)  # the first of repeated headers
                self._reply(server._answer(path, headers, body))

            # ------------------------------------------------------------ the body

            def _body(self, deadline: float) -> bytes:
                encoding = self.headers.get("Transfer-Encoding")
                if encoding is not None:
                    if encoding.strip().lower() != "chunked" or "Content-Length" in self.headers:
                        raise RequestRefused(400, "http", "unsupported Transfer-Encoding")
                    return self._chunked(deadline)
                raw = self.headers.get("Content-Length")
                if raw is None:
                    raise RequestRefused(411, "http", "a Content-Length is required")
                if not raw.strip().isascii() or not raw.strip().isdigit():
                    raise RequestRefused(400, "http", "bad Content-Length")
                length = int(raw)
                if length > server.max_body:
                    raise RequestRefused(413, "http", f"body larger than {server.max_body} bytes")
                return self._exactly(length, deadline)

            def _arm(self, deadline: float) -> None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                self.connection.settimeout(min(server.read_timeout_s, left))

            def _exactly(self, n: int, deadline: float) -> bytes:
                parts, got = [], 0
                while got < n:
                    self._arm(deadline)
                    # read1: one socket read at most, so the deadline is checked between reads.
                    part = self.rfile.read1(min(n - got, 65_536))
                    if not part:
                        raise RequestRefused(400, "http", "the body ended before its length")
                    parts.append(part)
                    got += len(part)
                return b"".join(parts)

            def _line(self, deadline: float) -> bytes:
                self._arm(deadline)
                line: bytes = self.rfile.readline(1024)
                if not line.endswith(b"\n"):
                    raise RequestRefused(400, "http", "malformed chunked body")
                return line

            def _chunked(self, deadline: float) -> bytes:
                body = bytearray()
                while True:
                    size = self._line(deadline).split(b";", 1)[0].strip()
                    if not _CHUNK_SIZE.fullmatch(size):
                        raise RequestRefused(400, "http", "malformed chunk size")
                    n = int(size, 16)
                    if n == 0:
                        break
                    if len(body) + n > server.max_body:
                        too_large = f"body larger than {server.max_body} bytes"
                        raise RequestRefused(413, "http", too_large)
                    body += self._exactly(n, deadline)
                    if self._line(deadline).strip():
                        raise RequestRefused(400, "http", "malformed chunk end")
                for _ in range(32):  # trailers, up to the empty line
                    if not self._line(deadline).strip():
                        return bytes(body)
                raise RequestRefused(400, "http", "too many trailers")

        return Handler

"""A local HTTP server standing in for Slack, Discord and ntfy webhooks (and apprise's json://
target): records every request; per path, replies can be scripted (status, Retry-After, delay)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tests.support.local_http import LocalHTTPServer, QuietHandler


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: Any
    raw: str
    at: float


@dataclass
class Scripted:
    status: int = 200
    delay_s: float = 0.0
    retry_after: str | None = None
    body: str = ""


@dataclass
class Receiver:
    hits: list[Hit] = field(default_factory=list)
    scripts: dict[str, list[Scripted]] = field(default_factory=dict)
    default_status: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._http = LocalHTTPServer(self._handler())

    def url(self, path: str) -> str:
        return self._http.base_url + path

    def start(self) -> Receiver:
        self._http.start()
        return self

    def stop(self) -> None:
        self._http.stop()

    def script(self, path: str, *replies: Scripted) -> None:
        with self._lock:
            self.scripts.setdefault(path, []).extend(replies)

    def at(self, path: str) -> list[Hit]:
        with self._lock:
            return [h for h in self.hits if h.path == path]

    def all_text(self) -> str:
        with self._lock:
            return "\n".join(h.raw + json.dumps(h.headers) for h in self.hits)

    def _handler(self) -> type[QuietHandler]:
        receiver = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode("utf-8", errors="replace")
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw
                path = self.path.split("?", 1)[0]
                with receiver._lock:
                    receiver.hits.append(Hit(path, dict(self.headers), body, raw, time.time()))
                    queue = receiver.scripts.get(path) or []
                    reply = (
                        queue.pop(0)
                        if queue
                        else Scripted(status=receiver.default_status.get(path, 200))
                    )
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                headers = (
                    {"Retry-After": reply.retry_after} if reply.retry_after is not None else None
                )
                self.reply(reply.status, reply.body.encode(), headers=headers)

        return Handler

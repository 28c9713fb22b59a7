"""A local HTTP server that speaks the Anthropic Messages API (`POST /v1/messages`) and the OpenAI
Chat Completions API (`POST /v1/chat/completions`), so the real SDK clients are what is tested.

Each request takes the next scripted behaviour (or the default): answer with a text, answer
slowly, or fail with a status code (optionally with Retry-After). Every request body is kept."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tests.support.local_http import LocalHTTPServer, QuietHandler


@dataclass
class Reply:
    text: str = ""
    status: int = 200
    delay_s: float = 0.0
    retry_after: str | None = None


def verdict(
    action_id: str | None = "restart",
    confidence: Any = 0.9,
    false_alarm: bool = False,
    **extra: Any,
) -> str:
    body = {
        "root_cause": "the worker ran out of database connections",
        "action_id": action_id,
        "confidence": confidence,
        "false_alarm": false_alarm,
        "explanation": "restarting releases the leaked connections",
    }
    return json.dumps(body | extra)


@dataclass
class FakeLLM:
    default: Reply = field(default_factory=lambda: Reply(text=verdict()))
    script: list[Reply] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._http = LocalHTTPServer(self._handler())

    @property
    def url(self) -> str:
        return self._http.base_url

    def start(self) -> FakeLLM:
        self._http.start()
        return self

    def stop(self) -> None:
        self._http.stop()

    def next_reply(self) -> Reply:
        with self._lock:
            return self.script.pop(0) if self.script else self.default

    def bodies(self) -> str:
        return json.dumps(self.requests)

    def _handler(self) -> type[QuietHandler]:
        fake = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with fake._lock:
                    fake.requests.append(body)
                    fake.paths.append(self.path)
                reply = fake.next_reply()
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                anthropic = self.path.endswith("/v1/messages")
                if reply.status != 200:
                    self._send(reply.status, _error(anthropic, reply.status), reply.retry_after)
                elif anthropic:
                    self._send(200, _anthropic_message(body, reply.text))
                elif self.path.endswith("/chat/completions"):
                    self._send(200, _openai_completion(body, reply.text))
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def _send(
                self, status: int, payload: dict[str, Any], retry_after: str | None = None
            ) -> None:
                headers = {"Retry-After": retry_after} if retry_after is not None else None
                self.reply(status, json.dumps(payload).encode(), "application/json", headers)

        return Handler


def _anthropic_message(request: dict[str, Any], text: str) -> dict[str, Any]:
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": request.get("model", "fake"),
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 100, "output_tokens": 50},
    }


def _openai_completion(request: dict[str, Any], text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.get("model", "fake"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150},
    }


def _error(anthropic: bool, status: int) -> dict[str, Any]:
    kind = {429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}.get(status, "error")
    if anthropic:
        return {"type": "error", "error": {"type": kind, "message": f"fake {status}"}}
    return {"error": {"message": f"fake {status}", "type": kind, "code": None, "param": None}}

"""The socket proxy's server: TCP in, the Docker unix socket out, one request per connection.

One request per connection (every answer says `Connection: close`): the proxy never has to
find where one request ends and the next begins on a connection it has refused a request on,
so nothing a client sends after its request can ride along to Docker; and a refused body need
not be read. The price is one TCP and one unix connect per call, on a local network.

Timeouts: the whole request (head and body) must arrive within `request_timeout_s`; a client
that stops reading an answer for `write_timeout_s` is dropped. There is no timeout on Docker's
answer: event streams are silent for hours and a stop waits `t` seconds. The exchange ends when
either side closes, so a client that gives up frees Docker's connection at once."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any

from agents.socket_proxy.bodies import load_object
from agents.socket_proxy.policy import Allowed, Body, Mode, Policy, Scrub, build_policy
from agents.socket_proxy.scrub import scrub_output
from agents.socket_proxy.wire import (
    Framing,
    RequestHead,
    ResponseHead,
    parse_request_head,
    parse_response_head,
    read_body,
    relay_body,
    render_refusal,
    render_request,
    render_response_head,
)
from shared.errors import ConfigError, DockerError, DockerUnavailable, RequestRefused
from shared.log import get_logger
from shared.redaction import MIN_LITERAL

__all__ = ["ProxyConfig", "SocketProxy", "check", "parse_address"]

log = get_logger(__name__)

_UPSTREAM_LIMIT = 64 * 1024  # Docker's answer heads and chunk-size lines
_LINGER_S = 1.0


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[IPV6]:PORT` or `:PORT` (every interface)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        sep, port = rest[:1], rest[1:]
    else:
        host, sep, port = text.rpartition(":")
    if sep != ":" or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"listen address must be HOST:PORT, not {text!r}")
    return host or "0.0.0.0", int(port)


@dataclass(frozen=True)
class ProxyConfig:
    listen: str = "127.0.0.1:2375"
    socket_path: str = "/var/run/docker.sock"
    mode: Mode = Mode.READ
    allow_exec: bool = False
    allow_scale: bool = False
    allow_volume_removal: bool = False
    head_limit: int = 16 * 1024  # request line and headers
    body_limit: int = 64 * 1024  # enough for an exec or a clone's JSON
    answer_limit: int = 16 * 1024 * 1024  # an inspection buffered to be masked
    request_timeout_s: float = 10.0
    connect_timeout_s: float = 5.0
    lookup_timeout_s: float = 30.0  # the proxy's own reads for a clone or a scale
    write_timeout_s: float = 60.0
    max_connections: int = 256
    grace_s: float = 2.0  # on stop, for calls under way (streams are cut after it)

    def policy(self) -> Policy:
        return build_policy(
            self.mode,
            allow_exec=self.allow_exec,
            allow_scale=self.allow_scale,
            allow_volume_removal=self.allow_volume_removal,
        )


# Between a hijacked stream's head and its (scrubbed, buffered) output: enough for a client on
# the same host to have read the head alone.
_HIJACK_PAUSE_S = 0.05


class _Engine:
    """Docker as the proxy asks it for itself (a clone's source, a service's spec)."""

    def __init__(self, proxy: SocketProxy) -> None:
        self.proxy = proxy

    async def get_json(self, path: str) -> tuple[int, Any]:
        config = self.proxy.config
        reader, writer = await self.proxy._connect()
        try:
            async with asyncio.timeout(config.lookup_timeout_s):  # no client waits on this
                writer.write(render_request("GET", path, [], None))
                await writer.drain()
                head = parse_response_head(await reader.readuntil(b"\r\n\r\n"), "GET")
                raw = await read_body(reader, head, config.answer_limit)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise DockerUnavailable(f"GET {path}: {exc!r}") from exc
        finally:
            writer.close()
        try:
            return head.status, json.loads(raw) if raw else None
        except ValueError as exc:
            raise DockerError(f"GET {path}: Docker's answer is not JSON") from exc

    async def output_context(self, allowed: Allowed) -> tuple[list[str], bool]:
        """The environment values to scrub out of an output, and whether it came from a TTY
        (raw bytes) or not (multiplexed frames)."""
        ident = allowed.params["id"]
        tty: bool | None = None
        if allowed.rule.scrub is Scrub.EXEC:
            status, info = await self.get_json(f"/exec/{ident}/json")
            if status != 200 or not isinstance(info, dict):
                raise DockerError(f"exec {ident}: its container is unknown, output not scrubbed")
            ident = str(info.get("ContainerID") or "")
            tty = bool((info.get("ProcessConfig") or {}).get("tty"))
        status, container = await self.get_json(f"/containers/{ident}/json")
        if status != 200 or not isinstance(container, dict):
            raise DockerError(f"container {ident}: its environment is unknown, output not scrubbed")
        config = container.get("Config") or {}
        values = [
            value
            for entry in config.get("Env") or []
            if len(value := str(entry).partition("=")[2]) >= MIN_LITERAL
        ]
        return values, bool(config.get("Tty")) if tty is None else tty


class SocketProxy:
    """`start()` binds (port 0 picks a free one; `port` tells which), `run()` serves until
    `stop()`; `forwarded` counts requests sent on to Docker and `refused` refusals per rule."""

    name = "socket-proxy"

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.policy = config.policy()
        self.host, self.port = parse_address(config.listen)
        self.forwarded = 0
        self.refused: Counter[str] = Counter()
        self._engine = _Engine(self)
        self._server: asyncio.Server | None = None
        self._stopping = asyncio.Event()
        self._connections: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(
                self._accept, self.host, self.port, limit=self.config.head_limit
            )
        except OSError as exc:
            raise ConfigError(f"socket proxy cannot listen on {self.config.listen}: {exc}") from exc
        self.port = self._server.sockets[0].getsockname()[1]
        log.info(
            "socket_proxy.listening",
            host=self.host,
            port=self.port,
            mode=str(self.policy.mode),
            flags=sorted(self.policy.flags),
            socket=self.config.socket_path,
            rules=[r.name for r in self.policy.rules],
        )
        if not os.path.exists(self.config.socket_path):  # noqa: ASYNC240 - one stat at start
            log.warning("socket_proxy.no_docker_socket", socket=self.config.socket_path)

    async def run(self) -> None:
        if self._server is None:
            await self.start()
        try:
            await self._stopping.wait()
        finally:
            await self.close()

    def stop(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        if self._connections:
            await asyncio.wait(set(self._connections), timeout=self.config.grace_s)
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None
        log.info("socket_proxy.stopped", forwarded=self.forwarded, refused=dict(self.refused))

    # ------------------------------------------------------------------ one connection

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = str(writer.get_extra_info("peername"))
        try:
            if len(self._connections) >= self.config.max_connections:
                refusal = RequestRefused(503, "connections", "too many connections")
                await self._refuse(reader, writer, refusal, None, peer)
                return
            self._connections.add(task)
            await self._serve(reader, writer, peer)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            log.debug("socket_proxy.connection_lost", peer=peer, error=repr(exc))
        finally:
            self._connections.discard(task)
            writer.close()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> None:
        request: RequestHead | None = None
        try:
            try:
                async with asyncio.timeout(self.config.request_timeout_s):
                    raw = await self._read_head(reader)
                    if raw is None:
                        return  # closed before sending anything
                    request = parse_request_head(raw, self.config.body_limit)
                    allowed = self.policy.decide(request.method, request.path, request.query)
                    raw_body = await reader.readexactly(request.content_length)
            except TimeoutError as exc:
                limit = self.config.request_timeout_s
                raise RequestRefused(408, "timeout", f"no complete request in {limit}s") from exc
            except asyncio.IncompleteReadError as exc:
                raise RequestRefused(400, "http", "connection closed mid-request") from exc
            body = await self._body(allowed, request, raw_body)
        except RequestRefused as exc:
            await self._refuse(reader, writer, exc, request, peer)
            return
        except DockerError as exc:
            await self._bad_gateway(reader, writer, exc, request)
            return
        await self._exchange(reader, writer, request, allowed, body)

    async def _read_head(self, reader: asyncio.StreamReader) -> bytes | None:
        try:
            return await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                return None
            raise RequestRefused(400, "http", "connection closed mid-request") from exc
        except asyncio.LimitOverrunError as exc:
            limit = self.config.head_limit
            raise RequestRefused(431, "head-limit", f"request head over {limit} bytes") from exc

    async def _body(self, allowed: Allowed, request: RequestHead, raw: bytes) -> bytes | None:
        """What Docker gets as the body, checked (and rebuilt where the rule says so)."""
        rule = allowed.rule
        if rule.body is Body.NONE:
            if raw:
                raise RequestRefused(403, rule.name, "a body is not allowed here")
            return None if request.method in ("GET", "HEAD") else b""
        data = load_object(raw, rule.name)
        if rule.check is not None:
            rule.check(data, rule.name)
        if rule.prepare is not None:
            data = await rule.prepare(self._engine, allowed.params, data)
        return json.dumps(data).encode()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        path = self.config.socket_path
        try:
            return await asyncio.wait_for(
                asyncio.open_unix_connection(path, limit=_UPSTREAM_LIMIT),
                self.config.connect_timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            raise DockerUnavailable(f"Docker socket {path}: {exc!r}") from exc

    async def _exchange(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: RequestHead,
        allowed: Allowed,
        body: bytes | None,
    ) -> None:
        """Forward, relay the answer, and stop both the moment the client goes away."""
        relay = asyncio.create_task(self._relay(writer, request, allowed, body))
        gone = asyncio.create_task(_until_closed(reader))
        try:
            await asyncio.wait({relay, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (relay, gone):
                task.cancel()
            await asyncio.gather(relay, gone, return_exceptions=True)
        if relay.done() and not relay.cancelled() and relay.exception() is None:
            await _linger(reader, writer)

    async def _relay(
        self,
        writer: asyncio.StreamWriter,
        request: RequestHead,
        allowed: Allowed,
        body: bytes | None,
    ) -> None:
        started = False
        up_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await self._connect()
            kept = [("User-Agent", v) for k, v in request.headers if k == "user-agent"]
            if allowed.rule.body is Body.JSON:
                kept.append(("Content-Type", "application/json"))
            up_writer.write(render_request(request.method, allowed.target, kept, body))
            await up_writer.drain()
            self.forwarded += 1
            head = parse_response_head(await up_reader.readuntil(b"\r\n\r\n"), request.method)
            log.debug(
                "socket_proxy.forwarded",
                rule=allowed.rule.name,
                method=request.method,
                path=request.path,
                status=head.status,
            )
            if allowed.rule.scrub is not Scrub.NONE and 200 <= head.status < 300:
                # A container's output may print its own secrets: the whole (bounded) answer is
                # read and scrubbed before any of it leaves; what cannot be scrubbed is a 502.
                if head.header("content-encoding"):
                    raise DockerError("an encoded answer cannot be scrubbed")
                raw = await read_body(up_reader, head, self.config.answer_limit)
                values, tty = await self._engine.output_context(allowed)
                out = await asyncio.to_thread(scrub_output, raw, values, tty)
                started = True
                if head.framing is Framing.CLOSE:
                    # A hijacked stream (exec): clients read the head through a buffer, then the
                    # raw socket, so the output must not arrive with the head (Docker sends the
                    # head at once, the output as the command runs).
                    writer.write(render_response_head(head, _framed(head)))
                    await self._flush(writer)
                    await asyncio.sleep(_HIJACK_PAUSE_S)
                    writer.write(out)
                else:
                    headers = [*head.end_to_end(), ("Content-Length", str(len(out)))]
                    writer.write(render_response_head(head, headers) + out)
                await self._flush(writer)
                return
            answer = allowed.rule.answer
            if answer is not None and 200 <= head.status < 300:
                if head.header("content-encoding"):
                    raise DockerError("an encoded answer cannot be filtered")
                raw = await read_body(up_reader, head, self.config.answer_limit)
                try:
                    doc = json.loads(raw)
                except ValueError as exc:
                    raise DockerError("Docker's answer to filter is not JSON") from exc
                out = (json.dumps(answer(doc)) + "\n").encode()
                headers = [*head.end_to_end(), ("Content-Length", str(len(out)))]
                started = True
                writer.write(render_response_head(head, headers) + out)
                await self._flush(writer)
                return
            started = True
            writer.write(render_response_head(head, _framed(head)))
            await self._flush(writer)
            await relay_body(up_reader, writer, head, self.config.write_timeout_s)
        except (
            DockerError,
            OSError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ) as exc:
            if started:  # the head is out: all that is left to say is to close
                log.info("socket_proxy.answer_cut", path=request.path, error=repr(exc))
                raise
            failure = exc if isinstance(exc, DockerError) else DockerError(repr(exc))
            await self._bad_gateway(None, writer, failure, request)
        finally:
            if up_writer is not None:
                up_writer.close()

    # ------------------------------------------------------------------ answers of our own

    async def _refuse(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        refusal: RequestRefused,
        request: RequestHead | None,
        peer: str,
    ) -> None:
        self.refused[refusal.rule] += 1
        log.warning(
            "socket_proxy.refused",
            status=refusal.status,
            rule=refusal.rule,
            reason=refusal.reason,
            method=request.method if request else None,
            path=request.path[:200] if request else None,
            peer=peer,
        )
        text = f"forbidden by HemoStat's socket proxy: {refusal}"
        if refusal.status != 403:
            text = f"refused by HemoStat's socket proxy: {refusal}"
        writer.write(render_refusal(refusal.status, text))
        await _linger(reader, writer)

    async def _bad_gateway(
        self,
        reader: asyncio.StreamReader | None,
        writer: asyncio.StreamWriter,
        exc: DockerError,
        request: RequestHead | None,
    ) -> None:
        log.warning(
            "socket_proxy.docker_failed", path=request.path if request else None, error=str(exc)
        )
        writer.write(render_refusal(502, f"HemoStat's socket proxy: Docker failed: {exc}"))
        if reader is not None:
            await _linger(reader, writer)
        else:
            await self._flush(writer)

    async def _flush(self, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(self.config.write_timeout_s):  # a client that stops reading
            await writer.drain()


def _framed(head: ResponseHead) -> list[tuple[str, str]]:
    headers = head.end_to_end()
    if head.framing is Framing.CHUNKED:
        headers.append(("Transfer-Encoding", "chunked"))
    elif head.framing is Framing.LENGTH:
        headers.append(("Content-Length", str(head.length)))
    elif head.framing is Framing.NONE and (length := head.header("content-length")):
        headers.append(("Content-Length", length))  # a HEAD answer tells the GET's length
    return headers


async def _until_closed(reader: asyncio.StreamReader) -> None:
    """Returns when the client closes; whatever it sends meanwhile is not a request (one per
    connection) and is dropped."""
    with contextlib.suppress(OSError):
        while await reader.read(64 * 1024):
            pass


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Send what is written, say we are done, and read what the client still sends for a moment
    before closing: closing with unread bytes makes the kernel reset the connection, and the
    client would lose the answer (a refusal of a request whose body we never read)."""
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(_LINGER_S):
            await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
            while await reader.read(64 * 1024):
                pass


def check(address: str, timeout: float = 3.0) -> tuple[bool, str]:
    """The health check: `GET /_ping` through the proxy answers `OK` (so Docker is reachable
    through it too)."""
    host, port = parse_address(address)
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/_ping")
        response = conn.getresponse()
        body = response.read(64)
    except (OSError, http.client.HTTPException) as exc:
        return False, f"{address}: {exc!r}"
    finally:
        conn.close()
    ok = response.status == 200 and body.strip() == b"OK"
    return ok, f"{address}: HTTP {response.status} {body.decode(errors='replace')[:64]!r}"

"""HTTP/1.1 on the wire for the socket proxy: a strict request parser (the proxy forwards only
what it understood, so Docker cannot read a request differently), response heads, and body
relays that pass streams through as they come.

Malformed requests raise `RequestRefused` (400/413); a malformed answer from Docker raises
`DockerError`."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from enum import Enum

from shared.errors import DockerError, RequestRefused

__all__ = [
    "Framing",
    "RequestHead",
    "ResponseHead",
    "parse_request_head",
    "parse_response_head",
    "read_body",
    "relay_body",
    "render_refusal",
    "render_request",
    "render_response_head",
]

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
# origin-form only (no absolute URLs, no '*'), visible ASCII, no fragment
_TARGET = re.compile(r"/[\x21-\x22\x24-\x7e]*")
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})(;[^\r\n]*)?\r\n")
_MAX_HEADERS = 100
_COPY = 64 * 1024

# Never forwarded in either direction: they describe one connection, not the message.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "transfer-encoding",
    }
)

_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    408: "Request Timeout",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def _bad(reason: str) -> RequestRefused:
    return RequestRefused(400, "http", reason)


@dataclass(frozen=True)
class RequestHead:
    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]  # names lower-cased, in order
    content_length: int

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


def parse_request_head(raw: bytes, body_limit: int) -> RequestHead:
    """`raw` is everything up to and including the blank line. Refuses what HTTP/1.1 allows
    but a proxy in front of Docker has no use for: bare CR or LF, folded or duplicate framing
    headers, request bodies in chunked encoding, absolute-form targets."""
    if not raw.endswith(b"\r\n\r\n"):
        raise _bad("incomplete request head")
    # Two parsers disagreeing on line ends is how requests get smuggled: CRLF only.
    if raw.count(b"\n") != raw.count(b"\r\n") or raw.count(b"\r") != raw.count(b"\r\n"):
        raise _bad("bare CR or LF in the request head")
    lines = raw[:-4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise _bad("malformed request line")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise _bad("malformed method")
    if version != "HTTP/1.1":
        raise _bad(f"only HTTP/1.1 is spoken here, not {version[:16]!r}")
    if not _TARGET.fullmatch(target):
        raise _bad("the request target must be a path (origin form, visible ASCII, no '#')")
    path, _, query = target.partition("?")
    if len(lines) - 1 > _MAX_HEADERS:
        raise _bad("too many header fields")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):  # also catches obsolete line folding
            raise _bad("malformed header field")
        value = value.strip(" \t")
        if not _FIELD_VALUE.fullmatch(value):
            raise _bad(f"control character in header {name!r}")
        headers.append((name.lower(), value))
    if any(name == "transfer-encoding" for name, _ in headers):
        raise _bad("Transfer-Encoding on a request is not accepted (send Content-Length)")
    lengths = [value for name, value in headers if name == "content-length"]
    if len(lengths) > 1:
        raise _bad("more than one Content-Length")
    length = 0
    if lengths:
        if not _CONTENT_LENGTH.fullmatch(lengths[0]):
            raise _bad(f"malformed Content-Length {lengths[0][:24]!r}")
        length = int(lengths[0])
    if length > body_limit:
        raise RequestRefused(413, "body-limit", f"{length} bytes is over {body_limit}")
    return RequestHead(method, path, query, tuple(headers), length)


def render_request(
    method: str, target: str, headers: list[tuple[str, str]], body: bytes | None
) -> bytes:
    """The request Docker gets: our own head (Host, framing, `Connection: close`) plus the
    client headers the caller chose to keep."""
    lines = [f"{method} {target} HTTP/1.1", "Host: docker", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def render_refusal(status: int, text: str) -> bytes:
    body = (text.rstrip("\n") + "\n").encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class Framing(Enum):
    NONE = "none"  # HEAD, 1xx, 204, 304: no body whatever the headers say
    LENGTH = "length"
    CHUNKED = "chunked"
    CLOSE = "close"  # until Docker closes (hijacked exec and attach streams)


@dataclass(frozen=True)
class ResponseHead:
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]  # names as Docker sent them
    framing: Framing
    length: int = 0

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def end_to_end(self) -> list[tuple[str, str]]:
        """Headers to pass on, less the hop-by-hop ones and the body's length."""
        return [
            (k, v)
            for k, v in self.headers
            if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length"
        ]


def parse_response_head(raw: bytes, method: str) -> ResponseHead:
    try:
        lines = raw[:-4].decode("latin-1").split("\r\n")
        version, status_text, *rest = lines[0].split(" ", 2)
        status = int(status_text)
    except ValueError as exc:
        raise DockerError(f"malformed status line from Docker: {raw[:80]!r}") from exc
    if not version.startswith("HTTP/1.") or not 100 <= status <= 599:
        raise DockerError(f"malformed status line from Docker: {lines[0][:80]!r}")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            raise DockerError(f"malformed header from Docker: {line[:80]!r}")
        headers.append((name, value.strip(" \t")))
    reason = rest[0] if rest else ""
    coding = [v.lower() for k, v in headers if k.lower() == "transfer-encoding"]
    lengths = {v for k, v in headers if k.lower() == "content-length"}
    if method == "HEAD" or status < 200 or status in (204, 304):
        return ResponseHead(status, reason, tuple(headers), Framing.NONE)
    if coding:
        if coding != ["chunked"]:
            raise DockerError(f"unsupported Transfer-Encoding from Docker: {coding}")
        return ResponseHead(status, reason, tuple(headers), Framing.CHUNKED)
    if lengths:
        if len(lengths) > 1 or not _CONTENT_LENGTH.fullmatch(next(iter(lengths))):
            raise DockerError(f"malformed Content-Length from Docker: {sorted(lengths)}")
        return ResponseHead(status, reason, tuple(headers), Framing.LENGTH, int(lengths.pop()))
    return ResponseHead(status, reason, tuple(headers), Framing.CLOSE)


def render_response_head(head: ResponseHead, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {head.status} {head.reason}".rstrip(), *(f"{k}: {v}" for k, v in headers)]
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _chunk_size(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    line = await reader.readuntil(b"\r\n")
    match = _CHUNK_SIZE.fullmatch(line)
    if not match:
        raise DockerError(f"malformed chunk size from Docker: {line[:40]!r}")
    return int(match.group(1), 16), line


async def relay_body(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    head: ResponseHead,
    write_timeout: float,
) -> None:
    """Copy the body as it arrives, framing included (a chunked stream stays chunked), so an
    event or stats stream reaches the client event by event."""

    async def send(data: bytes) -> None:
        writer.write(data)
        async with asyncio.timeout(write_timeout):  # a client that stops reading is dropped
            await writer.drain()

    async def copy(n: int) -> None:
        while n:
            data = await reader.read(min(n, _COPY))
            if not data:
                raise DockerError("Docker closed the connection mid-body")
            n -= len(data)
            await send(data)

    if head.framing is Framing.NONE:
        return
    if head.framing is Framing.LENGTH:
        await copy(head.length)
        return
    if head.framing is Framing.CLOSE:
        while data := await reader.read(_COPY):
            await send(data)
        return
    while True:
        size, line = await _chunk_size(reader)
        await send(line)
        if size == 0:
            while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                await send(trailer)
            await send(b"\r\n")
            return
        await copy(size)
        if await reader.readexactly(2) != b"\r\n":
            raise DockerError("malformed chunk end from Docker")
        await send(b"\r\n")


async def read_body(reader: asyncio.StreamReader, head: ResponseHead, limit: int) -> bytes:
    """The whole body, de-chunked, for an answer the proxy must rewrite; over `limit` bytes is
    a `DockerError` (the proxy answers 502 rather than pass an unfiltered body)."""

    def check(size: int) -> None:
        if size > limit:
            raise DockerError(f"Docker's answer is over {limit} bytes: not filtered, not passed")

    if head.framing is Framing.NONE:
        return b""
    if head.framing is Framing.LENGTH:
        check(head.length)
        return await reader.readexactly(head.length)
    if head.framing is Framing.CLOSE:
        body = b""
        while data := await reader.read(_COPY):
            body += data
            check(len(body))
        return body
    parts: list[bytes] = []
    total = 0
    while True:
        size, _ = await _chunk_size(reader)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass
            return b"".join(parts)
        total += size
        check(total)
        parts.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise DockerError("malformed chunk end from Docker")

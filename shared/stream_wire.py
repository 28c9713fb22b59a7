"""Redis Streams replies read as bytes and decoded one element at a time.

Replies that carry stream entries are read undecoded, whatever the client's decode_responses:
decoding a whole reply at once lets one entry that is not UTF-8 fail its entire batch. The
helpers here turn such replies into ids, texts and field dicts without ever failing on junk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.client import NEVER_DECODE
from redis.exceptions import NoScriptError, ResponseError

__all__ = [
    "LuaScript",
    "RawFields",
    "as_mapping",
    "as_text",
    "entry_fields",
    "is_group_lost",
    "parse_stream_id",
    "raw_command",
    "render_fields",
    "stream_items",
]

RawFields = dict[bytes, bytes]


async def raw_command(redis: Redis, *args: Any) -> Any:
    """A command whose reply is read as bytes, whatever the client's decode_responses: decoding a
    whole reply at once lets one entry that is not UTF-8 fail its entire batch."""
    return await redis.execute_command(*args, **{NEVER_DECODE: True})  # type: ignore[no-untyped-call]


class LuaScript:
    """A Lua script, run with EVALSHA (EVAL when Redis lost its script cache, e.g. restarted)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, redis: Redis, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await raw_command(redis, "EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await raw_command(redis, "EVAL", self.source, len(keys), *keys, *args)


def is_group_lost(exc: ResponseError) -> bool:
    """NOGROUP: the group (or its stream) is gone. UNBLOCKED: a blocked read's stream was deleted
    (DEL, FLUSHALL/FLUSHDB) while it waited."""
    message = str(exc)
    return "NOGROUP" in message or message.startswith("UNBLOCKED")


def as_text(value: Any) -> str:
    """Decode a reply element read as bytes; names and ids are ours, but never fail on junk."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    return str(value)


def as_mapping(reply: Any) -> dict[Any, Any]:
    """A map reply: already a dict (parsed by redis-py, or RESP3), or a flat key/value list."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2], strict=True))


def entry_fields(raw: Any) -> RawFields | None:
    """An entry's fields as a dict of bytes: parsed by redis-py, or a flat list from a script."""
    if raw is None:
        return None
    return {bytes(k): bytes(v) for k, v in as_mapping(raw).items()}


def render_fields(fields: RawFields | None) -> bytes:
    """An entry without an `event` field, shown whole in its dead letter (bytes reprs: ASCII, each
    bad byte escaped once)."""
    return repr(fields).encode()


def parse_stream_id(message_id: str) -> tuple[int, int]:
    ms, _, seq = message_id.partition("-")
    return int(ms), int(seq or 0)


def stream_items(response: Any) -> list[tuple[str, list[tuple[str, RawFields | None]]]]:
    """XREADGROUP replies are a list of [stream, messages] (RESP2) or a dict (RESP3)."""
    if not response:
        return []
    if isinstance(response, dict):
        streams = [(k, v[0] if v and isinstance(v[0], list) else v) for k, v in response.items()]
    else:
        streams = [(stream, messages) for stream, messages in response]
    return [
        (
            as_text(stream),
            [(as_text(message_id), entry_fields(fields)) for message_id, fields in messages],
        )
        for stream, messages in streams
    ]

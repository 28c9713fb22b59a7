"""The dead-letter stream: where a message goes, with the error, when its group gives up on it
(its handler kept failing, or it could not be parsed, or it was trimmed while pending)."""

from __future__ import annotations

import hashlib
import time

from redis.asyncio import Redis

from shared import keys
from shared.stream_wire import LuaScript, as_text

__all__ = ["write_dead_letter"]

# An excerpt larger than this is stored once per distinct payload (see write_dead_letter); smaller
# ones are cheaper inline than the marker key that deduplicates them.
_SHARE_EXCERPT_OVER = 4_096
_EXCERPT_MARKER_TTL_MS = 24 * 3600 * 1000


# Append a dead letter and acknowledge its message, atomically. A shared excerpt is stored once per
# distinct payload: while the letter holding it is retained, later letters for the same bytes
# (other groups failing the same entry) name it in `excerpt_in` instead of copying it.
_DEAD_LETTER = LuaScript("""
-- KEYS: dead-letter stream, source stream, marker (id of the letter holding the excerpt)
-- ARGV: maxlen, group, message_id, marker_ttl_ms, share, excerpt, field, value, ...
local fields = {}
for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
local share = ARGV[5] == '1'
local holder = false
if share then
  holder = redis.call('GET', KEYS[3])
  if holder and #redis.call('XRANGE', KEYS[1], holder, holder) == 0 then holder = false end
end
if holder then
  for _, v in ipairs({'event', '', 'excerpt_in', holder}) do fields[#fields + 1] = v end
else
  for _, v in ipairs({'event', ARGV[6]}) do fields[#fields + 1] = v end
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
if share and not holder then redis.call('SET', KEYS[3], id, 'PX', ARGV[4]) end
redis.call('XACK', KEYS[2], ARGV[2], ARGV[3])
return id
""")


async def write_dead_letter(
    redis: Redis,
    *,
    maxlen: int,
    excerpt_bytes: int,
    channel: str,
    group: str,
    consumer: str,
    message_id: str,
    raw: str | bytes | None,
    error: str,
    attempts: int,
) -> str:
    """Move one message to the dead-letter stream with the error and acknowledge it, atomically;
    returns the dead letter's id.

    The letter keeps an excerpt of the payload (`event`: its first `excerpt_bytes`, bad
    bytes backslash-escaped so readers can decode it; `truncated` says whether that is all)
    with the whole payload's `size` and `sha256`. `raw=None` means the payload is gone (the
    entry was trimmed). An excerpt over 4 KiB is stored once per distinct payload: the letters
    of other groups failing the same bytes name the letter holding it in `excerpt_in`.
    """
    payload = raw.encode() if isinstance(raw, str) else (raw or b"")
    excerpt, truncated = _excerpt(payload, excerpt_bytes)
    digest = hashlib.sha256(payload).hexdigest() if raw is not None else ""
    fields = {
        "channel": channel,
        "group": group,
        "consumer": consumer,
        "message_id": message_id,
        "attempts": str(attempts),
        # Exception texts may carry lone surrogates, which the client refuses to encode.
        "error": error[:2000].encode("utf-8", "backslashreplace").decode(),
        "failed_at": f"{time.time():.3f}",
        "size": str(len(payload)),
        "sha256": digest,
        "truncated": "true" if truncated else "false",
    }
    share = len(excerpt.encode()) > _SHARE_EXCERPT_OVER
    marker = f"{keys.DEAD_LETTER}:excerpt:{digest}"
    args = [maxlen, group, message_id, _EXCERPT_MARKER_TTL_MS, int(share)]
    args += [excerpt, *(item for pair in fields.items() for item in pair)]
    letter_id = await _DEAD_LETTER(redis, [keys.DEAD_LETTER, channel, marker], args)
    return as_text(letter_id)


def _excerpt(payload: bytes, limit: int) -> tuple[str, bool]:
    """At most `limit` bytes of the payload as text, and whether that leaves some out. The cut
    falls on a character boundary; where the payload is not UTF-8 the bad bytes are
    backslash-escaped, so whoever reads the dead letter can decode it in turn."""
    head = payload[:limit]
    try:
        return head.decode("utf-8"), len(payload) > limit
    except UnicodeDecodeError as exc:
        if exc.reason == "unexpected end of data" and len(payload) > limit:
            return head[: exc.start].decode("utf-8"), True  # the cut split a character
    shown = head.decode("utf-8", errors="backslashreplace")  # up to 4 characters per bad byte
    text = shown.encode()[:limit].decode("utf-8", errors="ignore")
    return text, len(payload) > limit or len(text) < len(shown)

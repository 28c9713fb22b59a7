"""Scrubbing a container's own environment values out of what it printed (its log, an exec's
output) before the socket proxy passes it on.

Why the proxy does it: it masks `Config.Env` in every inspection, so the agents never learn a
container's values and cannot mask them by value in its output themselves (their own redactor
still masks configured secrets and secret-shaped text). The proxy reads the values itself and
replaces them here. Pure: bytes, values and whether the output came from a TTY in, bytes out.

- With a TTY Docker sends raw bytes. Without one, a multiplexed stream of frames: an 8-byte
  header (stream: 0 stdin, 1 stdout, 2 stderr, 3 Docker's own error; three zero bytes; the
  payload's length as a big-endian uint32), then the payload. Where Docker cuts frames has
  nothing to do with where a value is (it splits lines over 16 KiB, and writes as it reads), so
  each stream's payloads are joined, scrubbed as one text and cut back into the original frames
  in their original order: a mask goes into the frame where its value began, frames left empty
  are dropped, and every header is rewritten with its new length.
- Every byte that any occurrence of any value covers is masked, overlapping occurrences
  included, and each run of covered bytes becomes one `***`. That covers everything a
  longest-value-first replacement masks, and also the tail such a replacement leaves when two
  values overlap (`abcdef-123` and `ef-123456` in `abcdef-123456`: `456` would stay).
- Without a TTY, a body that is not a well-formed multiplexed stream is a `DockerError` (never
  guessed to be raw): the proxy passes nothing it could not scrub.

Cost: one C-level search per value over each stream; a Python step per occurrence (a value that
overlaps itself, like `aaaaaa` in a run of `a`, makes that a step per byte), and a byte of
bookkeeping per byte of output. The proxy bounds the body first and runs this off its event
loop."""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Iterator, Sequence

from shared.errors import DockerError

__all__ = ["MASK", "frame", "scrub_output", "split_frames", "withheld"]

MASK = b"***"
_HEADER = struct.Struct(">BxxxL")
_STREAMS = frozenset({0, 1, 2, 3})  # stdin, stdout, stderr, Docker's own error
_STDERR = 2
_COVERED = re.compile(rb"\x01+")


def frame(stream: int, payload: bytes) -> bytes:
    """One frame of a multiplexed stream."""
    return _HEADER.pack(stream, len(payload)) + payload


def _malformed(what: str, at: int) -> DockerError:
    # Never quotes the bytes: they may be the very output that was not scrubbed.
    return DockerError(
        f"Docker's answer is not a well-formed multiplexed stream ({what} at byte {at}): "
        "not scrubbed, not passed"
    )


def split_frames(body: bytes) -> list[tuple[int, bytes]]:
    """(stream, payload) for every frame of a multiplexed stream, in order."""
    frames = []
    at = 0
    while at < len(body):
        if len(body) - at < _HEADER.size:
            raise _malformed("a frame header cut short", at)
        stream, length = _HEADER.unpack_from(body, at)
        if stream not in _STREAMS or body[at + 1 : at + 4] != b"\0\0\0":
            raise _malformed("not a frame header", at)
        end = at + _HEADER.size + length
        if end > len(body):
            raise _malformed("a frame cut short", at)
        frames.append((stream, body[at + _HEADER.size : end]))
        at = end
    return frames


def _covered(text: bytes, needles: Sequence[bytes]) -> Iterator[tuple[int, int]]:
    """The runs of `text` that some occurrence of some needle covers, in order."""
    marks = bytearray(len(text))
    for needle in needles:
        start = end = -1
        at = text.find(needle)
        while at != -1:
            if at > end:  # a new run; the previous one is complete
                if end > start:
                    marks[start:end] = b"\x01" * (end - start)
                start = at
            end = at + len(needle)
            at = text.find(needle, at + 1)  # + 1: occurrences that overlap count too
        if end > start:
            marks[start:end] = b"\x01" * (end - start)
    return ((m.start(), m.end()) for m in _COVERED.finditer(marks))


def _scrub(text: bytes, cuts: Sequence[int], needles: Sequence[bytes]) -> list[bytes]:
    """`text` cut into pieces of the lengths `cuts`, each piece scrubbed; a run of covered
    bytes becomes one mask, in the piece where the run began."""
    runs = _covered(text, needles)
    run = next(runs, None)
    out = []
    start = 0
    for length in cuts:
        end = start + length
        pieces = []
        at = start
        while at < end:
            if run is None or run[0] >= end:
                pieces.append(text[at:end])
                break
            if run[0] > at:
                pieces.append(text[at : run[0]])
                at = run[0]
            if run[0] >= start:  # the run begins in this piece
                pieces.append(MASK)
            at = min(run[1], end)
            if run[1] <= end:
                run = next(runs, None)
        out.append(b"".join(pieces))
        start = end
    return out


def scrub_output(body: bytes, values: Iterable[str], tty: bool) -> bytes:
    """`body` with every occurrence of every value replaced by `***`: raw bytes when the output
    came from a TTY, a multiplexed stream (re-framed) when not."""
    needles = sorted({v.encode() for v in values if v}, key=len, reverse=True)
    if not needles or not body:
        return body
    if tty:
        return _scrub(body, [len(body)], needles)[0]
    frames = split_frames(body)
    scrubbed: dict[int, Iterator[bytes]] = {}
    for stream in {s for s, _ in frames}:
        mine = [payload for s, payload in frames if s == stream]
        pieces = _scrub(b"".join(mine), [len(p) for p in mine], needles)
        scrubbed[stream] = iter(pieces)
    out = (frame(s, piece) for s, _ in frames if (piece := next(scrubbed[s])))
    return b"".join(out)


def withheld(reason: str, tty: bool) -> bytes:
    """What ends a stream whose head is already out when its output cannot be scrubbed (too
    large, malformed): a line on stderr saying why, in place of the output."""
    line = f"\n[HemoStat's socket proxy: output withheld: {reason}]\n".encode()
    return line if tty else frame(_STDERR, line)

"""Scrubbing a container's own environment values out of its log and exec output (the socket
proxy's `scrub.py`): pure, no services."""

from __future__ import annotations

import random
import struct

import pytest

from agents.socket_proxy.scrub import MASK, frame, scrub_output, split_frames
from shared.errors import DockerError

SECRET = "s3cr3t-value-0xC0FFEE"
OUT, ERR = 1, 2


def frames_of(*parts: tuple[int, bytes]) -> bytes:
    return b"".join(frame(stream, payload) for stream, payload in parts)


def checked(body: bytes) -> list[tuple[int, bytes]]:
    """The frames of a body, each header's length checked against its payload (by hand, not
    by the module under test), and no empty frame."""
    out = []
    at = 0
    while at < len(body):
        stream, length = struct.unpack(">BxxxL", body[at : at + 8])
        assert body[at + 1 : at + 4] == b"\0\0\0"
        payload = body[at + 8 : at + 8 + length]
        assert len(payload) == length, "the header tells the payload's true length"
        assert length > 0, "no empty frame is sent"
        out.append((stream, payload))
        at += 8 + length
    return out


def stream(frames: list[tuple[int, bytes]], which: int) -> bytes:
    return b"".join(p for s, p in frames if s == which)


def test_a_value_in_one_frame_is_masked_and_the_frame_re_framed():
    body = frames_of((OUT, f"token is {SECRET}\n".encode()), (ERR, b"no secret here\n"))
    out = scrub_output(body, [SECRET], tty=False)
    assert checked(out) == [(OUT, b"token is ***\n"), (ERR, b"no secret here\n")]


def test_a_value_split_across_two_frames_is_masked_whole():
    head, tail = SECRET[:7].encode(), SECRET[7:].encode()
    body = frames_of((OUT, b"a " + head), (OUT, tail + b" b\n"))
    out = checked(scrub_output(body, [SECRET], tty=False))
    assert SECRET.encode() not in stream(out, OUT)
    assert head not in stream(out, OUT) and tail not in stream(out, OUT), "no half leaks"
    assert out == [(OUT, b"a ***"), (OUT, b" b\n")], "the mask goes where the value began"


def test_a_value_split_around_a_frame_of_the_other_stream_is_masked():
    head, tail = SECRET[:5].encode(), SECRET[5:].encode()
    body = frames_of((ERR, b"x" + head), (OUT, b"between\n"), (ERR, tail + b"\n"))
    out = checked(scrub_output(body, [SECRET], tty=False))
    assert out == [(ERR, b"x***"), (OUT, b"between\n"), (ERR, b"\n")], "order kept"


def test_a_value_split_over_many_frames_leaves_no_piece():
    pieces = [SECRET[i : i + 3].encode() for i in range(0, len(SECRET), 3)]
    body = frames_of(*((OUT, p) for p in pieces), (OUT, b"\n"))
    out = checked(scrub_output(body, [SECRET], tty=False))
    assert out == [(OUT, b"***"), (OUT, b"\n")], "frames left empty are dropped"


def test_a_value_at_the_very_end_is_masked():
    body = frames_of((OUT, b"first\n"), (ERR, b"last: " + SECRET.encode()))
    assert checked(scrub_output(body, [SECRET], tty=False))[-1] == (ERR, b"last: ***")
    raw = b"tail " + SECRET.encode()
    assert scrub_output(raw, [SECRET], tty=True) == b"tail ***"


def test_overlapping_values_are_masked_as_one_with_no_tail_left():
    # A longest-first replace of "abcdef-123" in "abcdef-123456" would leave "456", part of the
    # other value; every byte any value covers is masked instead.
    one, two = "abcdef-123", "ef-123456"
    body = frames_of((OUT, b"<abcdef-123456>\n"))
    assert checked(scrub_output(body, [two, one], tty=False)) == [(OUT, b"<***>\n")]
    nested = ["p4ssw0rd-long", "p4ssw0rd"]  # one inside the other
    assert scrub_output(b"a p4ssw0rd-long b p4ssw0rd c", nested, tty=True) == b"a *** b *** c"


def test_a_value_overlapping_itself_is_masked_over_its_whole_run():
    # Non-overlapping search finds "ababab" at 0 and misses the copy at 2 that covers "ab" at
    # the end.
    assert scrub_output(b"[abababab]", ["ababab"], tty=True) == b"[***]"
    assert scrub_output(b"x" + b"a" * 50 + b"y", ["aaaaaa"], tty=True) == b"x***y"


def test_adjacent_values_become_one_mask():
    assert scrub_output(b"<" + SECRET.encode() * 3 + b">", [SECRET], tty=True) == b"<***>"


def test_tty_output_is_raw_bytes_never_parsed_as_frames():
    # Looks like a frame header; with a TTY it is plain output and must pass as it is.
    raw = b"\x01\x00\x00\x00\x00\x00\x00\x05hello " + SECRET.encode() + b"\r\n"
    assert scrub_output(raw, [SECRET], tty=True) == raw.replace(SECRET.encode(), MASK)


def test_an_empty_body_stays_empty():
    assert scrub_output(b"", [SECRET], tty=False) == b""
    assert scrub_output(b"", [SECRET], tty=True) == b""


def test_without_values_the_body_is_passed_as_it_is():
    body = frames_of((OUT, b"nothing to hide\n"))
    assert scrub_output(body, [], tty=False) is body
    assert scrub_output(body, [""], tty=False) == body, "an empty value matches nothing"


def test_utf8_values_and_output_are_matched_as_bytes():
    value = "pässwörd-ünïcode"
    encoded = value.encode()
    body = frames_of((OUT, b"x " + encoded[:4]), (OUT, encoded[4:] + " ✓\n".encode()))
    assert checked(scrub_output(body, [value], tty=False)) == [
        (OUT, b"x ***"),
        (OUT, " ✓\n".encode()),
    ]


@pytest.mark.parametrize(
    "body",
    [
        b"\x01\x00\x00",  # a header cut short
        frame(OUT, b"hello")[:-1],  # a payload cut short
        b"\x07\x00\x00\x00\x00\x00\x00\x01x",  # no such stream
        b"\x01\x00\x01\x00\x00\x00\x00\x01x",  # padding not zero
        b"plain text from a TTY container",  # inspect said no TTY: never guessed
    ],
)
def test_malformed_framing_fails_closed(body):
    with pytest.raises(DockerError, match="multiplexed"):
        scrub_output(body, [SECRET], tty=False)


def test_frames_round_trip():
    parts = [(OUT, b"a"), (ERR, b"bc"), (0, b"d"), (3, b"system error")]
    assert split_frames(frames_of(*parts)) == parts


def test_any_cut_into_frames_scrubs_like_the_whole_text():
    """However Docker cut a stream into frames (it splits lines over 16 KiB, and writes as it
    reads), the payloads read back are the whole text scrubbed."""
    rng = random.Random(20240607)
    values = [SECRET, "another-secret-42", "ther-secret-42-and-more"]
    for _ in range(300):
        words = [rng.choice([*values, "x", "yy", "\n", "zzz-", "another-"]) for _ in range(30)]
        texts = {OUT: "".join(words).encode(), ERR: "".join(reversed(words)).encode()}
        parts: list[tuple[int, bytes]] = []
        cursor = {OUT: 0, ERR: 0}
        while any(cursor[s] < len(texts[s]) for s in texts):
            s = rng.choice([s for s in texts if cursor[s] < len(texts[s])])
            n = rng.randint(1, 12)
            parts.append((s, texts[s][cursor[s] : cursor[s] + n]))
            cursor[s] += n
        out = checked(scrub_output(frames_of(*parts), values, tty=False))
        for s, text in texts.items():
            assert stream(out, s) == scrub_output(text, values, tty=True)
            for value in values:
                assert value.encode() not in stream(out, s)

"""shared/keys.py is the one place a Redis key, stream or prefix is spelled.

Everything else imports the name, so "what does HemoStat keep in Redis?" is answered by one file.
A `hemostat:` literal elsewhere in agents/, shared/ or dashboard/ fails here with its file:line.
(A program name in a message, `"hemostat: no host ..."`, is followed by a space and is not a key.)
"""

from __future__ import annotations

import re
from pathlib import Path

from shared import keys
from shared.events import Channel, EventType

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("agents", "shared", "dashboard")
KEYS_MODULE = ROOT / "shared" / "keys.py"
# A quote, then `hemostat:`, then anything but whitespace (an f-string's `{` counts).
LITERAL = re.compile(r"""["']hemostat:(?!\s)""")


def literal_hits() -> list[str]:
    hits = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == KEYS_MODULE:
                continue
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                if LITERAL.search(line):
                    hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    return hits


def test_no_hemostat_key_is_spelled_outside_keys() -> None:
    hits = literal_hits()
    assert not hits, f"{len(hits)} Redis name(s) spelled outside shared/keys.py:\n" + "\n".join(
        hits
    )


def test_every_name_in_keys_is_in_the_hemostat_namespace() -> None:
    for name in keys.__all__:
        value = getattr(keys, name)
        if isinstance(value, str):
            assert value.startswith("hemostat:"), name


def test_channels_are_the_streams_named_in_keys() -> None:
    # The wire names never change: every Channel is its keys.py stream, and each event type's.
    assert {c.value for c in Channel} == {getattr(keys, c.name) for c in Channel}
    for event_type in EventType:
        assert event_type.channel.value == "hemostat:" + event_type.value

"""Pure helpers: ids and backoff."""

from __future__ import annotations

from shared.backoff import backoff_delay
from shared.ids import id_time_ms, new_id


def test_ulid_is_sortable_unique_and_carries_time():
    ids = [new_id(1_700_000_000_000) for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert ids == sorted(ids)
    assert all(len(i) == 26 for i in ids)
    assert id_time_ms(new_id(1_700_000_123_456)) >= 1_700_000_000_000
    assert new_id(1_800_000_000_000) > ids[-1]


def test_backoff_grows_exponentially_and_is_capped():
    delays = [backoff_delay(n, base=0.1, cap=1.0, jitter=0) for n in range(1, 7)]
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_backoff_jitter_stays_within_bounds():
    assert backoff_delay(1, base=1.0, jitter=0.2, rand=lambda: 0.0) == 0.8
    assert backoff_delay(1, base=1.0, jitter=0.2, rand=lambda: 1.0) == 1.2

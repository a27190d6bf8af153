"""payload.py: ids and send times survive the round trip; short values are refused."""

from __future__ import annotations

import pytest

from qnode.loadtest.payload import (
    HEADER_SIZE,
    PayloadError,
    PayloadFactory,
    decode,
    make_id,
    split_id,
)


def test_round_trip_and_size() -> None:
    f = PayloadFactory(200)
    rid = make_id(5, 123456)
    value = f.build(rid, 1_700_000_000_123_456_789)
    assert len(value) == 200
    assert decode(memoryview(value)) == (rid, 1_700_000_000_123_456_789)
    assert split_id(rid) == (5, 123456)


def test_ids_of_different_producers_never_collide() -> None:
    assert make_id(1, 0) != make_id(0, 1 << 39)
    assert len({make_id(p, s) for p in range(4) for s in range(100)}) == 400


def test_too_small_or_short_refused() -> None:
    with pytest.raises(PayloadError):
        PayloadFactory(HEADER_SIZE - 1)
    with pytest.raises(PayloadError):
        decode(b"short")

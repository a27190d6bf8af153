"""Fetched records handed out in pieces: positions exact, the cyclic GC left as found."""

from __future__ import annotations

import gc
import struct

import pytest
from fetch_helpers import TP, state
from hypothesis import given, settings
from hypothesis import strategies as st

from qnode.sdk.errors import CorruptRecordError
from qnode.sdk.fetcher import CompletedFetch, FetchConfig, Fetcher
from qnode.sdk.record_writer import build_batch, encode_record
from qnode.storage.batch_builder import BatchBuilder
from qnode.storage.record_batch import CRC_OFFSET, LAST_OFFSET_DELTA_OFFSET, batch_crc, stamp


def builder_batch(base: int, n: int, size: int = 100) -> bytes:
    b = BatchBuilder("none", batch_size=1 << 30)
    for i in range(n):
        b.append(None, b"%08d" % (base + i) + b"x" * max(0, size - 8), None, 1000 + i % 50)
    data = bytearray(b.build())
    stamp(data, 0, base, 0)
    return bytes(data)


def compacted_batch(base: int, deltas: list[int], last_delta: int) -> bytes:
    """A batch whose records kept only `deltas`, spanning offsets up to base+last_delta."""
    parts = [encode_record(d, 0, None, b"v%d" % (base + d)) for d in deltas]
    data = bytearray(build_batch(parts, len(deltas), 1000, 1000))
    struct.pack_into(">i", data, LAST_OFFSET_DELTA_OFFSET, last_delta)
    struct.pack_into(">I", data, CRC_OFFSET, batch_crc(data, 0, len(data)))
    stamp(data, 0, base, 0)
    return bytes(data)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=4),
       st.lists(st.integers(min_value=1, max_value=900), min_size=1, max_size=8),
       st.integers(min_value=0, max_value=50))
def test_pieces_of_any_size_give_every_record_once_in_order(
        sizes: list[int], limits: list[int], start: int) -> None:
    data = b""
    base = 0
    for n in sizes:
        data += builder_batch(base, n)
        base += n
    start = min(start, base - 1)
    subs = state(start)
    st_ = subs.assignment[TP]
    cf = CompletedFetch(TP, st_.fetch_epoch, memoryview(data), None, True)
    got: list = []
    k = 0
    while not cf.done:
        out: list = []
        cf.take(out, limits[k % len(limits)], st_)
        assert len(out) <= limits[k % len(limits)]
        got += out
        if out:
            assert st_.position == out[-1].offset + 1
        k += 1
    assert [r.offset for r in got] == list(range(start, base))
    assert all(r.value.startswith(b"%08d" % r.offset) for r in got)
    assert st_.position == base


def test_a_finished_compacted_batch_moves_the_position_past_its_last_offset() -> None:
    data = compacted_batch(0, [0, 2, 3], 9) + compacted_batch(10, [1], 4)
    subs = state(0)
    st_ = subs.assignment[TP]
    cf = CompletedFetch(TP, st_.fetch_epoch, data, None, True)
    out: list = []
    cf.take(out, 3, st_)
    assert [r.offset for r in out] == [0, 2, 3] and st_.position == 10
    out = []
    cf.take(out, 10, st_)
    assert [r.offset for r in out] == [11] and st_.position == 15 and cf.done


def _fetcher_with(data: bytes, position: int = 0) -> Fetcher:
    subs = state(position)
    # collect() uses neither the network client nor the metadata.
    config = FetchConfig(1, 500, 1 << 20, 1 << 20, 0, True, 100)
    fetcher = Fetcher(None, None, subs, config)  # type: ignore[arg-type]
    fetcher.completed.append(CompletedFetch(TP, subs.assignment[TP].fetch_epoch, data, None,
                                            True))
    fetcher.buffered[TP] = 1
    return fetcher


@pytest.mark.parametrize("enabled", [True, False])
def test_collect_leaves_the_cyclic_gc_as_it_found_it(enabled: bool) -> None:
    good = builder_batch(0, 300)
    bad = bytearray(builder_batch(300, 10))
    bad[-1] ^= 0xFF
    was = gc.isenabled()
    try:
        if not enabled:
            gc.disable()
        fetcher = _fetcher_with(good + bytes(bad))
        records = fetcher.collect(250)
        assert [r.offset for r in records] == list(range(250))
        assert gc.isenabled() is enabled
        with pytest.raises(CorruptRecordError):
            fetcher.collect(500)  # 50 good ones, then the damaged batch
        assert gc.isenabled() is enabled
        assert fetcher.subs.assignment[TP].position == 300
    finally:
        if was:
            gc.enable()

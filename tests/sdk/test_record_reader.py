"""The consumer's decoder returns exactly what storage's reference decoder returns.

Both gears are pinned: records one at a time (any shape) and runs of same-shaped records
(the bulk path), on batches written by storage's `BatchBuilder` and on hand-made record
sections (offset gaps as compaction leaves them). Damage must end the same way as in the
reference decoder: the same records, or CorruptRecordError.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qnode.sdk.record_reader import BatchDecoder, decode_batch
from qnode.sdk.record_writer import encode_headers_section, encode_record
from qnode.sdk.types import Record, TopicPartition
from qnode.storage.batch_builder import BatchBuilder
from qnode.storage.errors import CorruptRecordError
from qnode.storage.record_batch import HEADER_SIZE, read_header
from qnode.storage.records import decode_records

BASE_TS = 1_700_000_000_000

record_st = st.tuples(
    st.one_of(st.none(), st.binary(max_size=200)),
    st.one_of(st.none(), st.binary(max_size=20000)),
    st.lists(st.tuples(st.text(max_size=5), st.one_of(st.none(), st.binary(max_size=5))),
             max_size=2),
    st.integers(min_value=-100_000, max_value=100_000),
)


def as_tuples(records: list[Record]) -> list[tuple]:
    return [(r.offset, r.timestamp, r.key, r.value, tuple(r.headers)) for r in records]


def reference(data: bytes, count: int, base_offset: int, base_ts: int,
              min_offset: int = 0) -> list[tuple]:
    return [(o, ts, k, v, tuple(h)) for (o, ts, k, v, h)
            in decode_records(data, count, base_offset, base_ts) if o >= min_offset]


def same_as_reference(data: bytes, count: int, base_offset: int, base_ts: int,
                      min_offset: int = 0) -> None:
    """decode_batch == the reference, or both raise CorruptRecordError."""
    try:
        want = reference(data, count, base_offset, base_ts, min_offset)
    except CorruptRecordError:
        with pytest.raises(CorruptRecordError):
            decode_batch(data, count, base_offset, base_ts, "t", 3, min_offset)
        return
    got = decode_batch(data, count, base_offset, base_ts, "t", 3, min_offset)
    assert as_tuples(got) == want
    assert all(r.topic == "t" and r.partition == 3 for r in got)


def built(records: list[tuple[bytes | None, bytes | None, list, int]]) -> tuple[bytes, int, int]:
    """(records section, count, base timestamp) of a batch from storage's BatchBuilder."""
    b = BatchBuilder("none", batch_size=1 << 30)
    for key, value, headers, ts in records:
        b.append(key, value, headers or None, ts)
    raw = b.build()
    hdr = read_header(raw)
    return raw[HEADER_SIZE:], hdr.record_count, hdr.base_timestamp


@settings(max_examples=200, deadline=None)
@given(st.lists(record_st, min_size=1, max_size=40),
       st.integers(min_value=0, max_value=45), st.integers(min_value=1, max_value=5))
def test_same_records_as_the_reference(records: list, skip: int, gap: int) -> None:
    base_offset = 1000
    data = b"".join(encode_record(i * gap, tsd, k, v, encode_headers_section(h))
                    for i, (k, v, h, tsd) in enumerate(records))
    same_as_reference(data, len(records), base_offset, BASE_TS, base_offset + skip)


# Runs: a few shapes, each repeated, with timestamp steps of one or two varint bytes.
shape_st = st.tuples(
    st.one_of(st.none(), st.integers(min_value=0, max_value=70)),  # key size
    st.one_of(st.none(), st.integers(min_value=0, max_value=300)),  # value size
    st.booleans(),  # headers
)
segment_st = st.tuples(st.integers(min_value=0, max_value=2), st.integers(1, 120),
                       st.sampled_from([0, 1, 3, 50, 200, 9000]))


@settings(max_examples=150, deadline=None)
@given(st.lists(shape_st, min_size=1, max_size=3), st.lists(segment_st, min_size=1, max_size=6),
       st.integers(min_value=0, max_value=300), st.randoms(use_true_random=False))
def test_runs_of_same_shaped_records_match_builder_batches(
        shapes: list, segments: list, skip: int, rnd) -> None:
    records = []
    ts = BASE_TS
    for shape_i, repeat, ts_step in segments:
        ksize, vsize, with_headers = shapes[shape_i % len(shapes)]
        for _ in range(repeat):
            key = None if ksize is None else rnd.randbytes(ksize)
            value = None if vsize is None else rnd.randbytes(vsize)
            headers = [("h", b"x")] if with_headers else []
            records.append((key, value, headers, ts))
            ts += rnd.randint(0, ts_step)
    data, count, base_ts = built(records)
    same_as_reference(data, count, 500, base_ts, 500 + skip)


@settings(max_examples=100, deadline=None)
@given(st.lists(shape_st, min_size=1, max_size=2), st.lists(segment_st, min_size=1, max_size=4),
       st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=20),
       st.integers(min_value=0, max_value=300), st.booleans(), st.randoms(use_true_random=False))
def test_taking_records_in_pieces_gives_the_whole_batch(
        shapes: list, segments: list, pieces: list, skip: int, append_time: bool, rnd) -> None:
    records = []
    for shape_i, repeat, ts_step in segments:
        ksize, vsize, with_headers = shapes[shape_i % len(shapes)]
        for _ in range(repeat):
            records.append((None if ksize is None else rnd.randbytes(ksize),
                            None if vsize is None else rnd.randbytes(vsize),
                            [("h", b"x")] if with_headers else [],
                            BASE_TS + rnd.randint(0, ts_step)))
    data, count, base_ts = built(records)
    at = 42 if append_time else None
    want = decode_batch(data, count, 7, base_ts, "t", 1, 7 + skip, at)
    assert [r.offset for r in want] == list(range(7 + skip, 7 + count))
    dec = BatchDecoder(data, count, 7, base_ts, "t", 1, 7 + skip, at)
    got: list = []
    for n in pieces * (count // len(pieces) + 1):
        if dec.done:
            break
        before = len(got)
        dec.take(got, n)
        assert len(got) - before == min(n, len(want) - before)
    assert dec.done and got == want
    if at is not None:
        assert {r.timestamp for r in got} <= {at}


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=1, max_value=400), st.integers(min_value=0, max_value=130),
       st.integers(min_value=0, max_value=10**6), st.integers(min_value=0, max_value=255),
       st.integers(min_value=1, max_value=3))
def test_damage_inside_a_run_ends_as_in_the_reference(n: int, vsize: int, where: int,
                                                      byte: int, cut: int) -> None:
    data, count, base_ts = built([(None, b"v" * vsize, [], BASE_TS + i % 40)
                                  for i in range(n)])
    damaged = bytearray(data)
    damaged[where % len(data)] = byte
    same_as_reference(bytes(damaged), count, 0, base_ts)
    same_as_reference(data[:-cut], count, 0, base_ts)
    same_as_reference(data + b"\x00" * cut, count, 0, base_ts)


@pytest.mark.parametrize("step", [0, 1, 70])  # timestamp deltas of one and two varint bytes
@pytest.mark.parametrize("key", [None, b"", b"key-0001"])
def test_large_batch_crosses_every_offset_delta_width(step: int, key: bytes | None) -> None:
    # 9000 records: offset deltas of one, two and three varint bytes.
    n = 9000
    data, count, base_ts = built([(key, b"%08d" % i + b"x" * 92, [], BASE_TS + (i * step) % 8000)
                                  for i in range(n)])
    got = decode_batch(data, count, 10**9, base_ts, "t", 0, 0)
    assert as_tuples(got) == reference(data, count, 10**9, base_ts)
    assert [r.offset for r in got] == list(range(10**9, 10**9 + n))
    assert got[8191].value.startswith(b"00008191") and got[-1].key == key


def test_log_append_time_overrides_timestamps() -> None:
    data = b"".join(encode_record(i, i, None, b"v") for i in range(3))
    got = decode_batch(data, 3, 0, 100, "t", 0, 0, append_time=999)
    assert [r.timestamp for r in got] == [999, 999, 999]
    data, count, base_ts = built([(None, b"v" * 10, [], BASE_TS)] * 50)
    got = decode_batch(data, count, 0, base_ts, "t", 0, 20, append_time=7)
    assert [r.timestamp for r in got] == [7] * 30 and got[0].offset == 20


@pytest.mark.parametrize("cut", [1, 5, 20])
def test_damage_is_a_corrupt_record_error(cut: int) -> None:
    data = b"".join(encode_record(i, 0, None, b"value-%d" % i) for i in range(5))
    with pytest.raises(CorruptRecordError):
        decode_batch(data[:-cut], 5, 0, 0, "t", 0, 0)
    with pytest.raises(CorruptRecordError):
        decode_batch(data + b"\x00", 5, 0, 0, "t", 0, 0)


def test_record_reads_like_the_api_says() -> None:
    r = Record("orders", 2, 41, 1234, b"k", b"v", [("h", b"1")])
    assert (r.topic, r.partition, r.offset, r.timestamp, r.key, r.value) == \
        ("orders", 2, 41, 1234, b"k", b"v")
    assert r.headers == [("h", b"1")] and r.topic_partition == TopicPartition("orders", 2)
    assert Record("t", 0, 1, 2, None, None).headers == ()
    assert Record(topic="t", partition=0, offset=1, timestamp=2, key=None, value=b"x").value == b"x"


def _section(specs: list[tuple[int, int, bytes | None, bytes | None]]) -> bytes:
    """Records (offset delta, timestamp delta, key, value) encoded by hand."""
    return b"".join(encode_record(od, tsd, k, v) for od, tsd, k, v in specs)


@pytest.mark.parametrize("specs", [
    # same length, different key/value split right after the template
    [(0, 0, b"abc", b"v" * 10)] + [(i, 0, None, b"w" * 14) for i in range(1, 12)],
    # same length, a two-byte timestamp delta compensated by a shorter value
    [(0, 0, None, b"v" * 11)] + [(i, 100, None, b"w" * 10) for i in range(1, 12)],
    # same length, an offset gap (compaction) right after the template
    [(0, 0, None, b"v" * 11)] + [(i + 5, 0, None, b"w" * 11) for i in range(1, 12)],
    # same length, a run broken in its middle by each of those
    [(i, 0, None, b"v" * 11) for i in range(8)] + [(8, 100, None, b"w" * 10)]
    + [(i, 0, None, b"v" * 11) for i in range(9, 20)] + [(25, 0, None, b"w" * 11)]
    + [(26, 0, b"k", b"v" * 10)] + [(i, 0, None, b"v" * 11) for i in range(27, 40)],
], ids=["key-split", "timestamp-width", "offset-gap", "mid-run"])
def test_records_of_the_same_length_but_another_layout_end_a_run(specs: list) -> None:
    data = _section(specs)
    want = reference(data, len(specs), 100, BASE_TS)
    assert as_tuples(decode_batch(data, len(specs), 100, BASE_TS, "t", 3, 0)) == want
    assert [o for (o, *_rest) in want] == [100 + od for (od, *_r) in specs]

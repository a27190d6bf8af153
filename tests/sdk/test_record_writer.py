"""The producer's writer makes exactly the batches storage's builder makes and reader reads."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from qnode.sdk.record_writer import (
    ZERO,
    PrefixCache,
    build_batch,
    encode_headers_section,
    encode_record,
    keyless_prefix,
)
from qnode.storage.batch_builder import BatchBuilder
from qnode.storage.batch_reader import read_batches
from qnode.storage.compression import Compression
from qnode.storage.record_batch import validate_batches

headers_st = st.lists(st.tuples(st.text(max_size=8), st.one_of(st.none(), st.binary(max_size=8))),
                      max_size=3)
record_st = st.tuples(
    st.one_of(st.none(), st.binary(max_size=40)),  # key
    st.one_of(st.none(), st.binary(max_size=300)),  # value
    headers_st,
    st.integers(min_value=-5000, max_value=70000),  # timestamp delta from the first record
)


def _write(records: list, base_ts: int) -> tuple[list[bytes], int]:
    """Encode like Producer.send: the keyless fast path where it applies."""
    parts: list[bytes] = []
    max_ts = -1
    cache: PrefixCache = {}
    for od, (key, value, headers, tsd) in enumerate(records):
        ts = base_ts + tsd if od else base_ts
        max_ts = max(max_ts, ts)
        d = ts - base_ts
        if key is None and not headers and value is not None and d >= 0:
            k = (d, od, len(value))
            parts += [cache.get(k) or keyless_prefix(cache, k), value, ZERO]
        else:
            parts.append(encode_record(od, d, key, value, encode_headers_section(headers)))
    return parts, max_ts


@settings(max_examples=150, deadline=None)
@given(st.lists(record_st, min_size=1, max_size=30),
       st.sampled_from([Compression.NONE, Compression.GZIP, Compression.LZ4, Compression.ZSTD]))
def test_round_trip_through_storage_reader(records: list, codec: Compression) -> None:
    base_ts = 1_700_000_000_000
    parts, max_ts = _write(records, base_ts)
    data = build_batch(parts, len(records), base_ts, max_ts, int(codec), 7, 2, 100)
    info = validate_batches(data)  # CRC, counts, codec: the broker's checks
    assert info.record_count == len(records) and info.max_timestamp == max_ts
    hdr = info.first
    assert (hdr.producer_id, hdr.producer_epoch, hdr.base_sequence) == (7, 2, 100)
    assert hdr.compression == int(codec)
    (batch,) = list(read_batches(data))
    got = batch.records()
    assert len(got) == len(records)
    for od, (rec, (key, value, headers, tsd)) in enumerate(zip(got, records, strict=True)):
        assert rec.offset == od
        assert rec.timestamp == (base_ts + tsd if od else base_ts)
        assert rec.key == key and rec.value == value
        assert list(rec.headers) == [(k, v) for k, v in headers]


@settings(deadline=None)
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=50),
       st.lists(st.integers(min_value=0, max_value=300), min_size=50, max_size=50))
def test_keyless_fast_path_writes_the_builders_bytes(values: list[bytes], deltas: list[int]
                                                     ) -> None:
    base_ts = 1_700_000_000_000
    stamps = sorted(base_ts + d for d in deltas[:len(values)])
    stamps[0] = base_ts
    builder = BatchBuilder(batch_size=1 << 30)
    cache: PrefixCache = {}
    parts: list[bytes] = []
    for od, (v, ts) in enumerate(zip(values, stamps, strict=False)):
        builder.append(None, v, None, ts)
        k = (ts - base_ts, od, len(v))
        parts += [cache.get(k) or keyless_prefix(cache, k), v, ZERO]
    assert build_batch(parts, len(values), base_ts, max(stamps)) == builder.build()


def test_prefix_cache_stays_bounded() -> None:
    cache: PrefixCache = {}
    for i in range(70000):
        keyless_prefix(cache, (0, 1, i))
    assert len(cache) <= 1 << 16

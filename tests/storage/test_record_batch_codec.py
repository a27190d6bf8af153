"""BatchBuilder → bytes → validate → lazy decode, for every codec and every record shape."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qnode.storage.batch_builder import BatchBuilder, ControlType, build_control_batch
from qnode.storage.batch_reader import (
    Batch,
    DecodedRecord,
    iter_records,
    parse_control_record,
    read_batches,
)
from qnode.storage.compression import Compression, UnsupportedCompressionError
from qnode.storage.errors import CorruptRecordError, InvalidRecordError
from qnode.storage.record_batch import (
    CRC_OFFSET,
    HEADER_SIZE,
    batch_crc,
    read_header,
    validate_batches,
)
from qnode.storage.records import decode_records

CODECS = ["none", "gzip", "lz4", "zstd"]
TS = 1_700_000_000_000


def roundtrip(builder: BatchBuilder) -> tuple[bytes, list[DecodedRecord]]:
    data = builder.build()
    validate_batches(data)
    return data, Batch(data).records()


@pytest.mark.parametrize("codec", CODECS)
def test_roundtrip_every_field(codec: str) -> None:
    b = BatchBuilder(
        codec, producer_id=2**40, producer_epoch=32767, base_sequence=2**31 - 10,
        transactional=True, base_offset=77, partition_leader_epoch=12,
    )
    recs = [
        (b"k0", b"v0", None, TS),
        (None, b"no key", [], TS - 5000),  # earlier than the first: negative delta
        (b"tomb", None, [("a", b"1"), ("b", None), ("ünï", b"")], TS + 10**12),
        (None, None, None, TS + 1),
        (b"", b"", [("", b"\x00" * 300)], TS),
        (b"k" * 20000, b"v" * 70000, None, TS),  # 3-byte length varints
    ]
    for key, value, headers, ts in recs:
        b.append(key, value, headers, ts)
    data, out = roundtrip(b)
    h = Batch(data).header
    assert h.compression == int(Compression.parse(codec))
    assert (h.base_offset, h.leader_epoch, h.record_count, h.last_offset_delta) == (77, 12, 6, 5)
    assert (h.producer_id, h.producer_epoch, h.base_sequence) == (2**40, 32767, 2**31 - 10)
    assert h.is_transactional and not h.is_control and not h.is_log_append_time
    assert h.base_timestamp == TS and h.max_timestamp == TS + 10**12
    assert h.last_sequence == (2**31 - 10 + 5) & 0x7FFFFFFF
    assert [r.offset for r in out] == list(range(77, 83))
    for r, (key, value, headers, ts) in zip(out, recs, strict=True):
        assert (r.key, r.value, r.timestamp) == (key, value, ts)
        assert r.headers == tuple(headers or ())


@pytest.mark.parametrize("codec", CODECS)
def test_many_records_past_the_varint_tables(codec: str) -> None:
    b = BatchBuilder(codec, batch_size=1 << 30)
    n = 17000  # offset deltas beyond the 2**14 precomputed encodings
    for i in range(n):
        b.append(None, b"%d" % i, timestamp_ms=TS + i * 1000)  # deltas beyond the table too
    data, out = roundtrip(b)
    assert len(out) == n
    assert out[-1] == (n - 1, TS + (n - 1) * 1000, None, b"%d" % (n - 1), ())


def test_uncompressed_estimate_is_exact() -> None:
    b = BatchBuilder()
    for i in range(100):
        b.append(b"k%d" % i, b"x" * i, [("h", b"v")] if i % 3 else None, TS + i)
        assert b.estimated_size == b.uncompressed_size
    assert len(b.build()) == b.estimated_size


@pytest.mark.parametrize("codec", CODECS)
def test_try_append_stops_at_batch_size(codec: str) -> None:
    b = BatchBuilder(codec, batch_size=4096)
    n = 0
    while b.try_append(None, b"y" * 100, None, TS) >= 0:
        n += 1
    assert 30 < n < 40 and b.record_count == n
    data = b.build()
    assert len(data) <= 4096
    assert len(Batch(data).records()) == n


def test_first_record_always_fits_and_later_ones_are_refused() -> None:
    b = BatchBuilder(batch_size=100)
    assert b.has_room_for(None, b"z" * 1000)
    assert b.try_append(None, b"z" * 1000) == 0
    assert not b.has_room_for(None, b"")
    assert b.try_append(None, b"") == -1
    assert b.is_full and b.record_count == 1
    assert b.append(None, b"forced") == 1  # append never refuses


def test_compression_ratio_feedback() -> None:
    b = BatchBuilder("zstd")
    for _ in range(100):
        b.append(None, b"a" * 100)
    b.build()
    assert 0 < b.compression_ratio < 0.2
    b2 = BatchBuilder("zstd", batch_size=16384, estimated_ratio=b.compression_ratio)
    n = 0
    while b2.try_append(None, b"a" * 100) >= 0:
        n += 1
    assert n > 16384 // 100  # the estimate lets a compressed batch hold more than raw size


def test_values_are_snapshotted() -> None:
    b = BatchBuilder()
    ba = bytearray(b"before")
    b.append(memoryview(b"key"), ba)
    ba[:] = b"after!"
    assert Batch(b.build()).records()[0][2:4] == (b"key", b"before")


@pytest.mark.parametrize("bad", ["text", 12, [1, 2]])
def test_non_bytes_rejected(bad: object) -> None:
    b = BatchBuilder()
    with pytest.raises(TypeError):
        b.append(None, bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        b.append(bad, b"v")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        b.append(None, b"v", [(b"bytes-key", b"v")])  # type: ignore[list-item]
    assert b.record_count == 0


def test_headers_as_pairs_or_mapping() -> None:
    b = BatchBuilder()
    b.append(None, b"v", [("dup", b"1"), ("dup", b"2")])  # repeated keys kept, in order
    b.append(None, b"v", {"a": b"x", "b": None})
    b.append(None, b"v", iter([("g", b"")]))  # type: ignore[arg-type]
    out = Batch(b.build()).records()
    assert [r.headers for r in out] == [
        (("dup", b"1"), ("dup", b"2")), (("a", b"x"), ("b", None)), (("g", b""),)
    ]
    with pytest.raises(TypeError, match="pair"):
        b.append(None, b"v", ["not-a-pair"])  # type: ignore[list-item]
    assert b.record_count == 3


def test_empty_batch_refused() -> None:
    with pytest.raises(InvalidRecordError):
        BatchBuilder().build()


def test_snappy_and_unknown_codecs_refused() -> None:
    for codec in ("snappy", 2, "brotli", 7):
        with pytest.raises(UnsupportedCompressionError):
            BatchBuilder(codec)


def test_log_append_time_batch() -> None:
    b = BatchBuilder(log_append_time=True)
    b.append(None, b"a", timestamp_ms=5)
    b.append(None, b"b", timestamp_ms=9)
    data = b.build()
    assert read_header(data).is_log_append_time
    assert [r.timestamp for r in iter_records(data)] == [9, 9]  # maxTimestamp for every record


# -- control batches ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [ControlType.COMMIT, ControlType.ABORT])
def test_control_batch(kind: ControlType) -> None:
    data = build_control_batch(kind, producer_id=55, producer_epoch=3, coordinator_epoch=8,
                               timestamp_ms=TS)
    h = validate_batches(data).first
    assert h.is_control and h.is_transactional and h.record_count == 1
    assert (h.producer_id, h.producer_epoch, h.base_sequence) == (55, 3, -1)
    batch = Batch(data)
    rec = batch.records()[0]
    assert rec.key == struct.pack(">hh", 0, int(kind))
    assert rec.value == struct.pack(">hi", 0, 8)
    assert batch.control_record() == (kind, 8)
    assert list(iter_records(data)) == []  # consumers skip markers
    assert len(list(iter_records(data, include_control=True))) == 1


def test_control_batch_needs_producer() -> None:
    with pytest.raises(InvalidRecordError):
        build_control_batch(ControlType.COMMIT, -1, 0, 0)


def test_control_record_parsing_errors() -> None:
    with pytest.raises(CorruptRecordError):
        parse_control_record(b"\x00", None)
    with pytest.raises(CorruptRecordError):
        parse_control_record(struct.pack(">hh", 0, 9), None)
    with pytest.raises(CorruptRecordError):
        parse_control_record(struct.pack(">hh", 1, 0), None)
    with pytest.raises(ValueError):
        Batch(_batch([b"x"])).control_record()


# -- reading -----------------------------------------------------------------------------------


def _batch(values: list[bytes], base_offset: int = 0, codec: str = "none") -> bytes:
    b = BatchBuilder(codec, base_offset=base_offset)
    for v in values:
        b.append(None, v, timestamp_ms=TS)
    return b.build()


def test_iter_records_min_offset_and_many_batches() -> None:
    data = (_batch([b"a", b"b", b"c"], 0) + _batch([b"d", b"e"], 3, "lz4")
            + build_control_batch(ControlType.COMMIT, 1, 0, 0) + _batch([b"f"], 6))
    assert [r.value for r in iter_records(data)] == [b"a", b"b", b"c", b"d", b"e", b"f"]
    assert [r.offset for r in iter_records(data, min_offset=4)] == [4, 6]
    assert [r.offset for r in iter_records(data, min_offset=7)] == []
    assert [b.base_offset for b in read_batches(data)] == [0, 3, 0, 6]


def test_partial_tail_is_an_error_unless_allowed() -> None:
    data = _batch([b"a"]) + _batch([b"b"], 1)[:-3]
    with pytest.raises(CorruptRecordError):
        list(iter_records(data))
    assert [r.value for r in iter_records(data, allow_partial_tail=True)] == [b"a"]


def test_batch_is_lazy_and_exposes_raw_bytes() -> None:
    data = b"\x00" * 7 + _batch([b"x", b"y"], 40, "zstd")
    batch = Batch(data, 7)
    assert (batch.base_offset, batch.last_offset, batch.next_offset, len(batch)) == (40, 41, 42, 2)
    assert bytes(batch.raw()) == data[7:]
    assert batch._decoded is None  # nothing decoded until asked
    assert [r.value for r in batch] == [b"x", b"y"]


# -- properties --------------------------------------------------------------------------------

keys = st.one_of(st.none(), st.binary(max_size=40))
values = st.one_of(st.none(), st.binary(max_size=300))
headers = st.lists(st.tuples(st.text(max_size=10), st.one_of(st.none(), st.binary(max_size=20))),
                   max_size=3)
records = st.lists(
    st.tuples(keys, values, headers, st.integers(min_value=0, max_value=2**45)),
    min_size=1, max_size=40,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    recs=records,
    codec=st.sampled_from(CODECS),
    pid=st.integers(min_value=-1, max_value=2**63 - 1),
    epoch=st.integers(min_value=-1, max_value=2**15 - 1),
    seq=st.integers(min_value=-1, max_value=2**31 - 1),
    txn=st.booleans(),
    base=st.integers(min_value=0, max_value=2**62),
)
def test_property_roundtrip(recs: list, codec: str, pid: int, epoch: int, seq: int, txn: bool,
                            base: int) -> None:
    b = BatchBuilder(codec, producer_id=pid, producer_epoch=epoch, base_sequence=seq,
                     transactional=txn, base_offset=base)
    for key, value, hdrs, ts in recs:
        b.append(key, value, hdrs, ts)
    data = b.build()
    if pid < 0 and (seq >= 0 or txn):  # sequences and transactions need a producer id
        with pytest.raises(InvalidRecordError, match="no producer id"):
            validate_batches(data)
        info = validate_batches(data, producer_batches=False)
    else:
        info = validate_batches(data)
    h = info.first
    assert (h.record_count, h.producer_id, h.producer_epoch, h.base_sequence) == \
        (len(recs), pid, epoch, seq)
    assert h.is_transactional == txn and h.max_timestamp == max(r[3] for r in recs)
    out = list(iter_records(data))
    assert out == [(base + i, ts, k, v, tuple(hd)) for i, (k, v, hd, ts) in enumerate(recs)]


@settings(max_examples=300, deadline=None)
@given(section=st.binary(max_size=200), count=st.integers(min_value=0, max_value=50))
def test_property_garbage_records_only_raise_corrupt(section: bytes, count: int) -> None:
    """Any records section, whatever its bytes, decodes or raises CorruptRecordError."""
    try:
        out = decode_records(section, count, 0, 0)
    except CorruptRecordError:
        return
    assert len(out) == count


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    recs=records,
    codec=st.sampled_from(CODECS),
    data=st.data(),
)
def test_property_resealed_damage_only_raises_corrupt(recs: list, codec: str,
                                                      data: st.DataObject) -> None:
    """Damage behind a recomputed CRC (a buggy producer): decoding never raises anything else."""
    b = BatchBuilder(codec)
    for key, value, hdrs, ts in recs:
        b.append(key, value, hdrs, ts)
    buf = bytearray(b.build())
    pos = data.draw(st.integers(min_value=HEADER_SIZE - 4, max_value=len(buf) - 1))
    buf[pos] ^= data.draw(st.integers(min_value=1, max_value=255))
    struct.pack_into(">I", buf, CRC_OFFSET, batch_crc(buf, 0, len(buf)))
    try:
        list(iter_records(bytes(buf)))
    except CorruptRecordError:
        pass


def test_codec_benchmark_script_runs() -> None:
    """The benchmark prints a row per codec (figures are read by people, never asserted)."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "qnode.loadtest.bench_codec", "--records", "3000", "--repeat", "1",
         "--key-size", "8"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    rows = [line.split()[0] for line in out.splitlines()[2:]]
    assert sorted(rows) == sorted(CODECS)

"""RecordBatch v2 layout and the broker-side checks: validate_batches, iter_batches, stamp.

The reference batch below is written out field by field from Kafka's documented layout
(DefaultRecordBatch / DefaultRecord), not produced by our encoder, and its CRC-32C is checked
against a bit-by-bit implementation of the Castagnoli polynomial.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from qnode.storage.batch_builder import BatchBuilder
from qnode.storage.batch_reader import Batch, iter_records
from qnode.storage.compression import UnsupportedCompressionError
from qnode.storage.errors import CorruptRecordError, InvalidRecordError, RecordTooLargeError
from qnode.storage.record_batch import (
    ATTRIBUTES_OFFSET,
    CRC_OFFSET,
    HEADER_SIZE,
    batch_crc,
    iter_batches,
    read_header,
    stamp,
    stamp_log_append_time,
    valid_prefix,
    validate_batches,
)

BASE_TS = 1_700_000_000_000  # 0x0000018bcfe56800

# Two records at base offset 5, leader epoch 3, producer 1234 epoch 2, base sequence 10.
CRC_COVERED = bytes.fromhex(
    "0000"  # attributes: no compression, CreateTime, not transactional, not control
    "00000001"  # lastOffsetDelta 1
    "0000018bcfe56800"  # baseTimestamp
    "0000018bcfe56805"  # maxTimestamp = base + 5
    "00000000000004d2"  # producerId 1234
    "0002"  # producerEpoch 2
    "0000000a"  # baseSequence 10
    "00000002"  # records count 2
    # record 0: length 10, attrs 0, tsDelta 0, offsetDelta 0, key "k1", value "v1", 0 headers
    "14" "00" "00" "00" "04" "6b31" "04" "7631" "00"
    # record 1: length 15, attrs 0, tsDelta 5, offsetDelta 1, key null, value "hello",
    #           1 header: key "h", value "x"
    "1e" "00" "0a" "02" "01" "0a" "68656c6c6f" "02" "02" "68" "02" "78"
)
KAFKA_BATCH = (
    bytes.fromhex(
        "0000000000000005"  # baseOffset 5
        "0000004c"  # batchLength 76 = 88 - 12
        "00000003"  # partitionLeaderEpoch 3
        "02"  # magic 2
        "dea8da58"  # CRC-32C of attributes..end
    )
    + CRC_COVERED
)


def crc32c_bitwise(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def reseal(buf: bytearray, pos: int = 0) -> bytearray:
    """Recompute the CRC after a deliberate header edit (to test the checks behind the CRC)."""
    hdr = read_header(buf, pos)
    struct.pack_into(">I", buf, pos + CRC_OFFSET, batch_crc(buf, pos, hdr.size))
    return buf


def make_batch(n: int = 3, codec: str = "none", **kw: object) -> bytes:
    b = BatchBuilder(codec, **kw)  # type: ignore[arg-type]
    for i in range(n):
        b.append(b"key-%d" % i, b"value-%d" % i, timestamp_ms=BASE_TS + i)
    return b.build()


# -- the reference batch ---------------------------------------------------------------------


def test_reference_batch_crc_is_castagnoli() -> None:
    assert len(KAFKA_BATCH) == 88 and len(CRC_COVERED) == 67
    assert crc32c_bitwise(CRC_COVERED) == 0xDEA8DA58
    assert batch_crc(KAFKA_BATCH, 0, 88) == 0xDEA8DA58


def test_reference_batch_header_fields() -> None:
    info = validate_batches(KAFKA_BATCH)
    assert info.size == 88 and len(info.batches) == 1
    h = info.first
    assert (h.position, h.size, h.base_offset, h.leader_epoch, h.magic) == (0, 88, 5, 3, 2)
    assert (h.attributes, h.last_offset_delta, h.record_count) == (0, 1, 2)
    assert (h.base_timestamp, h.max_timestamp) == (BASE_TS, BASE_TS + 5)
    assert (h.producer_id, h.producer_epoch, h.base_sequence) == (1234, 2, 10)
    assert (h.last_offset, h.next_offset, h.last_sequence) == (6, 7, 11)
    assert not h.is_control and not h.is_transactional and h.compression == 0
    assert (info.record_count, info.offset_count, info.max_timestamp) == (2, 2, BASE_TS + 5)


def test_reference_batch_decodes() -> None:
    recs = Batch(KAFKA_BATCH).records()
    assert [tuple(r) for r in recs] == [
        (5, BASE_TS, b"k1", b"v1", ()),
        (6, BASE_TS + 5, None, b"hello", (("h", b"x"),)),
    ]


def test_builder_reproduces_reference_bytes() -> None:
    b = BatchBuilder(
        producer_id=1234, producer_epoch=2, base_sequence=10, base_offset=5,
        partition_leader_epoch=3,
    )
    b.append(b"k1", b"v1", timestamp_ms=BASE_TS)
    b.append(None, b"hello", headers=[("h", b"x")], timestamp_ms=BASE_TS + 5)
    assert b.build() == KAFKA_BATCH


# -- validate_batches --------------------------------------------------------------------------


def test_several_batches() -> None:
    a = make_batch(3)
    b = make_batch(1)
    c = make_batch(4, "lz4")
    info = validate_batches(a + b + c)
    assert [h.position for h in info.batches] == [0, len(a), len(a) + len(b)]
    assert (info.record_count, info.offset_count, info.size) == (8, 8, len(a + b + c))
    assert info.max_timestamp == BASE_TS + 3 and info.max_timestamp_batch == 2
    assert [h.record_count for h in iter_batches(a + b + c)] == [3, 1, 4]


def test_memoryview_input() -> None:
    data = bytearray(make_batch(2) * 2)
    info = validate_batches(memoryview(data))
    assert info.record_count == 4


def test_empty_data_rejected() -> None:
    with pytest.raises(InvalidRecordError):
        validate_batches(b"")


def test_empty_batch_rejected_for_producers_allowed_after_compaction() -> None:
    buf = bytearray(make_batch(1))
    # drop the record: count 0, records section empty (what compaction may leave)
    del buf[HEADER_SIZE:]
    struct.pack_into(">i", buf, 8, HEADER_SIZE - 12)
    struct.pack_into(">i", buf, 57, 0)
    struct.pack_into(">i", buf, 23, 0)
    reseal(buf)
    with pytest.raises(InvalidRecordError, match="no records"):
        validate_batches(buf)
    assert validate_batches(buf, producer_batches=False).record_count == 0


def test_last_offset_delta_must_match_count() -> None:
    buf = bytearray(make_batch(3))
    struct.pack_into(">i", buf, 23, 5)  # lastOffsetDelta 5 with 3 records
    reseal(buf)
    with pytest.raises(InvalidRecordError, match="lastOffsetDelta"):
        validate_batches(buf)
    # a compacted batch keeps a larger lastOffsetDelta: fine outside produce
    info = validate_batches(buf, producer_batches=False)
    assert info.offset_count == 6 and info.record_count == 3
    struct.pack_into(">i", buf, 23, 1)  # below count - 1: never valid
    reseal(buf)
    with pytest.raises(InvalidRecordError):
        validate_batches(buf, producer_batches=False)


def test_count_larger_than_the_bytes_is_corrupt() -> None:
    buf = bytearray(make_batch(2))
    struct.pack_into(">i", buf, 57, 1000)
    struct.pack_into(">i", buf, 23, 999)
    reseal(buf)
    with pytest.raises(CorruptRecordError, match="claims 1000 records"):
        validate_batches(buf)


def test_bad_crc() -> None:
    buf = bytearray(make_batch(3))
    buf[-1] ^= 0x01
    with pytest.raises(CorruptRecordError, match="CRC-32C"):
        validate_batches(buf)


def test_wrong_magic() -> None:
    for magic in (0, 1, 3, 0xFF):
        buf = bytearray(make_batch(1))
        buf[16] = magic
        with pytest.raises(CorruptRecordError, match="magic"):
            validate_batches(buf)


@pytest.mark.parametrize("cut", [1, 10, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 5])
def test_truncated(cut: int) -> None:
    data = make_batch(3)
    with pytest.raises(CorruptRecordError, match="truncated"):
        validate_batches(data[:cut] if cut < HEADER_SIZE else data[:-cut + HEADER_SIZE - 1])
    with pytest.raises(CorruptRecordError, match="truncated"):
        validate_batches(data + data[:cut])


@pytest.mark.parametrize("length", [-1, -(2**31), 0, HEADER_SIZE - 13])
def test_impossible_length(length: int) -> None:
    buf = bytearray(make_batch(1))
    struct.pack_into(">i", buf, 8, length)
    with pytest.raises(CorruptRecordError):
        validate_batches(buf)


def test_batch_over_max_size() -> None:
    data = make_batch(50)
    with pytest.raises(RecordTooLargeError, match=str(len(data))):
        validate_batches(data, max_batch_bytes=len(data) - 1)
    assert validate_batches(data, max_batch_bytes=len(data)).record_count == 50


@pytest.mark.parametrize("codec", [2, 5, 6, 7])
def test_unsupported_codec(codec: int) -> None:
    buf = bytearray(make_batch(1))
    struct.pack_into(">h", buf, ATTRIBUTES_OFFSET, codec)
    reseal(buf)
    with pytest.raises(UnsupportedCompressionError) as err:
        validate_batches(buf)
    assert isinstance(err.value, InvalidRecordError)
    if codec == 2:
        assert "snappy" in str(err.value)


@pytest.mark.parametrize("codec", ["none", "gzip", "lz4", "zstd"])
def test_every_byte_flip_in_the_checked_range_is_corrupt(codec: str) -> None:
    """Flip each byte from batchLength to the end: validation and decoding say CorruptRecordError.

    baseOffset (0-7) and partitionLeaderEpoch (12-15) are outside Kafka's CRC by design (the
    broker rewrites them); a flip there yields a valid batch at another offset, checked below.
    """
    data = make_batch(4, codec, producer_id=9, producer_epoch=1, base_sequence=0)
    for pos in [*range(8, 12), *range(16, len(data))]:
        for mask in (0x01, 0x80, 0xFF):
            buf = bytearray(data)
            buf[pos] ^= mask
            with pytest.raises(CorruptRecordError):
                validate_batches(buf)
            with pytest.raises(CorruptRecordError):
                list(iter_records(bytes(buf)))
    for pos in [*range(0, 8), *range(12, 16)]:
        buf = bytearray(data)
        buf[pos] ^= 0x01
        assert validate_batches(buf).record_count == 4


# -- stamp -------------------------------------------------------------------------------------


def test_stamp_keeps_crc_valid() -> None:
    data = make_batch(3) + make_batch(2, "zstd")
    buf = bytearray(data)
    for i, h in enumerate(iter_batches(buf)):
        stamp(buf, h.position, 1000 + 10 * i, 7)
    assert bytes(buf[17:8 + 12]) == data[17:8 + 12]  # CRC untouched
    info = validate_batches(buf)
    assert [(h.base_offset, h.leader_epoch) for h in info.batches] == [(1000, 7), (1010, 7)]
    assert [r.offset for r in iter_records(bytes(buf))] == [1000, 1001, 1002, 1010, 1011]


def test_stamp_through_memoryview_of_a_larger_buffer() -> None:
    data = make_batch(2)
    buf = bytearray(b"\xaa" * 10 + data)
    mv = memoryview(buf)[10:]
    stamp(mv, 0, 2**40, 2**31 - 1)
    h = validate_batches(mv).first
    assert (h.base_offset, h.leader_epoch) == (2**40, 2**31 - 1)
    assert buf[:10] == b"\xaa" * 10


def test_stamp_log_append_time() -> None:
    buf = bytearray(make_batch(3, "lz4"))
    h = read_header(buf)
    stamp_log_append_time(buf, 0, h.size, BASE_TS + 99_000)
    h2 = validate_batches(buf).first
    assert h2.is_log_append_time and h2.max_timestamp == BASE_TS + 99_000
    assert {r.timestamp for r in iter_records(bytes(buf))} == {BASE_TS + 99_000}


# -- walking -----------------------------------------------------------------------------------


def test_iter_batches_partial_tail() -> None:
    a, b = make_batch(2), make_batch(3)
    for cut in (1, 11, HEADER_SIZE, len(b) - 1):
        data = a + b[:cut]
        assert [h.position for h in iter_batches(data, allow_partial_tail=True)] == [0]
        with pytest.raises(CorruptRecordError):
            list(iter_batches(data))
    assert [h.position for h in iter_batches(a + b, start=len(a))] == [len(a)]


def test_valid_prefix_stops_at_damage() -> None:
    a, b, c = make_batch(2), make_batch(3), make_batch(1)
    end, good = valid_prefix(a + b + c)
    assert end == len(a + b + c) and len(good) == 3
    assert valid_prefix(a + b + c[:-1])[0] == len(a + b)  # torn tail
    assert valid_prefix(a + b + bytes(4096))[0] == len(a + b)  # preallocated zeros
    bad = bytearray(a + b + c)
    bad[len(a) + 30] ^= 0x10  # CRC failure in the middle batch
    end, good = valid_prefix(bad)
    assert end == len(a) and [h.position for h in good] == [0]
    assert valid_prefix(a + b, max_batch_bytes=len(a))[0] == len(a)
    assert valid_prefix(b"") == (0, [])


def test_control_batches_refused_from_clients() -> None:
    from qnode.storage.batch_builder import ControlType, build_control_batch

    marker = build_control_batch(ControlType.ABORT, 3, 0, 1)
    assert validate_batches(marker).first.is_control  # the coordinator's append
    with pytest.raises(InvalidRecordError, match="control batch"):
        validate_batches(make_batch(1) + marker, allow_control=False)


@pytest.mark.parametrize(
    "kw", [{"transactional": True}, {"base_sequence": 0}, {"control": True}]
)
def test_producer_state_needs_a_producer_id(kw: dict[str, object]) -> None:
    data = make_batch(2, **kw)
    with pytest.raises(InvalidRecordError, match="no producer id"):
        validate_batches(data)
    assert validate_batches(data, producer_batches=False).record_count == 2


def test_validate_and_stamp_in_a_mapped_file(tmp_path: Path) -> None:
    """The broker's path on a real segment file: walk, check and stamp through an mmap."""
    import mmap

    data = make_batch(3) + make_batch(2, "gzip") + make_batch(5, "zstd")
    path = tmp_path / "00000000000000000000.log"
    path.write_bytes(data + bytes(1000))  # preallocated tail, as a segment may have
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
        mv = memoryview(mm)
        end, headers = valid_prefix(mv)
        assert end == len(data)
        info = validate_batches(mv[:end])
        offset = 100
        for h in info.batches:
            stamp(mv, h.position, offset, 4)
            offset += h.offset_count
        mm.flush()
        mv.release()
    reread = path.read_bytes()[: len(data)]
    assert [r.offset for r in iter_records(reread)] == list(range(100, 110))
    assert {h.leader_epoch for h in iter_batches(reread)} == {4}

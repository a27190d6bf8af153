"""Batch surgery of the cleaner: kept records are unchanged, header fields preserved."""

from __future__ import annotations

import pytest

from qnode.storage.batch_builder import BatchBuilder
from qnode.storage.batch_filter import empty_batch, rebuild_batch, records_section, walk_records
from qnode.storage.batch_reader import Batch
from qnode.storage.errors import CorruptRecordError
from qnode.storage.record_batch import iter_batches, validate_batches


def build(codec: str, n: int = 6) -> bytes:
    b = BatchBuilder(codec, producer_id=42, producer_epoch=3, base_sequence=100,
                     base_offset=1000, partition_leader_epoch=7)
    for i in range(n):
        key = None if i == 4 else b"k%d" % i
        value = None if i == 2 else b"v%d" % i * (i + 1)
        b.append(key, value, headers=[("h", b"%d" % i)], timestamp_ms=5000 + 3 * i)
    return b.build()


@pytest.mark.parametrize("codec", ["none", "gzip", "lz4", "zstd"])
def test_rebuild_keeps_chosen_records_and_header_fields(codec):
    buf = build(codec)
    hdr = next(iter_batches(buf))
    data = records_section(buf, hdr)
    raw = walk_records(data, hdr.record_count)
    assert [r[2] for r in raw] == list(range(6))
    assert [r[3] for r in raw] == [b"k0", b"k1", b"k2", b"k3", None, b"k5"]
    assert [r[4] for r in raw] == [False, False, True, False, False, False]
    keep = [raw[1], raw[2], raw[5]]
    out = rebuild_batch(hdr, data, keep)
    info = validate_batches(out, producer_batches=False)
    new = info.first
    for field in ("base_offset", "last_offset_delta", "leader_epoch", "base_timestamp",
                  "max_timestamp", "producer_id", "producer_epoch", "base_sequence",
                  "attributes"):
        assert getattr(new, field) == getattr(hdr, field), field
    assert new.record_count == 3
    before = {r.offset: r for r in Batch(buf).records()}
    after = Batch(out).records()
    assert [r.offset for r in after] == [1001, 1002, 1005]
    assert after == [before[o] for o in (1001, 1002, 1005)]


def test_empty_batch_spans_same_offsets_without_records():
    buf = build("lz4")
    hdr = next(iter_batches(buf))
    out = empty_batch(hdr)
    new = validate_batches(out, producer_batches=False).first
    assert (new.base_offset, new.last_offset, new.record_count) == (1000, 1005, 0)
    assert (new.producer_id, new.base_sequence, new.compression) == (42, 100, 0)
    assert Batch(out).records() == []
    assert rebuild_batch(hdr, records_section(buf, hdr), []) == out


def test_walk_records_rejects_malformed_data():
    buf = build("none")
    hdr = next(iter_batches(buf))
    data = records_section(buf, hdr)
    with pytest.raises(CorruptRecordError):
        walk_records(data[:-3], hdr.record_count)
    with pytest.raises(CorruptRecordError):
        walk_records(data + b"\x00", hdr.record_count)
    with pytest.raises(CorruptRecordError):
        walk_records(b"\x7f", 1)


def test_walk_handles_long_varints_and_negative_timestamp_deltas():
    b = BatchBuilder(base_offset=50)
    for i in range(100):  # offset deltas past one varint byte; lengths of 1, 2 and 3 bytes
        key = None if i % 10 == 3 else b"K" * (i * 3)
        value = None if i % 7 == 1 else b"V" * (i * 250)
        b.append(key, value, timestamp_ms=100_000 - i * 1000)
    buf = b.build()
    hdr = next(iter_batches(buf))
    data = records_section(buf, hdr)
    raw = walk_records(data, hdr.record_count)
    decoded = Batch(buf).records()
    assert [r[2] for r in raw] == list(range(100))
    assert [r[3] for r in raw] == [d.key for d in decoded]
    assert [r[4] for r in raw] == [d.value is None for d in decoded]
    keep = raw[::9]
    assert Batch(rebuild_batch(hdr, data, keep)).records() == decoded[::9]

"""Bad batches offered to the log: each is refused with a clear error and changes nothing."""

from __future__ import annotations

import struct

import pytest

from qnode.storage import (
    CorruptRecordError,
    InvalidRecordError,
    Log,
    LogConfig,
    RecordTooLargeError,
)
from qnode.storage.batch_builder import BatchBuilder
from qnode.storage.batch_reader import iter_records


def batch(n: int = 5, base_offset: int = 0, size: int = 50) -> bytes:
    b = BatchBuilder(base_offset=base_offset)
    for i in range(n):
        b.append(b"k", bytes([i]) * size, timestamp_ms=1000)
    return b.build()


def flipped(data: bytes, pos: int) -> bytes:
    return data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1 :]


@pytest.fixture
def log(tmp_path):
    cfg = LogConfig.from_topic_config({"max.message.bytes": "2000", "segment.bytes": "4000"})
    lg = Log.open(tmp_path / "t-0", cfg)
    for _ in range(3):
        lg.append(batch(), 0)
    yield lg
    lg.close()


def _unchanged(log: Log, leo: int, size: int) -> None:
    assert log.log_end_offset == leo and log.size_bytes == size
    data = b"".join(bytes(s) for s in log.read(0, 1 << 20).slices)
    assert [r.offset for r in iter_records(data)] == list(range(leo))
    assert log.append(batch(), 0).base_offset == leo  # still appendable


@pytest.mark.parametrize(
    "bad, error, words",
    [
        (flipped(batch(), 80), CorruptRecordError, "CRC"),
        (batch()[:-7], CorruptRecordError, "truncated"),
        (batch()[:40], CorruptRecordError, "truncated"),
        (batch()[:16] + b"\x01" + batch()[17:], CorruptRecordError, "magic"),
        (batch() + flipped(batch(), 100), CorruptRecordError, "CRC"),  # 2nd of two is bad
        (batch(30, size=100), RecordTooLargeError, "over the limit"),
        (b"", InvalidRecordError, "no record"),
        (struct.pack(">qiib", 0, -5, 0, 2) + bytes(60), CorruptRecordError, "length"),
    ],
    ids=[
        "crc",
        "truncated-records",
        "truncated-header",
        "magic",
        "second-batch-crc",
        "too-large",
        "empty",
        "negative-length",
    ],
)
def test_leader_append_refuses(log, bad, error, words):
    leo, size = log.log_end_offset, log.size_bytes
    with pytest.raises(error, match=words):
        log.append(bad, 0)
    _unchanged(log, leo, size)


def test_follower_offsets_going_backwards(log):
    leo, size = log.log_end_offset, log.size_bytes
    with pytest.raises(InvalidRecordError, match="below the log end offset"):
        log.append(batch(base_offset=leo - 1), 0, assign_offsets=False)
    # within one request: the second batch overlaps the first
    with pytest.raises(InvalidRecordError):
        log.append(batch(base_offset=leo) + batch(base_offset=leo + 2), 0, assign_offsets=False)
    _unchanged(log, leo, size)

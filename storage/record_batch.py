"""Kafka RecordBatch v2 (magic 2): header layout and the broker-side checks.

The broker never unpacks records: it walks batch headers (`iter_batches`), checks length,
magic and CRC-32C (`validate_batches`), and writes the base offset and leader epoch in place
(`stamp`). Those two fields sit before the CRC-covered range, so stamping never invalidates
a batch. The producer's builder and the consumer's lazy reader are further down.

Header, big-endian, 61 bytes (Kafka's DefaultRecordBatch):

    0  baseOffset int64          27 baseTimestamp int64
    8  batchLength int32         35 maxTimestamp int64
    12 partitionLeaderEpoch i32  43 producerId int64
    16 magic int8                51 producerEpoch int16
    17 crc uint32                53 baseSequence int32
    21 attributes int16          57 records count int32
    23 lastOffsetDelta int32     61 records...

batchLength counts the bytes after itself (total size - 12). The CRC covers attributes to
the end of the batch.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

from qnode.storage.checksum import crc32c
from qnode.storage.compression import check_supported
from qnode.storage.errors import CorruptRecordError, InvalidRecordError, RecordTooLargeError

MAGIC = 2
HEADER = struct.Struct(">qiibIhiqqqhii")
HEADER_SIZE = HEADER.size  # 61
assert HEADER_SIZE == 61

BASE_OFFSET_OFFSET = 0
LENGTH_OFFSET = 8
LEADER_EPOCH_OFFSET = 12
MAGIC_OFFSET = 16
CRC_OFFSET = 17
ATTRIBUTES_OFFSET = 21
LAST_OFFSET_DELTA_OFFSET = 23
BASE_TIMESTAMP_OFFSET = 27
MAX_TIMESTAMP_OFFSET = 35
PRODUCER_ID_OFFSET = 43
PRODUCER_EPOCH_OFFSET = 51
BASE_SEQUENCE_OFFSET = 53
RECORDS_COUNT_OFFSET = 57
RECORDS_OFFSET = 61
LOG_OVERHEAD = 12  # baseOffset + batchLength: the bytes batchLength does not count

# attributes bits
COMPRESSION_MASK = 0x07
TIMESTAMP_TYPE_MASK = 0x08  # 0 CreateTime, 1 LogAppendTime
TRANSACTIONAL_MASK = 0x10
CONTROL_MASK = 0x20
DELETE_HORIZON_MASK = 0x40  # KIP-534: baseTimestamp is the delete horizon (set by the cleaner)

NO_PRODUCER_ID = -1
NO_PRODUCER_EPOCH = -1
NO_SEQUENCE = -1
NO_PARTITION_LEADER_EPOCH = -1
NO_TIMESTAMP = -1

DEFAULT_MAX_BATCH_BYTES = 1048588  # Kafka's max.message.bytes default

_unpack_header = HEADER.unpack_from
_unpack_i = struct.Struct(">i").unpack_from
_pack_q = struct.Struct(">q").pack_into
_pack_i = struct.Struct(">i").pack_into
_pack_I = struct.Struct(">I").pack_into
_pack_h = struct.Struct(">h").pack_into
_unpack_h = struct.Struct(">h").unpack_from


class BatchHeader(NamedTuple):
    """The header fields of one batch, plus where it sits in the buffer it came from.

    A named tuple rather than a dataclass: the broker makes one per batch it appends, reads or
    recovers, and a tuple is built several times faster.
    """

    position: int
    size: int  # whole batch, header included (batchLength + 12)
    base_offset: int
    leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.last_offset_delta + 1

    @property
    def offset_count(self) -> int:
        """Offsets the batch spans (may exceed record_count after compaction)."""
        return self.last_offset_delta + 1

    @property
    def compression(self) -> int:
        return self.attributes & COMPRESSION_MASK

    @property
    def is_log_append_time(self) -> bool:
        return bool(self.attributes & TIMESTAMP_TYPE_MASK)

    @property
    def is_transactional(self) -> bool:
        return bool(self.attributes & TRANSACTIONAL_MASK)

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & CONTROL_MASK)

    @property
    def has_producer_id(self) -> bool:
        return self.producer_id >= 0

    @property
    def last_sequence(self) -> int:
        """Sequence of the last record; wraps at 2**31 as Kafka's does. -1 without sequences."""
        if self.base_sequence < 0:
            return NO_SEQUENCE
        return (self.base_sequence + self.last_offset_delta) & 0x7FFFFFFF

    @property
    def end(self) -> int:
        """Position just past this batch in its buffer."""
        return self.position + self.size


_new_header = tuple.__new__


class BatchesInfo(NamedTuple):
    """What `validate_batches` learned about a buffer of whole batches. A named tuple: the
    append path builds one per call for the log's hooks."""

    batches: list[BatchHeader]
    size: int = 0  # bytes walked (the whole buffer)
    record_count: int = 0  # sum of records counts
    offset_count: int = 0  # sum of lastOffsetDelta + 1: offsets the buffer needs
    max_timestamp: int = NO_TIMESTAMP
    max_timestamp_batch: int = -1  # index in `batches` of the batch holding max_timestamp

    @property
    def first(self) -> BatchHeader:
        return self.batches[0]

    @property
    def last(self) -> BatchHeader:
        return self.batches[-1]


def read_header(buf: bytes | bytearray | memoryview, pos: int = 0) -> BatchHeader:
    """Parse the header at `pos` after checking it fits, its length and magic (no CRC)."""
    avail = len(buf) - pos
    if avail < HEADER_SIZE:
        raise CorruptRecordError(
            f"truncated batch at position {pos}: {avail} bytes, a header needs {HEADER_SIZE}"
        )
    h = _unpack_header(buf, pos)
    size = h[1] + LOG_OVERHEAD
    if h[3] != MAGIC:
        raise CorruptRecordError(f"batch at position {pos} has magic {h[3]}, expected {MAGIC}")
    if size < HEADER_SIZE:
        raise CorruptRecordError(f"batch at position {pos} has impossible length {h[1]}")
    if size > avail:
        raise CorruptRecordError(
            f"truncated batch at position {pos}: length says {size} bytes, {avail} present"
        )
    return _new_header(BatchHeader, (pos, size, h[0], *h[2:]))


def iter_batches(
    buf: bytes | bytearray | memoryview, start: int = 0, *, allow_partial_tail: bool = False
) -> Iterator[BatchHeader]:
    """Walk the headers of consecutive batches from `start`; no CRC, no record decoding.

    A bad length or magic raises CorruptRecordError. An incomplete last batch raises too,
    unless `allow_partial_tail` (reading a segment another process is appending to, or a
    fetch cut at a size limit), in which case the walk stops before it.
    """
    n = len(buf)
    pos = start
    while pos < n:
        if allow_partial_tail:
            if n - pos < HEADER_SIZE:
                return
            length = _unpack_i(buf, pos + LENGTH_OFFSET)[0]
            if length >= 0 and pos + length + LOG_OVERHEAD > n:
                return
        hdr = read_header(buf, pos)
        yield hdr
        pos += hdr.size


def batch_crc(buf: bytes | bytearray | memoryview, pos: int, size: int) -> int:
    """CRC-32C of attributes..end of the batch at `pos` (what the crc field must hold)."""
    mv = buf if isinstance(buf, memoryview) else memoryview(buf)
    return crc32c(mv[pos + ATTRIBUTES_OFFSET : pos + size])


def check_crc(buf: bytes | bytearray | memoryview, hdr: BatchHeader) -> None:
    """Raise CorruptRecordError unless the batch's stored CRC matches its bytes."""
    actual = batch_crc(buf, hdr.position, hdr.size)
    if actual != hdr.crc:
        raise CorruptRecordError(
            f"batch at position {hdr.position} (base offset {hdr.base_offset}) fails its "
            f"CRC-32C check: stored {hdr.crc:#010x}, computed {actual:#010x}"
        )


def validate_batches(
    buf: bytes | bytearray | memoryview,
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    *,
    producer_batches: bool = True,
    allow_control: bool = True,
) -> BatchesInfo:
    """Check a buffer of whole batches: lengths, magic, CRC-32C, counts; no record decoding.

    `producer_batches` (a produce request) demands at least one record and
    lastOffsetDelta == count - 1; otherwise (replication, recovery of compacted segments)
    lastOffsetDelta >= count - 1 and empty batches are allowed, as compaction leaves them.
    Raises CorruptRecordError (damage), InvalidRecordError (well-formed but not acceptable),
    RecordTooLargeError (a batch over `max_batch_bytes`). A client's produce passes
    `allow_control=False`: only the transaction coordinator writes COMMIT/ABORT markers.
    """
    mv = buf if isinstance(buf, memoryview) else memoryview(buf)
    n = len(mv)
    if n == 0:
        raise InvalidRecordError("no record batches in the data")
    batches: list[BatchHeader] = []
    record_count = 0
    offset_count = 0
    max_ts = NO_TIMESTAMP
    max_ts_batch = -1
    pos = 0
    while pos < n:
        hdr = read_header(mv, pos)
        if hdr.size > max_batch_bytes:
            raise RecordTooLargeError(
                f"batch at position {pos} is {hdr.size} bytes, over the limit of {max_batch_bytes}"
            )
        if crc32c(mv[pos + ATTRIBUTES_OFFSET : pos + hdr.size]) != hdr.crc:
            check_crc(mv, hdr)  # raises with the full message
        _check_counts(hdr, producer_batches)
        if not allow_control:
            check_client_batch(hdr)
        codec = hdr.attributes & COMPRESSION_MASK
        if codec not in _READABLE_CODECS:
            check_supported(codec)  # raises UnsupportedCompressionError with a clear message
        batches.append(hdr)
        record_count += hdr.record_count
        offset_count += hdr.last_offset_delta + 1
        if hdr.max_timestamp > max_ts:
            max_ts = hdr.max_timestamp
            max_ts_batch = len(batches) - 1
        pos += hdr.size
    return BatchesInfo(batches, n, record_count, offset_count, max_ts, max_ts_batch)


def check_client_batch(hdr: BatchHeader) -> None:
    """Refuse what a client may not write: COMMIT/ABORT markers are the transaction
    coordinator's alone (InvalidRecordError, INVALID_RECORD on the wire)."""
    if hdr.attributes & CONTROL_MASK:
        raise InvalidRecordError(
            f"batch at position {hdr.position} is a control batch: clients may not write them"
        )


_READABLE_CODECS = frozenset({0, 1, 3, 4})
_MIN_RECORD_SIZE = 7  # length, attributes, ts delta, offset delta, key len, value len, headers


def _check_counts(hdr: BatchHeader, producer_batches: bool) -> None:
    count = hdr.record_count
    delta = hdr.last_offset_delta
    if count < 0 or delta < 0:
        raise CorruptRecordError(
            f"batch at position {hdr.position} has negative records count {count} or "
            f"lastOffsetDelta {delta}"
        )
    if not hdr.attributes & COMPRESSION_MASK and count * _MIN_RECORD_SIZE > hdr.size - HEADER_SIZE:
        raise CorruptRecordError(
            f"batch at position {hdr.position} claims {count} records in "
            f"{hdr.size - HEADER_SIZE} bytes"
        )
    if producer_batches:
        if count == 0:
            raise InvalidRecordError(f"batch at position {hdr.position} holds no records")
        if delta != count - 1:
            raise InvalidRecordError(
                f"batch at position {hdr.position} has lastOffsetDelta {delta} but {count} "
                f"records (expected {count - 1})"
            )
        if hdr.producer_id < 0 and (
            hdr.attributes & (TRANSACTIONAL_MASK | CONTROL_MASK) or hdr.base_sequence >= 0
        ):
            raise InvalidRecordError(
                f"batch at position {hdr.position} is transactional, control or sequenced "
                f"but has no producer id"
            )
    elif count > 0 and delta < count - 1:
        raise InvalidRecordError(
            f"batch at position {hdr.position} has lastOffsetDelta {delta} below records "
            f"count {count}"
        )


def stamp(
    buf: bytearray | memoryview, pos: int, base_offset: int, leader_epoch: int
) -> None:
    """Write baseOffset and partitionLeaderEpoch of the batch at `pos` in place.

    Both fields precede the CRC-covered range, so the batch stays valid.
    """
    _pack_q(buf, pos + BASE_OFFSET_OFFSET, base_offset)
    _pack_i(buf, pos + LEADER_EPOCH_OFFSET, leader_epoch)


def stamp_log_append_time(buf: bytearray | memoryview, pos: int, size: int, now_ms: int) -> None:
    """Mark the batch at `pos` LogAppendTime with maxTimestamp = now_ms and re-seal its CRC.

    Per Kafka, readers of a LogAppendTime batch take every record's timestamp from
    maxTimestamp, so no record is touched: one header write and one CRC per batch.
    """
    attrs = _unpack_h(buf, pos + ATTRIBUTES_OFFSET)[0] | TIMESTAMP_TYPE_MASK
    _pack_h(buf, pos + ATTRIBUTES_OFFSET, attrs)
    _pack_q(buf, pos + MAX_TIMESTAMP_OFFSET, now_ms)
    _pack_I(buf, pos + CRC_OFFSET, batch_crc(buf, pos, size))


def valid_prefix(
    buf: bytes | bytearray | memoryview,
    start: int = 0,
    max_batch_bytes: int | None = None,
) -> tuple[int, list[BatchHeader]]:
    """Longest run of whole, CRC-valid batches from `start` (recovery of a torn tail).

    Returns (end position of the last good batch, their headers); never raises for damage.
    """
    mv = buf if isinstance(buf, memoryview) else memoryview(buf)
    n = len(mv)
    pos = start
    good: list[BatchHeader] = []
    while pos < n:
        try:
            hdr = read_header(mv, pos)
            if max_batch_bytes is not None and hdr.size > max_batch_bytes:
                break
            check_crc(mv, hdr)
            _check_counts(hdr, producer_batches=False)
        except (CorruptRecordError, InvalidRecordError):
            break
        good.append(hdr)
        pos += hdr.size
    return pos, good


# The producer's builder and the consumer's reader live in their own modules (they import the
# layout above); they are reachable from here too, as docs/internals.md promises, resolved on
# first use so the modules do not import each other in a cycle.
_REEXPORTS = {
    "BatchBuilder": "batch_builder",
    "ControlType": "batch_builder",
    "build_control_batch": "batch_builder",
    "Batch": "batch_reader",
    "ControlRecord": "batch_reader",
    "DecodedRecord": "batch_reader",
    "iter_records": "batch_reader",
    "parse_control_record": "batch_reader",
    "read_batches": "batch_reader",
    "Compression": "compression",
    "UnsupportedCompressionError": "compression",
}


def __getattr__(name: str) -> object:
    module = _REEXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"qnode.storage.{module}"), name)

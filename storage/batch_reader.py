"""Consumer side of RecordBatch v2: a lazy `Batch` view and `iter_records`.

A `Batch` parses its 61-byte header at once and touches the records only when asked:
`records()` checks the CRC (as Kafka's `check.crcs`), decompresses, and decodes. A consumer
that skips a whole batch (below its fetch offset, a control batch, an aborted transaction)
pays for one header unpack. Records come out as `DecodedRecord` named tuples.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from itertools import repeat
from typing import NamedTuple

from qnode.storage.batch_builder import ControlType
from qnode.storage.compression import DEFAULT_MAX_DECOMPRESSED, decompress
from qnode.storage.errors import CorruptRecordError
from qnode.storage.record_batch import (
    HEADER_SIZE,
    BatchHeader,
    check_crc,
    iter_batches,
    read_header,
)
from qnode.storage.records import Header, RecordTuple, decode_records

_CONTROL_KEY = struct.Struct(">hh")
_CONTROL_VALUE = struct.Struct(">hi")


class DecodedRecord(NamedTuple):
    """One record as the consumer sees it (absolute offset and timestamp)."""

    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...]


class ControlRecord(NamedTuple):
    """The marker a control batch carries: COMMIT or ABORT of a producer's transaction."""

    type: ControlType
    coordinator_epoch: int


class Batch:
    """One RecordBatch v2 in a buffer: header fields now, records on demand."""

    __slots__ = ("header", "_buf", "_decoded")

    def __init__(self, buf: bytes | bytearray | memoryview, pos: int = 0) -> None:
        self.header: BatchHeader = read_header(buf, pos)
        self._buf = buf
        self._decoded: list[RecordTuple] | None = None

    @classmethod
    def from_header(cls, buf: bytes | bytearray | memoryview, header: BatchHeader) -> Batch:
        """Wrap a header already read by `iter_batches` without parsing it again."""
        batch = cls.__new__(cls)
        batch.header = header
        batch._buf = buf
        batch._decoded = None
        return batch

    # header shortcuts, so a consumer writes batch.base_offset, batch.is_control...
    @property
    def base_offset(self) -> int:
        return self.header.base_offset

    @property
    def last_offset(self) -> int:
        return self.header.last_offset

    @property
    def next_offset(self) -> int:
        return self.header.next_offset

    @property
    def record_count(self) -> int:
        return self.header.record_count

    @property
    def max_timestamp(self) -> int:
        return self.header.max_timestamp

    @property
    def producer_id(self) -> int:
        return self.header.producer_id

    @property
    def producer_epoch(self) -> int:
        return self.header.producer_epoch

    @property
    def base_sequence(self) -> int:
        return self.header.base_sequence

    @property
    def is_control(self) -> bool:
        return self.header.is_control

    @property
    def is_transactional(self) -> bool:
        return self.header.is_transactional

    @property
    def compression(self) -> int:
        return self.header.compression

    @property
    def size(self) -> int:
        return self.header.size

    def raw(self) -> memoryview:
        """The batch's bytes (a view on the buffer it came from)."""
        h = self.header
        mv = self._buf if isinstance(self._buf, memoryview) else memoryview(self._buf)
        return mv[h.position : h.end]

    def verify(self) -> None:
        """Raise CorruptRecordError unless the CRC-32C matches."""
        check_crc(self._buf, self.header)

    def record_tuples(
        self, verify: bool = True, max_decompressed: int = DEFAULT_MAX_DECOMPRESSED
    ) -> list[RecordTuple]:
        """All records as plain (offset, timestamp, key, value, headers) tuples, cached."""
        if self._decoded is None:
            h = self.header
            if verify:
                check_crc(self._buf, h)
            section = self._buf[h.position + HEADER_SIZE : h.end]
            if h.compression:
                data = decompress(h.compression, section, max_decompressed)
            else:
                data = bytes(section)
            append_time = h.max_timestamp if h.is_log_append_time else None
            self._decoded = decode_records(
                data, h.record_count, h.base_offset, h.base_timestamp, append_time
            )
        return self._decoded

    def records(self, verify: bool = True) -> list[DecodedRecord]:
        """All records of the batch, decoded (CRC checked first unless `verify` is False)."""
        tuples = self.record_tuples(verify)
        return list(map(tuple.__new__, repeat(DecodedRecord, len(tuples)), tuples))

    def __iter__(self) -> Iterator[DecodedRecord]:
        return iter(self.records())

    def __len__(self) -> int:
        return self.header.record_count

    def control_record(self) -> ControlRecord:
        """The COMMIT/ABORT marker of a control batch."""
        if not self.header.is_control:
            raise ValueError("not a control batch")
        recs = self.record_tuples()
        if len(recs) != 1:
            raise CorruptRecordError(f"control batch holds {len(recs)} records, expected 1")
        return parse_control_record(recs[0][2], recs[0][3])

    def __repr__(self) -> str:
        h = self.header
        return (f"Batch(base_offset={h.base_offset}, count={h.record_count}, "
                f"size={h.size}, attributes={h.attributes:#x})")


def parse_control_record(key: bytes | None, value: bytes | None) -> ControlRecord:
    """Decode a control record's key (version, type) and value (version, coordinator epoch)."""
    if key is None or len(key) < 4:
        raise CorruptRecordError("control record key is shorter than 4 bytes")
    version, ctype = _CONTROL_KEY.unpack_from(key)
    if version != 0:
        raise CorruptRecordError(f"control record key version {version} is unknown")
    try:
        control_type = ControlType(ctype)
    except ValueError:
        raise CorruptRecordError(f"control record type {ctype} is unknown") from None
    epoch = -1
    if value is not None and len(value) >= 6:
        epoch = _CONTROL_VALUE.unpack_from(value)[1]
    return ControlRecord(control_type, epoch)


def read_batches(
    data: bytes | bytearray | memoryview, *, allow_partial_tail: bool = False
) -> Iterator[Batch]:
    """Lazy `Batch` views over consecutive batches (a fetch response's frames, a segment).

    Fetch responses carry whole batches (docs/internals.md), so a torn last batch is
    CorruptRecordError unless `allow_partial_tail` (reading a file another process appends to).
    """
    for header in iter_batches(data, allow_partial_tail=allow_partial_tail):
        yield Batch.from_header(data, header)


def iter_records(
    data: bytes | bytearray | memoryview,
    *,
    min_offset: int = 0,
    include_control: bool = False,
    verify: bool = True,
    allow_partial_tail: bool = False,
) -> Iterator[DecodedRecord]:
    """Decode the records of every batch in `data`, skipping offsets below `min_offset`.

    Batches wholly below `min_offset` and control batches (unless `include_control`) are
    skipped without decoding; with `verify` their CRC is still checked, as Kafka's consumer
    checks every batch it is handed.
    """
    for batch in read_batches(data, allow_partial_tail=allow_partial_tail):
        h = batch.header
        if verify:
            batch.verify()
        if h.base_offset + h.last_offset_delta < min_offset:
            continue
        if h.is_control and not include_control:
            continue
        tuples = batch.record_tuples(verify=False)
        if h.base_offset < min_offset:
            tuples = [t for t in tuples if t[0] >= min_offset]
        yield from map(tuple.__new__, repeat(DecodedRecord, len(tuples)), tuples)

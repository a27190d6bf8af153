"""Producer side of RecordBatch v2: `BatchBuilder` and the transaction control batches.

A builder collects records for one partition until the producer's `batch.size` is reached
(`has_room_for`), then `build()` seals them into one batch: records section (compressed when
asked), 61-byte header, CRC-32C. `append` is the producer's per-record hot path, so it encodes
a record with table lookups and a few bytes concatenations, and keeps an exact running size.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Sequence
from enum import IntEnum

from qnode.storage.checksum import crc32c
from qnode.storage.compression import Compression, check_supported, compress
from qnode.storage.errors import InvalidRecordError
from qnode.storage.record_batch import (
    CONTROL_MASK,
    HEADER_SIZE,
    LOG_OVERHEAD,
    MAGIC,
    NO_PARTITION_LEADER_EPOCH,
    NO_PRODUCER_EPOCH,
    NO_PRODUCER_ID,
    NO_SEQUENCE,
    TIMESTAMP_TYPE_MASK,
    TRANSACTIONAL_MASK,
)
from qnode.storage.records import (
    Header,
    as_bytes,
    encode_headers,
    record_size_upper_bound,
)
from qnode.storage.varint import TABLE_SIZE, ZIGZAG_BYTES, ZIGZAG_MINUS_ONE, zigzag_encode

# baseOffset, batchLength, partitionLeaderEpoch, magic, crc | attributes .. records count
_PREFIX = struct.Struct(">qiibI")
_CRC_COVERED = struct.Struct(">hiqqqhii")
assert _PREFIX.size + _CRC_COVERED.size == HEADER_SIZE
_CONTROL_KEY = struct.Struct(">hh")  # version, type
_CONTROL_VALUE = struct.Struct(">hi")  # version, coordinator epoch

DEFAULT_BATCH_SIZE = 16384  # Kafka's batch.size default


class ControlType(IntEnum):
    """Control record types (key: version int16 = 0, type int16)."""

    ABORT = 0
    COMMIT = 1


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _make_append(check_room: bool) -> Callable[..., int]:
    """Build `append` (never refuses) or `try_append` (refuses past batch_size) from one body.

    This is the producer's per-record hot path: one call, table lookups, a few bytes
    concatenations, an exact running size. `check_room` is fixed per variant, so neither pays
    for the other and the encoding lives in one place.
    """

    def append(
        self: BatchBuilder,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[Header] | None = None,
        timestamp_ms: int | None = None,
    ) -> int:
        od = self._count
        Z = ZIGZAG_BYTES
        if key is None:
            kp = ZIGZAG_MINUS_ONE
        else:
            if key.__class__ is not bytes:
                key = as_bytes(key, "key")
            kl = len(key)  # type: ignore[arg-type]
            kp = (Z[kl] if kl < TABLE_SIZE else zigzag_encode(kl)) + key  # type: ignore[operator]
        if value is None:
            vl = 0
            vp = ZIGZAG_MINUS_ONE
            value = b""
        else:
            if value.__class__ is not bytes:
                value = as_bytes(value, "value")
            vl = len(value)  # type: ignore[arg-type]
            vp = Z[vl] if vl < TABLE_SIZE else zigzag_encode(vl)
        if headers:
            hp = encode_headers(headers)
            lh = len(hp)
        else:
            hp = b"\x00"
            lh = 1
        if timestamp_ms is None:
            timestamp_ms = time.time_ns() // 1_000_000
        tsd = timestamp_ms - self._base_ts if od else 0
        head = (
            b"\x00"
            + (Z[tsd] if 0 <= tsd < TABLE_SIZE else zigzag_encode(tsd))
            + (Z[od] if od < TABLE_SIZE else zigzag_encode(od))
            + kp
            + vp
        )
        body = len(head) + vl + lh
        zb = Z[body] if body < TABLE_SIZE else zigzag_encode(body)
        head = zb + head
        size = self._size + len(zb) + body
        if check_room and od and size > self._limit:
            return -1
        if od:
            if timestamp_ms > self._max_ts:
                self._max_ts = timestamp_ms
        else:
            self._base_ts = self._max_ts = timestamp_ms
        parts = self._parts
        parts.append(head)
        parts.append(value)  # type: ignore[arg-type]
        parts.append(hp)
        self._size = size
        self._count = od + 1
        return od

    if check_room:
        append.__name__ = "try_append"
        append.__doc__ = (
            "Append unless the batch would pass `batch_size`: offset delta, or -1 (not appended)."
            "\n\nThe first record always goes in. The check uses the record's exact encoded size"
            " (divided by `estimated_ratio` room when compressed), so an uncompressed batch never"
            " passes batch.size."
        )
    else:
        append.__doc__ = "Encode one record whatever the size; returns its offset delta."
    return append


class BatchBuilder:
    """Accumulates records and builds one RecordBatch v2 (not thread-safe: one owner at a time).

    `batch_size` is the producer's `batch.size`: `has_room_for` says no once the estimate
    would pass it (the first record is always accepted, however large, as in Kafka).
    For compressed batches the estimate is the uncompressed size times `estimated_ratio`.
    """

    __slots__ = (
        "compression", "_batch_size", "_limit", "producer_id", "producer_epoch", "base_sequence",
        "transactional", "control", "base_offset", "partition_leader_epoch", "log_append_time",
        "compression_level", "_estimated_ratio", "_parts", "_count", "_size", "_base_ts",
        "_max_ts", "compressed_size",
    )

    def __init__(
        self,
        compression: Compression | str | int | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        producer_id: int = NO_PRODUCER_ID,
        producer_epoch: int = NO_PRODUCER_EPOCH,
        base_sequence: int = NO_SEQUENCE,
        transactional: bool = False,
        control: bool = False,
        base_offset: int = 0,
        partition_leader_epoch: int = NO_PARTITION_LEADER_EPOCH,
        log_append_time: bool = False,
        compression_level: int | None = None,
        estimated_ratio: float = 1.0,
    ) -> None:
        self.compression = Compression.parse(compression)
        check_supported(self.compression)  # snappy: refused here, not at build()
        self._batch_size = batch_size
        self._estimated_ratio = estimated_ratio
        self._set_limit()
        self.producer_id = producer_id
        self.producer_epoch = producer_epoch
        self.base_sequence = base_sequence
        self.transactional = transactional
        self.control = control
        self.base_offset = base_offset
        self.partition_leader_epoch = partition_leader_epoch
        self.log_append_time = log_append_time
        self.compression_level = compression_level
        self._parts: list[bytes] = []
        self._count = 0
        self._size = 0  # exact bytes of the uncompressed records section so far
        self._base_ts = 0
        self._max_ts = -1
        self.compressed_size = -1  # records section after compression, known after build()

    # -- producer state --------------------------------------------------------------------

    def set_producer_state(
        self, producer_id: int, producer_epoch: int, base_sequence: int,
        transactional: bool | None = None,
    ) -> None:
        """Set PID, epoch and first sequence (an idempotent producer knows them at drain time)."""
        self.producer_id = producer_id
        self.producer_epoch = producer_epoch
        self.base_sequence = base_sequence
        if transactional is not None:
            self.transactional = transactional

    # -- accumulating ------------------------------------------------------------------------

    @property
    def record_count(self) -> int:
        return self._count

    @property
    def is_empty(self) -> bool:
        return self._count == 0

    @property
    def uncompressed_size(self) -> int:
        """Exact size the batch would have without compression."""
        return HEADER_SIZE + self._size

    @property
    def estimated_size(self) -> int:
        """Size the batch is expected to have once built (exact when uncompressed)."""
        if self.compression is Compression.NONE:
            return HEADER_SIZE + self._size
        return HEADER_SIZE + int(self._size * self.estimated_ratio)

    @property
    def is_full(self) -> bool:
        return self._count > 0 and self.estimated_size >= self.batch_size

    def has_room_for(
        self, key: bytes | None, value: bytes | None, headers: Sequence[Header] | None = None
    ) -> bool:
        """True if appending this record keeps the estimate within `batch_size`."""
        if self._count == 0:
            return True
        hsize = len(encode_headers(headers)) if headers else 1
        more = record_size_upper_bound(key, value, hsize)
        if self.compression is not Compression.NONE:
            more = int(more * self.estimated_ratio)
        return self.estimated_size + more <= self.batch_size

    append = _make_append(check_room=False)
    try_append = _make_append(check_room=True)

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        self._batch_size = value
        self._set_limit()

    @property
    def estimated_ratio(self) -> float:
        return self._estimated_ratio

    @estimated_ratio.setter
    def estimated_ratio(self, value: float) -> None:
        self._estimated_ratio = value
        self._set_limit()

    def _set_limit(self) -> None:
        # Bytes of (uncompressed) records the batch may hold before passing batch_size.
        room = self._batch_size - HEADER_SIZE
        ratio = self._estimated_ratio
        if self.compression is not Compression.NONE and ratio > 0:
            self._limit = room / ratio
        else:
            self._limit = room

    # -- sealing -------------------------------------------------------------------------------

    def build(self) -> bytes:
        """Seal the records into one batch. An empty batch is refused (Kafka never sends one)."""
        count = self._count
        if count == 0:
            raise InvalidRecordError("cannot build a record batch with no records")
        records = b"".join(self._parts)
        assert len(records) == self._size, "running size drifted from the encoded records"
        codec = self.compression
        if codec is not Compression.NONE:
            records = compress(codec, records, self.compression_level)
        self.compressed_size = len(records)
        attributes = int(codec)
        if self.log_append_time:
            attributes |= TIMESTAMP_TYPE_MASK
        if self.transactional:
            attributes |= TRANSACTIONAL_MASK
        if self.control:
            attributes |= CONTROL_MASK
        covered = _CRC_COVERED.pack(
            attributes, count - 1, self._base_ts, self._max_ts, self.producer_id,
            self.producer_epoch, self.base_sequence, count,
        )
        crc = crc32c(records, crc32c(covered))
        length = HEADER_SIZE - LOG_OVERHEAD + len(records)
        prefix = _PREFIX.pack(self.base_offset, length, self.partition_leader_epoch, MAGIC, crc)
        return b"".join((prefix, covered, records))

    @property
    def compression_ratio(self) -> float:
        """compressed / uncompressed records size of the last build (1.0 before)."""
        if self.compressed_size < 0 or self._size == 0:
            return 1.0
        return self.compressed_size / self._size


def build_control_batch(
    control_type: ControlType,
    producer_id: int,
    producer_epoch: int,
    coordinator_epoch: int,
    timestamp_ms: int | None = None,
    partition_leader_epoch: int = NO_PARTITION_LEADER_EPOCH,
) -> bytes:
    """A transaction marker: one control record (COMMIT or ABORT) in a transactional batch."""
    if producer_id < 0:
        raise InvalidRecordError("a control batch needs a producer id")
    builder = BatchBuilder(
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        transactional=True,
        control=True,
        partition_leader_epoch=partition_leader_epoch,
    )
    builder.append(
        _CONTROL_KEY.pack(0, int(control_type)),
        _CONTROL_VALUE.pack(0, coordinator_epoch),
        timestamp_ms=_now_ms() if timestamp_ms is None else timestamp_ms,
    )
    return builder.build()

"""The producer's RecordBatch v2 writer, shaped for `Producer.send()`'s hot path.

`storage.batch_builder.BatchBuilder` is the reference writer; this one writes the same bytes
(tests check both against storage's reader) but splits a record so that `send()` does almost
nothing per record. A keyless, headerless record is `prefix | value | 0x00` where the prefix
(length, attributes, timestamp delta, offset delta, null key, value length) depends only on
(timestamp delta, offset delta, value length): those few combinations are cached, so
encoding such a record is one dict lookup and three list appends. Anything else (keys,
headers, a timestamp before the batch's first) is encoded in full by `encode_record`.
`build_batch` seals the parts: join, compress, header, CRC-32C.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from qnode.storage.checksum import crc32c
from qnode.storage.compression import compress
from qnode.storage.record_batch import (
    HEADER_SIZE,
    LOG_OVERHEAD,
    MAGIC,
    NO_PARTITION_LEADER_EPOCH,
    TRANSACTIONAL_MASK,
)
from qnode.storage.records import encode_headers
from qnode.storage.varint import TABLE_SIZE, ZIGZAG_BYTES, ZIGZAG_MINUS_ONE, zigzag_encode

# baseOffset, batchLength, partitionLeaderEpoch, magic, crc | attributes .. records count:
# the CRC covers the second part, so it is packed first.
_PREFIX = struct.Struct(">qiibI")
_COVERED = struct.Struct(">hiqqqhii")
assert _PREFIX.size + _COVERED.size == HEADER_SIZE

ZERO = b"\x00"  # the header count of a record without headers
_Z = ZIGZAG_BYTES
_MAX_CACHED = 1 << 16


def _zz(n: int) -> bytes:
    return _Z[n] if 0 <= n < TABLE_SIZE else zigzag_encode(n)


PrefixCache = dict[tuple[int, int, int], bytes]  # one per producer: no shared mutable state


def keyless_prefix(cache: PrefixCache, key: tuple[int, int, int]) -> bytes:
    """The bytes before the value of a keyless record; `key` = (ts delta, offset delta, len).

    Callers look in `cache` first and call this only on a miss; it fills the cache.
    """
    tsd, od, vl = key
    head = b"\x00" + _zz(tsd) + _zz(od) + ZIGZAG_MINUS_ONE + _zz(vl)
    prefix = _zz(len(head) + vl + 1) + head
    if len(cache) >= _MAX_CACHED:
        cache.clear()  # odd value sizes or timestamps: keep the cache bounded
    cache[key] = prefix
    return prefix


def encode_headers_section(headers: Sequence[tuple[str, bytes | None]] | None) -> bytes:
    """Header count and headers of a record (storage's encoding; ZERO when there are none)."""
    return encode_headers(headers) if headers else ZERO


def encode_record(offset_delta: int, timestamp_delta: int, key: bytes | None,
                  value: bytes | None, headers_section: bytes = ZERO) -> bytes:
    """One whole record (any key, value, signed timestamp delta; headers pre-encoded)."""
    kp = ZIGZAG_MINUS_ONE if key is None else _zz(len(key)) + key
    vp = ZIGZAG_MINUS_ONE if value is None else _zz(len(value)) + value
    hp = headers_section
    body = b"\x00" + _zz(timestamp_delta) + _zz(offset_delta) + kp + vp + hp
    return _zz(len(body)) + body


def build_batch(parts: list[bytes], count: int, base_timestamp: int, max_timestamp: int,
                compression: int = 0, producer_id: int = -1, producer_epoch: int = -1,
                base_sequence: int = -1, transactional: bool = False) -> bytes:
    """Seal encoded records into one RecordBatch v2 (base offset 0, stamped by the node)."""
    if count <= 0:
        raise ValueError("a record batch needs at least one record")
    records = b"".join(parts)
    if compression:
        records = compress(compression, records)
    attributes = compression | (TRANSACTIONAL_MASK if transactional else 0)
    covered = _COVERED.pack(attributes, count - 1, base_timestamp, max_timestamp, producer_id,
                            producer_epoch, base_sequence, count)
    crc = crc32c(records, crc32c(covered))
    prefix = _PREFIX.pack(0, HEADER_SIZE - LOG_OVERHEAD + len(records),
                          NO_PARTITION_LEADER_EPOCH, MAGIC, crc)
    return b"".join((prefix, covered, records))

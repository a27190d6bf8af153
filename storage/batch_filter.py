"""Rewrite a RecordBatch v2 keeping only some of its records (the cleaner's batch surgery).

Compaction must not change what survives: a kept record keeps its offset, timestamp, key,
value and headers, and its batch keeps base offset, lastOffsetDelta, base/max timestamp,
producer id, epoch and base sequence, so consumers see the same offsets and the producer
state rebuilt from the log sees the same sequences (the v2 format keeps lastOffsetDelta for
exactly this). Records are stored relative to the batch's base offset and base timestamp,
so a kept record's bytes are copied verbatim: the rebuilt batch is the old header with a new
record count, length and CRC, and the kept records' byte runs (recompressed with the same
codec when the batch was compressed).
"""

from __future__ import annotations

from collections.abc import Sequence

from qnode.storage.checksum import crc32c
from qnode.storage.compression import DEFAULT_MAX_DECOMPRESSED, compress, decompress
from qnode.storage.errors import CorruptRecordError
from qnode.storage.record_batch import (
    ATTRIBUTES_OFFSET,
    COMPRESSION_MASK,
    CRC_OFFSET,
    HEADER,
    HEADER_SIZE,
    LOG_OVERHEAD,
    BatchHeader,
)
from qnode.storage.varint import UNZIGZAG_1, UNZIGZAG_2, zigzag_decode

# (start, end) of a record's bytes in the records section, its offset delta, its key (None
# when null) and whether its value is null (a tombstone).
RawRecord = tuple[int, int, int, bytes | None, bool]


def records_section(buf: bytes | bytearray | memoryview, hdr: BatchHeader,
                    max_decompressed: int = DEFAULT_MAX_DECOMPRESSED) -> bytes:
    """The batch's records section, decompressed."""
    section = buf[hdr.position + HEADER_SIZE: hdr.end]
    if hdr.compression:
        return decompress(hdr.compression, section, max_decompressed)
    return bytes(section)


def walk_records(data: bytes, count: int) -> list[RawRecord]:
    """Locate the `count` records filling `data`; raises CorruptRecordError on malformed input.

    Written for CPython speed like `records.decode_records`: one- and two-byte varints (all
    the lengths and deltas of ordinary records) are table lookups, longer ones take the
    general decoder; every record must end exactly where its length says.
    """
    try:
        return _walk(data, count)
    except CorruptRecordError:
        raise
    except (IndexError, ValueError):
        raise CorruptRecordError("record data ends inside a record") from None


def _walk(data: bytes, count: int) -> list[RawRecord]:
    u1 = UNZIGZAG_1
    u2 = UNZIGZAG_2
    out: list[RawRecord] = []
    append = out.append
    n = len(data)
    pos = 0
    for _ in range(count):
        start = pos
        b = data[pos]
        if b < 0x80:
            length = u1[b]
            pos += 1
        elif data[pos + 1] < 0x80:
            length = u2[b | data[pos + 1] << 8]
            pos += 2
        else:
            length, pos = zigzag_decode(data, pos, 5)
        end = pos + length
        if length < 0 or end > n:
            raise CorruptRecordError(f"record length {length} at {start} runs past the batch")
        pos += 1  # attributes
        if data[pos] < 0x80:  # timestamp delta
            pos += 1
        else:
            _, pos = zigzag_decode(data, pos)
        b = data[pos]
        if b < 0x80:
            delta = u1[b]
            pos += 1
        elif data[pos + 1] < 0x80:
            delta = u2[b | data[pos + 1] << 8]
            pos += 2
        else:
            delta, pos = zigzag_decode(data, pos, 5)
        b = data[pos]
        if b < 0x80:
            klen = u1[b]
            pos += 1
        else:
            klen, pos = zigzag_decode(data, pos, 5)
        if klen < 0:
            if klen != -1:
                raise CorruptRecordError(f"record key length {klen} at {start}")
            key = None
        else:
            key = data[pos: pos + klen]
            pos += klen
        if pos >= end:
            raise CorruptRecordError(f"record at {start} ends inside its key")
        b = data[pos]
        if b < 0x80:
            vlen = u1[b]
        elif data[pos + 1] < 0x80:
            vlen = u2[b | data[pos + 1] << 8]
        else:
            vlen = zigzag_decode(data, pos, 5)[0]
        if vlen < -1 or pos + max(vlen, 0) > end:
            raise CorruptRecordError(f"record value length {vlen} at {start} is invalid")
        append((start, end, delta, key, vlen < 0))
        pos = end
    if pos != n:
        raise CorruptRecordError(f"{n - pos} bytes after the last of {count} records")
    return out


def _seal(hdr: BatchHeader, attributes: int, count: int, records: bytes) -> bytes:
    head = bytearray(HEADER.pack(
        hdr.base_offset, HEADER_SIZE - LOG_OVERHEAD + len(records), hdr.leader_epoch,
        hdr.magic, 0, attributes, hdr.last_offset_delta, hdr.base_timestamp, hdr.max_timestamp,
        hdr.producer_id, hdr.producer_epoch, hdr.base_sequence, count))
    crc = crc32c(records, crc32c(head[ATTRIBUTES_OFFSET:]))
    head[CRC_OFFSET: CRC_OFFSET + 4] = crc.to_bytes(4, "big")
    return bytes(head) + records


def rebuild_batch(hdr: BatchHeader, data: bytes, records: Sequence[RawRecord]) -> bytes:
    """The batch of `hdr` holding only `records` (a subset of `walk_records(data)`, in order)."""
    if not records:
        return empty_batch(hdr)
    body = b"".join([data[r[0]: r[1]] for r in records])
    if hdr.compression:
        body = compress(hdr.compression, body)
    return _seal(hdr, hdr.attributes, len(records), body)


def empty_batch(hdr: BatchHeader) -> bytes:
    """A header-only batch spanning the same offsets, sequences and producer as `hdr`.

    Kept where every record went but the batch must stay: the last batch of a live producer
    (so its sequence state survives a rebuild from the log) or the last batch of a cleaned
    group (so the cleaned segment ends where the old ones did). No records, no codec.
    """
    return _seal(hdr, hdr.attributes & ~COMPRESSION_MASK, 0, b"")


def placeholder_batch(hdr: BatchHeader) -> bytes:
    """A header-only batch spanning the offsets of `hdr` with no producer, not
    transactional, not control: what stands in for a removed transaction marker that was
    the last batch of a cleaned group (an empty control batch would carry no marker type, and
    an empty transactional one would reopen a transaction when producer state is rebuilt)."""
    return _seal(hdr._replace(producer_id=-1, producer_epoch=-1, base_sequence=-1), 0, 0, b"")

"""Zigzag varints (protobuf style), as RecordBatch v2 records use them.

Every length, delta and count in a record is a zigzag-encoded base-128 varint. The codec's hot
loops do not call these functions for the common case: they index the precomputed tables below
(`ZIGZAG_BYTES` for encoding small non-negative ints, `UNZIGZAG_1` / `UNZIGZAG_2` for decoding
one- and two-byte varints), and fall back to the functions here for anything larger.
"""

from __future__ import annotations

from qnode.storage.errors import CorruptRecordError

MAX_VARINT_BYTES = 5  # 32-bit varint
MAX_VARLONG_BYTES = 10  # 64-bit varlong


def zigzag_encode(value: int) -> bytes:
    """Encode a signed 64-bit int as a zigzag varint."""
    if not -(1 << 63) <= value < (1 << 63):
        raise ValueError(f"{value} does not fit a 64-bit varlong")
    n = ((value << 1) ^ (value >> 63)) & 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def zigzag_decode(
    data: bytes | bytearray | memoryview, pos: int, max_bytes: int = MAX_VARLONG_BYTES
) -> tuple[int, int]:
    """Decode the zigzag varint at `pos`; returns (value, position after it).

    Truncation or a varint longer than `max_bytes` raises CorruptRecordError.
    """
    shift = 0
    raw = 0
    end = len(data)
    for _ in range(max_bytes):
        if pos >= end:
            raise CorruptRecordError("record data ends inside a varint")
        b = data[pos]
        pos += 1
        raw |= (b & 0x7F) << shift
        if b < 0x80:
            return (raw >> 1) ^ -(raw & 1), pos
        shift += 7
    raise CorruptRecordError(f"varint longer than {max_bytes} bytes")


def varint_size(value: int) -> int:
    """Bytes the zigzag varint of `value` takes."""
    n = ((value << 1) ^ (value >> 63)) & 0xFFFFFFFFFFFFFFFF
    size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size


# Encodings of 0 .. TABLE_SIZE-1: record lengths, offset deltas, key/value lengths of ordinary
# records all land here, so encoding one is a list index instead of a loop.
TABLE_SIZE = 1 << 14
ZIGZAG_BYTES: tuple[bytes, ...] = tuple(zigzag_encode(i) for i in range(TABLE_SIZE))
ZIGZAG_MINUS_ONE = zigzag_encode(-1)  # null key / value length

# UNZIGZAG_1[b] for a one-byte varint b < 0x80.
UNZIGZAG_1: tuple[int, ...] = tuple((b >> 1) ^ -(b & 1) for b in range(0x80))


def _unzigzag_2(index: int) -> int:
    b0 = index & 0xFF
    b1 = index >> 8
    raw = (b0 & 0x7F) | (b1 << 7)
    return (raw >> 1) ^ -(raw & 1)


# UNZIGZAG_2[b0 | b1 << 8] for a two-byte varint (b0 >= 0x80 > b1); other slots are unused.
UNZIGZAG_2: tuple[int, ...] = tuple(_unzigzag_2(i) for i in range(1 << 15))

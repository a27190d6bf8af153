"""The records section of a RecordBatch v2: per-record encoding helpers and the decode loop.

Each record is

    length varint | attributes int8 | timestampDelta varlong | offsetDelta varint |
    keyLength varint | key | valueLength varint | value | headerCount varint |
    headers: (keyLength varint | key utf-8 | valueLength varint | value)*

lengths are zigzag varints and -1 means null. The decode loop is written for CPython speed:
locals only, table lookups for one- and two-byte varints (`varint.py`), slices of a `bytes`
object, one plain tuple per record. Any malformed input ends in CorruptRecordError.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from qnode.storage.errors import CorruptRecordError
from qnode.storage.varint import (
    TABLE_SIZE,
    UNZIGZAG_1,
    UNZIGZAG_2,
    ZIGZAG_BYTES,
    ZIGZAG_MINUS_ONE,
    zigzag_decode,
    zigzag_encode,
)

Header = tuple[str, bytes | None]
RecordTuple = tuple[int, int, bytes | None, bytes | None, tuple[Header, ...]]
NO_HEADERS: tuple[Header, ...] = ()


def encode_length_prefixed(data: bytes | None) -> bytes:
    """zigzag length + bytes, or the encoding of -1 for None."""
    if data is None:
        return ZIGZAG_MINUS_ONE
    n = len(data)
    return (ZIGZAG_BYTES[n] if n < TABLE_SIZE else zigzag_encode(n)) + data


def encode_headers(headers: Sequence[Header] | Mapping[str, bytes | None] | None) -> bytes:
    """Header count and headers of one record (keys are str, values bytes or None).

    A sequence of (key, value) pairs keeps order and repeated keys, as Kafka allows; a mapping
    is taken in its iteration order.
    """
    if not headers:
        return b"\x00"
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    parts = [zigzag_encode(len(pairs))]
    for pair in pairs:
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise TypeError(f"a header must be a (str, bytes | None) pair, not {pair!r}")
        key, value = pair
        if not isinstance(key, str):
            raise TypeError(f"header key must be str, not {type(key).__name__}")
        if value is not None and not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError(f"header value must be bytes or None, not {type(value).__name__}")
        parts.append(encode_length_prefixed(key.encode()))
        parts.append(encode_length_prefixed(None if value is None else bytes(value)))
    return b"".join(parts)


def as_bytes(data: object, what: str) -> bytes | None:
    """Snapshot a key or value as immutable bytes (a bytearray could change after append)."""
    if data is None or data.__class__ is bytes:
        return data  # type: ignore[return-value]
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise TypeError(f"record {what} must be bytes, bytearray, memoryview or None, "
                    f"not {type(data).__name__}")


def record_size_upper_bound(key: bytes | None, value: bytes | None, headers_size: int) -> int:
    """Bytes a record can take at most (5 length + 1 attrs + 10 ts + 5 offset + 5 + 5 lengths)."""
    return 31 + (len(key) if key is not None else 0) + (len(value) if value is not None else 0) \
        + headers_size


def _decode_headers(data: bytes, pos: int) -> tuple[tuple[Header, ...], int]:
    count, pos = zigzag_decode(data, pos, 5)
    if count < 0:
        raise CorruptRecordError(f"record has a negative header count {count}")
    out = []
    for _ in range(count):
        kl, pos = zigzag_decode(data, pos, 5)
        if kl < 0 or pos + kl > len(data):
            raise CorruptRecordError(f"record header key length {kl} is invalid")
        key = data[pos : pos + kl].decode()
        pos += kl
        vl, pos = zigzag_decode(data, pos, 5)
        if vl < -1 or pos + vl > len(data):
            raise CorruptRecordError(f"record header value length {vl} is invalid")
        if vl == -1:
            value = None
        else:
            value = data[pos : pos + vl]
            pos += vl
        out.append((key, value))
    return tuple(out), pos


def decode_records(
    data: bytes, count: int, base_offset: int, base_timestamp: int, append_time: int | None = None
) -> list[RecordTuple]:
    """Decode `count` records filling `data` exactly into (offset, timestamp, key, value, headers).

    `append_time` (a LogAppendTime batch's maxTimestamp) replaces every record's timestamp.
    """
    try:
        out = _decode_loop(data, count, base_offset, base_timestamp)
    except CorruptRecordError:
        raise
    except (IndexError, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise CorruptRecordError(f"malformed record data: {exc}") from exc
    if append_time is not None:
        out = [(o, append_time, k, v, h) for (o, _, k, v, h) in out]
    return out


def _decode_loop(data: bytes, count: int, base_offset: int, base_ts: int) -> list[RecordTuple]:
    # One-byte varints: b < 0x80 -> U1[b]; two-byte: b >= 0x80 > b2 -> U2[b | b2 << 8].
    # Anything longer takes the general decoder. Negative table indexes cannot happen: b, b2
    # are bytes. After each record, the position must land exactly on its stated end.
    U1 = UNZIGZAG_1
    U2 = UNZIGZAG_2
    out: list[RecordTuple] = []
    append = out.append
    no_headers = NO_HEADERS
    pos = 0
    for _ in range(count):
        b = data[pos]
        if b < 0x80:
            end = pos + 1 + U1[b]
            pos += 1
        else:
            b2 = data[pos + 1]
            if b2 < 0x80:
                end = pos + 2 + U2[b | b2 << 8]
                pos += 2
            else:
                length, pos = zigzag_decode(data, pos, 5)
                end = pos + length
        # attributes (unused in v2 records) at pos; timestamp delta follows
        b = data[pos + 1]
        if b < 0x80:
            ts = base_ts + U1[b]
            pos += 2
        else:
            b2 = data[pos + 2]
            if b2 < 0x80:  # records appended within ~8 s of the first one
                ts = base_ts + U2[b | b2 << 8]
                pos += 3
            else:
                tsd, pos = zigzag_decode(data, pos + 1)
                ts = base_ts + tsd
        b = data[pos]
        if b < 0x80:
            offset = base_offset + U1[b]
            pos += 1
        else:
            b2 = data[pos + 1]
            if b2 < 0x80:
                offset = base_offset + U2[b | b2 << 8]
                pos += 2
            else:
                od, pos = zigzag_decode(data, pos, 5)
                offset = base_offset + od
        # key
        b = data[pos]
        if b == 1:  # zigzag(-1): null key, the common case
            key = None
            pos += 1
        else:
            if b < 0x80:
                kl = U1[b]
                pos += 1
            else:
                kl, pos = zigzag_decode(data, pos, 5)
            if kl < 0:
                raise CorruptRecordError(f"record key length {kl}")
            key = data[pos : pos + kl]
            pos += kl
        # value
        b = data[pos]
        if b < 0x80:
            vl = U1[b]
            pos += 1
        else:
            b2 = data[pos + 1]
            if b2 < 0x80:
                vl = U2[b | b2 << 8]
                pos += 2
            else:
                vl, pos = zigzag_decode(data, pos, 5)
        if vl >= 0:
            value = data[pos : pos + vl]
            pos += vl
        elif vl == -1:
            value = None
        else:
            raise CorruptRecordError(f"record value length {vl}")
        # headers
        if data[pos] == 0:
            headers = no_headers
            pos += 1
        else:
            headers, pos = _decode_headers(data, pos)
        if pos != end:
            raise CorruptRecordError(
                f"record at offset {offset} is {end - pos:+d} bytes off its stated length"
            )
        append((offset, ts, key, value, headers))
    if pos != len(data):
        raise CorruptRecordError(
            f"records section has {len(data) - pos} bytes past its {count} records"
        )
    return out

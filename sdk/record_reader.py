"""The consumer's records decoder: one RecordBatch v2 records section → `Record` objects.

`storage.batch_reader` is the reference decoder (and does the header walk, CRC check and
decompression here too); this loop only fuses its per-record work with building the SDK's
`Record`, so each record costs one object instead of a tuple plus an object. Common shapes
(one- and two-byte varints, null key, no headers) take table lookups; anything else takes
the general varint decoder. Malformed input raises storage's CorruptRecordError.
"""

from __future__ import annotations

from qnode.sdk.types import Record
from qnode.storage.errors import CorruptRecordError
from qnode.storage.records import NO_HEADERS, decode_records
from qnode.storage.varint import UNZIGZAG_1, UNZIGZAG_2, zigzag_decode


def decode_batch(data: bytes, count: int, base_offset: int, base_ts: int, topic: str,
                 partition: int, min_offset: int, append_time: int | None = None
                 ) -> list[Record]:
    """Records of a decompressed records section with offset >= `min_offset`."""
    try:
        out = _decode(data, count, base_offset, base_ts, topic, partition)
    except (IndexError, CorruptRecordError):
        out = None
    if out is None:
        # Unusual shapes (headers, long varints) or damage: the reference decoder decides,
        # with its full checks and precise errors.
        out = [Record(topic, partition, o, ts, k, v, h)
               for (o, ts, k, v, h) in decode_records(data, count, base_offset, base_ts)]
    if append_time is not None:
        for r in out:
            r.timestamp = append_time
    if min_offset > base_offset:
        out = [r for r in out if r.offset >= min_offset]
    return out


def _decode(data: bytes, count: int, base_offset: int, base_ts: int, topic: str,
            partition: int) -> list[Record] | None:
    """The fast loop; None when a record is not of a shape it handles."""
    U1 = UNZIGZAG_1
    U2 = UNZIGZAG_2
    R = Record
    out: list[Record] = []
    append = out.append
    pos = 0
    for _ in range(count):
        b = data[pos]
        if b < 0x80:
            end = pos + 1 + U1[b]
            pos += 2  # length, attributes
        else:
            b2 = data[pos + 1]
            if b2 >= 0x80:
                return None
            end = pos + 2 + U2[b | b2 << 8]
            pos += 3
        b = data[pos]  # timestamp delta
        if b < 0x80:
            ts = base_ts + U1[b]
            pos += 1
        else:
            tsd, pos = zigzag_decode(data, pos)
            ts = base_ts + tsd
        b = data[pos]  # offset delta
        if b < 0x80:
            offset = base_offset + U1[b]
            pos += 1
        else:
            b2 = data[pos + 1]
            if b2 >= 0x80:
                return None
            offset = base_offset + U2[b | b2 << 8]
            pos += 2
        b = data[pos]  # key length
        if b == 1:
            key = None
            pos += 1
        else:
            if b < 0x80:
                kl = U1[b]
                pos += 1
            else:
                b2 = data[pos + 1]
                if b2 >= 0x80:
                    return None
                kl = U2[b | b2 << 8]
                pos += 2
            if kl < 0:
                return None
            key = data[pos:pos + kl]
            pos += kl
        b = data[pos]  # value length
        if b < 0x80:
            vl = U1[b]
            pos += 1
        else:
            b2 = data[pos + 1]
            if b2 >= 0x80:
                return None
            vl = U2[b | b2 << 8]
            pos += 2
        if vl >= 0:
            value = data[pos:pos + vl]
            pos += vl
        elif vl == -1:
            value = None
        else:
            return None
        if data[pos] != 0 or pos + 1 != end:  # headers, or a length that does not add up
            return None
        pos = end
        append(R(topic, partition, offset, ts, key, value, NO_HEADERS))
    if pos != len(data):
        return None
    return out

"""The consumer's records decoder: one RecordBatch v2 records section → `Record` tuples.

`storage.records.decode_records` is the reference decoder (the header walk, CRC check and
decompression happen in the fetcher, with storage's functions). This one returns the same
records, built for CPython speed, in two gears:

- one record at a time: locals only, table lookups for one- and two-byte varints;
- runs: a producer's batch is mostly records of one shape (same length, null or same-size
  key, same-size value, no headers, timestamp deltas of one varint width, consecutive
  offset deltas). After decoding a record, the decoder checks whether the next ones share
  its layout with C-speed operations on strided slices (every byte that must be equal, the
  timestamp width, the expected offset-delta encodings), then unpacks the whole run with
  one `struct.iter_unpack` and builds its records with `map`/`zip`, so no Python bytecode
  runs per record. A run stops at the first record that differs, which takes the first gear.

Anything unusual (headers, damage) goes to the reference decoder, which raises storage's
CorruptRecordError with a precise message.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from itertools import repeat
from operator import add, itemgetter
from typing import Any

from qnode.sdk.types import Record
from qnode.storage.errors import CorruptRecordError
from qnode.storage.records import NO_HEADERS, decode_records
from qnode.storage.varint import UNZIGZAG_1, UNZIGZAG_2, zigzag_decode

_new = tuple.__new__  # a Record from a 7-tuple, without the Python-level __new__
_first = itemgetter(0)
_HIGH = bytes(range(0x80, 0x100))  # bytes that continue a varint
_LOW = bytes(range(0x80))  # bytes that end one

# Offset deltas are zigzag varints; a run's deltas are consecutive, so its offset-delta bytes
# must equal a slice of these columns (byte j of the encoding of every delta below the limit).
_OD_LIMIT = 1 << 14
_OD_CLASS_START = (0, 64, 8192)  # the deltas whose encoding has 1, 2, 3 bytes ...
_OD_CLASS_END = (64, 8192, _OD_LIMIT)  # ... (as far as the tables go)
_OD_COLS = tuple(
    bytes(((2 * d) >> (7 * j)) & 0x7F | (0x80 if (2 * d) >> (7 * (j + 1)) else 0)
          for d in range(_OD_LIMIT))
    for j in range(3)
)
_MIN_RUN = 4  # fewer records than this are cheaper one at a time
_FIRST_CAP = 32  # run length tried first; grows while runs succeed (bounds wasted checks)


def decode_batch(data: bytes, count: int, base_offset: int, base_ts: int, topic: str,
                 partition: int, min_offset: int, append_time: int | None = None
                 ) -> list[Record]:
    """Records of a decompressed records section with offset >= `min_offset`."""
    out: list[Record] = []
    BatchDecoder(data, count, base_offset, base_ts, topic, partition, min_offset,
                 append_time).take(out, count)
    return out


class BatchDecoder:
    """The records of one records section, decoded as they are asked for (`take`).

    Decoding a batch only as far as `poll()` hands records out keeps records short-lived
    (cheaper for the cyclic GC, and the first records of a large batch come sooner).
    """

    __slots__ = ("data", "count", "base_offset", "base_ts", "topic", "partition", "min_offset",
                 "append_time", "out", "ts_table", "pos", "index", "cap", "skip", "backoff",
                 "rest", "rest_at")

    def __init__(self, data: bytes, count: int, base_offset: int, base_ts: int, topic: str,
                 partition: int, min_offset: int = 0, append_time: int | None = None) -> None:
        self.data = data
        self.count = count
        self.base_offset = base_offset
        self.base_ts = base_ts
        self.topic = topic
        self.partition = partition
        self.min_offset = min_offset  # records below it are skipped (a fetch inside a batch)
        self.append_time = append_time  # LogAppendTime: every record gets the batch's time
        self.out: list[Record] = []
        self.ts_table: list[int] | None = None
        # Where the fast gear stands: byte position, record index, run sizing.
        self.pos = 0
        self.index = 0
        self.cap = _FIRST_CAP
        self.skip = 0  # records to take one by one before trying a run again
        self.backoff = 1
        self.rest: list[Record] | None = None  # the reference decoder's records, once used
        self.rest_at = 0  # how many of them were handed out

    @property
    def done(self) -> bool:
        if self.rest is not None:
            return self.rest_at >= len(self.rest)
        return self.index >= self.count

    def take(self, out: list[Record], limit: int) -> None:
        """Append up to `limit` more records to `out`; CorruptRecordError on damage."""
        if self.rest is None:
            start = len(out)
            self.out = out
            try:
                if self._fast(start + limit):
                    if self.append_time is not None:  # LogAppendTime: rare, so fixed up here
                        at = self.append_time
                        out[start:] = [r._replace(timestamp=at) for r in out[start:]]
                    return
            except (IndexError, CorruptRecordError, struct.error):
                pass
            # Unusual shapes (headers, long varints) or damage: the reference decoder
            # decides, with its full checks and precise errors, from where this call began.
            del out[start:]
            self.rest = self._reference()
        given = self.rest_at
        out += self.rest[given:given + limit]
        self.rest_at = given + limit

    def _reference(self) -> list[Record]:
        head = (self.topic, self.partition)
        at = self.append_time
        min_offset = self.min_offset
        return [_new(Record, head + ((o, ts, k, v, h) if at is None else (o, at, k, v, h)))
                for (o, ts, k, v, h) in decode_records(
                    self.data, self.count, self.base_offset, self.base_ts)[self.index:]
                if o >= min_offset]

    def _fast(self, want: int) -> bool:
        """Decode until `out` holds `want` records or the section ends; False: not here."""
        data = self.data
        size = len(data)
        count = self.count
        base_offset = self.base_offset
        base_ts = self.base_ts
        topic = self.topic
        partition = self.partition
        min_offset = self.min_offset
        U1 = UNZIGZAG_1
        U2 = UNZIGZAG_2
        R = Record
        new = _new
        no_headers = NO_HEADERS
        out = self.out
        append = out.append
        run = self._run
        cap = self.cap
        skip = self.skip
        backoff = self.backoff
        pos = self.pos
        i = self.index
        left = want - len(out)  # records still wanted
        while i < count and left > 0:
            start = pos
            b = data[pos]  # length
            if b < 0x80:
                end = pos + 1 + U1[b]
                pos += 2  # and the attributes byte (unused in v2 records)
            else:
                b2 = data[pos + 1]
                if b2 < 0x80:
                    end = pos + 2 + U2[b | b2 << 8]
                    pos += 3
                else:
                    length, pos = zigzag_decode(data, pos, 5)
                    end = pos + length
                    pos += 1
            ts_at = pos
            b = data[pos]  # timestamp delta
            if b < 0x80:
                ts = base_ts + U1[b]
                pos += 1
            else:
                b2 = data[pos + 1]
                if b2 < 0x80:
                    ts = base_ts + U2[b | b2 << 8]
                    pos += 2
                else:
                    tsd, pos = zigzag_decode(data, pos)
                    ts = base_ts + tsd
            od_at = pos
            b = data[pos]  # offset delta
            if b < 0x80:
                od = U1[b]
                pos += 1
            else:
                b2 = data[pos + 1]
                if b2 < 0x80:
                    od = U2[b | b2 << 8]
                    pos += 2
                else:
                    od, pos = zigzag_decode(data, pos, 5)
            key_at = pos
            b = data[pos]  # key length
            if b == 1:
                key = None
                kl = -1
                pos += 1
            else:
                if b < 0x80:
                    kl = U1[b]
                    pos += 1
                else:
                    kl, pos = zigzag_decode(data, pos, 5)
                if kl < 0:
                    return False
                key = data[pos:pos + kl]
                pos += kl
            value_at = pos
            b = data[pos]  # value length
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
                value = data[pos:pos + vl]
                pos += vl
            elif vl == -1:
                value = None
            else:
                return False
            if pos + 1 != end or data[pos] != 0:  # headers, or a length that does not add up
                return False
            pos = end
            offset = base_offset + od
            if offset >= min_offset:
                append(new(R, (topic, partition, offset, ts, key, value, no_headers)))
                left -= 1
            i += 1
            if skip:
                skip -= 1
                continue
            # Do the next records look like this one? A cheap pre-check first (the first
            # two bytes, i.e. the length, of the next two records), as records of varied
            # sizes never make a run and a failed try costs some microseconds.
            if i >= count or data[pos] != data[start] or data[pos + 1] != data[start + 1]:
                continue
            rec = end - start
            after = pos + rec
            if after + 1 >= size or data[after] != data[start] \
                    or data[after + 1] != data[start + 1]:
                continue
            n = min(count - i, (size - pos) // rec, cap, left)
            if n < _MIN_RUN:
                continue
            ob = key_at - od_at
            if ob > 3 or ts_at - start > 3 or key_at - ts_at - ob > 2:
                continue
            # The run's deltas od+1 .. od+n must all have encodings of the template's width.
            n = min(n, _OD_CLASS_END[ob - 1] - 1 - od)
            if n < _MIN_RUN or od + 1 < _OD_CLASS_START[ob - 1]:
                continue
            before = len(out)
            m = run(start, pos, n, rec, ts_at - start, od_at - start, key_at - start,
                    value_at - start, od, kl, vl)
            left -= len(out) - before
            i += m
            pos += m * rec
            if m == n:
                cap *= 4
                backoff = 1
            else:
                cap = _FIRST_CAP
                if m < _MIN_RUN:  # not worth its checks: wait longer before the next try
                    skip = backoff
                    backoff = min(backoff * 2, 64)
                else:
                    backoff = 1
        if i >= count and pos != size:
            return False
        self.pos = pos
        self.index = i
        self.cap = cap
        self.skip = skip
        self.backoff = backoff
        return True

    def _run(self, tpl: int, pos: int, n: int, rec: int, ts_at: int, od_at: int, key_at: int,
             vlen_at: int, od: int, kl: int, vl: int) -> int:
        """Append the records from `pos` on that share the layout of the record at `tpl`.

        Positions ending in `_at` are relative to a record's start; at most `n` records of
        `rec` bytes each are taken. Returns how many were (0 when the first one differs).
        """
        data = self.data
        stop = pos + n * rec
        m = n
        # Bytes every record of the run shares with the template: length, key and value
        # lengths (the value's is at `vlen_at`, past the key), the header count (0).
        const = [*range(ts_at - 1), *range(key_at, key_at + _varint_width(data, tpl + key_at)),
                 *range(vlen_at, vlen_at + _varint_width(data, tpl + vlen_at)), rec - 1]
        for off in const:
            col = data[pos + off:stop:rec]
            want = data[tpl + off]
            if col.count(want) != n:
                m = min(m, len(col) - len(col.lstrip(bytes((want,)))))
                if not m:
                    return 0
        # Timestamp deltas: same varint width as the template's.
        tb = od_at - ts_at
        col = data[pos + ts_at:stop:rec]
        if tb == 1:
            if not col.isascii():
                m = min(m, len(col) - len(col.lstrip(_LOW)))
        else:  # two bytes: a continuation byte, then a final one
            if col.translate(None, _LOW) != col:
                m = min(m, len(col) - len(col.lstrip(_HIGH)))
            col = data[pos + ts_at + 1:stop:rec]
            if not col.isascii():
                m = min(m, len(col) - len(col.lstrip(_LOW)))
        if not m:
            return 0
        # Offset deltas: consecutive after the template's.
        for j in range(key_at - od_at):
            col = data[pos + od_at + j:stop:rec]
            want = _OD_COLS[j][od + 1:od + 1 + n]
            if col != want:
                m = min(m, _common_prefix(col, want))
                if not m:
                    return 0
        self._emit(pos, m, rec, ts_at, tb, od + 1, key_at, kl, vlen_at, vl)
        return m

    def _emit(self, pos: int, m: int, rec: int, ts_at: int, tb: int, first_od: int,
              key_at: int, kl: int, vlen_at: int, vl: int) -> None:
        """Build the `m` records of a checked run with C-level maps, no bytecode per record.

        Each column streams out of its own `struct.iter_unpack`, so the row tuples it makes
        die at once: only the records themselves live long enough to cost the cyclic GC.
        """
        data = self.data
        first = self.base_offset + first_od
        below = self.min_offset - first
        if below > 0:  # the fetch began inside this run
            if below >= m:
                return
            pos += below * rec
            m -= below
            first += below
        stop = pos + m * rec
        view = memoryview(data)[pos:stop]
        if tb == 1:
            table = self.ts_table
            if table is None:  # every timestamp a one-byte delta can give, shared ints
                table = self.ts_table = list(map(add, repeat(self.base_ts), UNZIGZAG_1))
            stamps = map(table.__getitem__, data[pos + ts_at:stop:rec])
        else:  # the two raw bytes little-endian index the UNZIGZAG_2 table
            stamps = map(add, repeat(self.base_ts), map(
                UNZIGZAG_2.__getitem__, _column(view, rec, ts_at, "H", 2)))
        if kl >= 0:
            keys = _column(view, rec, key_at + _varint_width(data, pos + key_at), f"{kl}s", kl)
        else:
            keys = repeat(None)
        if vl >= 0:
            values = _column(view, rec, vlen_at + _varint_width(data, pos + vlen_at), f"{vl}s",
                             vl)
        else:
            values = repeat(None)
        self.out += map(_new, repeat(Record), zip(
            repeat(self.topic), repeat(self.partition), range(first, first + m), stamps,
            keys, values, repeat(NO_HEADERS)))


def _column(view: memoryview, rec: int, at: int, code: str, width: int) -> Iterator[Any]:
    """The field at `at` (struct `code`, `width` bytes) of every `rec`-byte record in `view`."""
    fmt = f"<{at}x{code}{rec - at - width}x" if at else f"<{code}{rec - width}x"
    return map(_first, struct.iter_unpack(fmt, view))


def _varint_width(data: bytes, pos: int) -> int:
    """Bytes the (already validated) varint at `pos` takes."""
    w = 1
    while data[pos] >= 0x80:
        pos += 1
        w += 1
    return w


def _common_prefix(a: bytes, b: bytes) -> int:
    """Length of the common prefix of two byte strings of equal length (C-speed XOR)."""
    diff = int.from_bytes(a, "big") ^ int.from_bytes(b, "big")
    return len(a) - 1 - (diff.bit_length() - 1) // 8 if diff else len(a)

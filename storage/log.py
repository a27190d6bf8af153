"""The partition log: an ordered list of segments with one active (writable) segment.

`append` validates whole batches (length, magic, CRC-32C, counts), assigns offsets by stamping
base offset and leader epoch in the batch headers (followers keep the leader's offsets, which
must not go backwards), rolls the active segment when needed and copies the bytes into the
active segment's mapping (stamped there, never in the caller's buffer). The common produce,
one batch per call, takes a fast path: one header unpack, the exact checks of
`validate_batches`, no per-batch objects unless hooks want them.
`read` returns zero-copy memoryview slices of whole batches. Offset lookup: binary search over
segment base offsets, then the segment's sparse index, then a short header walk. Closed
segments are mapped while read: at most `mapped_segments` of them stay mapped (LRU).

Concurrency: one writer at a time (a lock); readers work on a snapshot of the segment list
and the log end offset, so a reader never sees a half-written batch.
"""

from __future__ import annotations

import bisect
import os
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from qnode.storage.checksum import crc32c
from qnode.storage.errors import (
    InvalidRecordError,
    LogClosedError,
    OffsetOutOfRangeError,
    StorageError,
)
from qnode.storage.log_config import LogConfig
from qnode.storage.record_batch import (
    BatchesInfo,
    BatchHeader,
    stamp,
    stamp_log_append_time,
    validate_batches,
)
from qnode.storage.recovery import (
    RecoveryReport,
    fsync_dir,
    load_segments,
    write_clean_shutdown,
)
from qnode.storage.segment import (
    BATCH_HEADER_SIZE,
    MAX_RELATIVE_OFFSET,
    BatchMeta,
    Segment,
    SegmentMissingError,
    Stamp,
)

# Closed segments of one log that stay mapped between reads (the least recently mapped or
# read beyond this are unmapped; a later read maps them again): reading back an old backlog
# keeps a few segments mapped, not all of them.
DEFAULT_MAPPED_SEGMENTS = 2
EARLIEST_TIMESTAMP = -2
LATEST_TIMESTAMP = -1


class AppendResult(NamedTuple):
    """What an append wrote. A named tuple: the append hot path builds one per call."""

    base_offset: int
    last_offset: int
    max_timestamp: int
    log_append_time: int  # -1 unless the topic uses LogAppendTime
    record_count: int = 0
    size: int = 0


class FetchData(NamedTuple):
    """Whole batches from `offset` on, as zero-copy slices of the mapped segments."""

    slices: list[memoryview]
    size: int
    log_start_offset: int
    log_end_offset: int
    high_watermark: int


@dataclass(frozen=True, slots=True)
class TimestampOffset:
    """Answer of a search by time: first record with a timestamp >= the one asked."""

    timestamp: int
    offset: int
    leader_epoch: int = -1


@dataclass
class LogHooks:
    """Callbacks the owners of per-log state (leader-epoch cache, producer state) wire in.

    before_append(info, data): may raise to refuse the append (e.g. out-of-order sequence);
    on_append(result, info, leader_epoch): after a successful append;
    on_truncate(new_end): after truncate_to; on_log_start(new_start): after the log start moved;
    on_close(): in a clean close, after the final flush (e.g. a last producer-state snapshot,
    so the next open replays nothing); an OSError there does not fail the close.
    on_flush(): in every flush, after the data fsyncs (e.g. the fsync of a checkpoint written
    on the append path); an error there fails the flush.
    """

    before_append: list[Callable[[BatchesInfo, Any], None]] = field(default_factory=list)
    on_append: list[Callable[[AppendResult, BatchesInfo, int], None]] = field(default_factory=list)
    on_truncate: list[Callable[[int], None]] = field(default_factory=list)
    on_log_start: list[Callable[[int], None]] = field(default_factory=list)
    on_close: list[Callable[[], None]] = field(default_factory=list)
    on_flush: list[Callable[[], None]] = field(default_factory=list)


_HEADER = struct.Struct(">qiibIhiqqqhii")  # RecordBatch v2 header (record_batch.HEADER)
Buffer = bytes | bytearray | memoryview


@dataclass(slots=True)
class _Prepared:
    iov: list[Buffer]
    metas: list[BatchMeta]
    size: int
    max_ts: int
    records: int
    append_time: int
    info: BatchesInfo | None
    stamps: list[Stamp]


_READABLE_CODECS = (0, 1, 3, 4)  # none, gzip, lz4, zstd
# A read of the active segment up to this size is a consumer following the tail: its pages
# are in memory, a read-ahead hint would only cost a syscall.
_TAIL_READ = 64 * 1024
_new_tuple = tuple.__new__
_MIN_RECORD_SIZE = 7


def _scan_batches(data: bytes | bytearray | memoryview, max_batch_bytes: int,
                  producer_batches: bool) -> list[tuple[int, int, int, int, int, int]] | None:
    """The append hot path's validation: the checks of `record_batch.validate_batches`
    (length, magic, size limit, CRC-32C, counts, codec) without building an object per batch.
    Returns (position, size, base offset, last offset delta, max timestamp, record count) per
    batch, or None at the first doubt: the caller then runs `validate_batches`, which raises
    the precise error (so both paths refuse exactly the same input)."""
    n = len(data)
    out = []
    pos = 0
    unpack = _HEADER.unpack_from
    while pos < n:
        if n - pos < BATCH_HEADER_SIZE:
            return None
        (_base, length, _ple, magic, crc, attrs, delta, _bts, max_ts, pid, _pe, _seq,
         count) = unpack(data, pos)
        size = length + 12
        if (magic != 2 or size < BATCH_HEADER_SIZE or size > n - pos or size > max_batch_bytes
                or count < 0 or delta < 0 or (attrs & 7) not in _READABLE_CODECS):
            return None
        if not attrs & 7 and count * _MIN_RECORD_SIZE > size - BATCH_HEADER_SIZE:
            return None
        if producer_batches:
            if count == 0 or delta != count - 1 or (pid < 0 and (attrs & 0x30 or _seq >= 0)):
                return None
        elif count > 0 and delta < count - 1:
            return None
        mv = data if isinstance(data, memoryview) else memoryview(data)
        if crc32c(mv[pos + 21:pos + size]) != crc:
            return None
        out.append((pos, size, _base, delta, max_ts, count))
        pos += size
    return out if out else None


def _one_valid_batch(data: Buffer, max_batch_bytes: int) -> tuple[int, ...] | None:
    """The header fields of `data` when it is exactly one batch that passes every check
    `validate_batches` makes of a producer's batch; None at any doubt (the caller then runs
    the full checks, which raise the precise error)."""
    n = len(data)
    if n < BATCH_HEADER_SIZE:
        return None
    h = _HEADER.unpack_from(data)
    count = h[12]
    attrs = h[5]
    if (h[1] + 12 == n and h[3] == 2 and n <= max_batch_bytes
            and 0 < count and h[6] == count - 1
            and (attrs & 7) in _READABLE_CODECS
            and (attrs & 7 or count * _MIN_RECORD_SIZE <= n - BATCH_HEADER_SIZE)
            and (h[9] >= 0 or not (attrs & 0x30 or h[11] >= 0))
            and crc32c(memoryview(data)[21:]) == h[4]):
        return h
    return None


def _hook_info(h: tuple[int, ...], n: int) -> BatchesInfo:
    """What the append hooks get for one batch whose header fields `h` the fast path read:
    the BatchesInfo validate_batches would have built for it."""
    hdr = _new_tuple(BatchHeader, (0, n, h[0]) + h[2:])
    max_ts = h[8]
    return _new_tuple(BatchesInfo, ([hdr], n, h[12], h[6] + 1, max_ts if max_ts > -1 else -1,
                                    0 if max_ts > -1 else -1))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _new_segment(directory: str, base: int, config: LogConfig) -> Segment:
    """A new active segment, written through its mapping (capacity segment.bytes)."""
    return Segment.create(directory, base, index_interval_bytes=config.index_interval_bytes,
                          index_max_bytes=config.segment_index_bytes,
                          capacity=config.segment_bytes)


class Log:
    """One partition replica's log in `directory` (`<data_dir>/<topic>-<partition>`)."""

    def __init__(self, directory: str, config: LogConfig, segments: list[Segment],
                 report: RecoveryReport, log_start_offset: int, high_watermark: int,
                 mapped_segments: int = DEFAULT_MAPPED_SEGMENTS) -> None:
        self.directory = directory
        # closed segments holding a read mapping, least recently used first
        self.mapped_segments = max(1, mapped_segments)
        self._mapped: OrderedDict[int, Segment] = OrderedDict()
        self._mapped_lock = threading.Lock()
        for seg in segments:
            seg.on_map = self._on_map
            seg.unmap()  # opening read headers through mappings: reads map again on demand
        self.config = config
        self.recovery_report = report
        self._segments = segments
        self._bases = [s.base_offset for s in segments]
        self._lock = threading.RLock()
        self._closed = False
        active = segments[-1]
        self._leo = active.next_offset
        self._log_start = max(log_start_offset, segments[0].base_offset)
        self._log_start = min(self._log_start, self._leo)
        self._hw = min(max(high_watermark, self._log_start), self._leo)
        self._recovery_point = min(max(report.recovery_point, 0), self._leo)
        if report.validated_segments or report.truncated:
            self._recovery_point = min(self._recovery_point, self._leo)
        self._unflushed_messages = 0
        self._last_flush_ms = _now_ms()
        self._dir_dirty = False
        self.segment_generation = 0
        self.hooks = LogHooks()
        # How retention, DeleteRecords and the cleaner's swap remove a segment: at once by
        # default; LogManager defers it by file.delete.delay.ms (storage/segment_deleter.py).
        self.segment_remover: Callable[[Segment], None] = Segment.delete
        # Set by the owners of that state (storage/leader_epoch.py, producer_state.py).
        self.leader_epoch_cache: Any = None
        self.producer_state: Any = None

    # ------------------------------------------------------------------ open
    @classmethod
    def open(cls, path: str | os.PathLike[str], config: LogConfig | None = None,
             recovery_point: int | None = None, *, log_start_offset: int = 0,
             high_watermark: int = 0,
             mapped_segments: int = DEFAULT_MAPPED_SEGMENTS) -> Log:
        """Open (creating if needed) the log in `path`, recovering past `recovery_point`
        (None: the whole log unless it was closed cleanly). See `recovery_report`.
        `mapped_segments`: how many closed segments stay mapped between reads."""
        directory = os.fspath(path)
        config = config or LogConfig()
        segments, report = load_segments(directory, config, recovery_point)
        if not segments:
            segments = [_new_segment(directory, log_start_offset, config)]
            fsync_dir(directory)
        return cls(directory, config, segments, report, log_start_offset, high_watermark,
                   mapped_segments)

    # ------------------------------------------------------------------ state
    @property
    def log_start_offset(self) -> int:
        return self._log_start

    @property
    def log_end_offset(self) -> int:
        return self._leo

    @property
    def high_watermark(self) -> int:
        return self._hw

    @high_watermark.setter
    def high_watermark(self, value: int) -> None:
        assert self._log_start <= value <= self._leo or value == self._leo, (
            f"high watermark {value} outside [{self._log_start}, {self._leo}]")
        self._hw = value

    @property
    def recovery_point(self) -> int:
        return self._recovery_point

    @property
    def size_bytes(self) -> int:
        return sum(s.size for s in self._segments)

    @property
    def active_segment(self) -> Segment:
        return self._segments[-1]

    @property
    def active_segment_base(self) -> int:
        """Base offset of the active segment (published in the worker's shm table)."""
        return self._segments[-1].base_offset

    @property
    def segments(self) -> list[Segment]:
        """All segments, oldest first (a copy)."""
        return list(self._segments)

    def closed_segments(self) -> list[Segment]:
        """Every segment but the active one: what the cleaner and retention may act on."""
        return self._segments[:-1]

    def _on_map(self, seg: Segment) -> None:
        """A closed segment was mapped for a read: unmap the least recently used beyond
        `mapped_segments` (their views in flight keep their mappings until sent)."""
        evict: list[Segment] = []
        with self._mapped_lock:
            lru = self._mapped
            lru[id(seg)] = seg
            lru.move_to_end(id(seg))
            while len(lru) > self.mapped_segments:
                evict.append(lru.popitem(last=False)[1])
        for old in evict:
            if old is not seg:
                old.unmap()

    def _touch(self, seg: Segment) -> None:
        with self._mapped_lock:
            if id(seg) in self._mapped:
                self._mapped.move_to_end(id(seg))

    def _forget_mapped(self, seg: Segment) -> None:
        with self._mapped_lock:
            self._mapped.pop(id(seg), None)

    @property
    def mapped_segment_count(self) -> int:
        """Segments (active one included) holding a mapping of their file now."""
        return sum(1 for s in list(self._segments) if s.mapped)

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosedError(f"log {self.directory} is closed")

    # ------------------------------------------------------------------ append
    def append(self, data: Buffer, leader_epoch: int, assign_offsets: bool = True,
               *, now_ms: int | None = None) -> AppendResult:
        """Validate, stamp and append whole batches. Leader (assign_offsets=True): offsets from
        the log end, `leader_epoch` stamped. Follower: the batches' own offsets, which must
        start at or after the log end. Nothing is written unless every batch is valid, and
        nothing when the disk is full (DiskFullError). The caller's buffer is never modified
        (headers are stamped on the copy in the segment). Once this returns, the batches are
        in the page cache: they survive kill -9 of the process."""
        with self._lock:
            if self._closed:
                raise LogClosedError(f"log {self.directory} is closed")
            if assign_offsets and self._one_batch_fast:
                # The common produce: one batch of a leader append. Its header is read once
                # and checked exactly as validate_batches would; any doubt falls through to
                # the general path, which raises the precise error.
                h = _one_valid_batch(data, self._max_batch)
                if h is not None:
                    return self._append_one(data, h, h[1] + 12, leader_epoch, now_ms)
            now = _now_ms() if now_ms is None else now_ms
            iov, metas, size, max_ts, records, append_time, info, stamps = self._prepare(
                data, leader_epoch, assign_offsets, self._leo, now, 0)
            self._write(iov, metas, size, max_ts, now, stamps)
            result = AppendResult(metas[0][2], metas[-1][3], max_ts, append_time, records, size)
            self._after_append(result, info, leader_epoch)
            return result

    def _append_one(self, data: Buffer, h: tuple[int, ...], n: int, leader_epoch: int,
                    now_ms: int | None) -> AppendResult:
        """Append one validated batch (header fields `h`) at the log end, stamped."""
        base = self._leo
        last = base + h[6]
        max_ts = h[8]
        hooks = self.hooks
        info = None
        if hooks.before_append or hooks.on_append:
            info = _hook_info(h, n)
            for check in hooks.before_append:
                check(info, data)
        seg = self._segments[-1]
        size = seg.size
        if size:
            first_ts = seg.first_batch_ts
            if first_ts >= 0 and max_ts >= 0:  # Kafka's rule: batch time, else wall clock
                waited = max_ts - first_ts
            else:
                waited = (_now_ms() if now_ms is None else now_ms) - seg.created_ms
            if (size + n > self._segment_bytes or waited > self._segment_ms
                    or seg.index_full() or last - seg.base_offset > MAX_RELATIVE_OFFSET):
                seg = self._roll_at(base)
        elif last - seg.base_offset > MAX_RELATIVE_OFFSET:
            seg = self._roll_at(base)
        seg.append_batch(data, base, last, max_ts, leader_epoch)
        self._leo = last + 1
        result = _new_tuple(AppendResult, (base, last, max_ts if max_ts > -1 else -1, -1,
                                           h[12], n))
        self._unflushed_messages += h[12]
        for cb in hooks.on_append:
            cb(result, info, leader_epoch)  # type: ignore[arg-type]
        fm = self._flush_messages
        if fm is not None and self._unflushed_messages >= fm:
            self.flush()
        return result

    def append_many(self, items: Sequence[tuple[Buffer, int]], assign_offsets: bool = True,
                    *, now_ms: int | None = None) -> list[AppendResult | StorageError]:
        """Group commit: append several requests' data, each (data, leader_epoch), as ONE
        write (one space reservation, copied back to back). Each item gets its AppendResult,
        or the StorageError that refused it alone (a bad item does not fail the others). A
        disk error fails the whole group, unwritten."""
        with self._lock:
            if self._closed:
                raise LogClosedError(f"log {self.directory} is closed")
            now = _now_ms() if now_ms is None else now_ms
            out: list[AppendResult | StorageError] = []
            done: list[tuple[AppendResult, BatchesInfo | None, int]] = []
            iov: list[Buffer] = []
            metas: list[BatchMeta] = []
            stamps: list[Stamp] = []
            nxt, size, max_ts = self._leo, 0, -1
            fast = assign_offsets and self._one_batch_fast
            hooks = self.hooks
            with_hooks = bool(hooks.before_append or hooks.on_append)
            for data, epoch in items:
                h = _one_valid_batch(data, self._max_batch) if fast else None
                if h is not None:  # one batch, checked as append's fast path checks it
                    n = h[1] + 12
                    info = None
                    if with_hooks:  # as the general path: checked now, told after the write
                        info = _hook_info(h, n)
                        try:
                            for check in hooks.before_append:
                                check(info, data)
                        except StorageError as exc:
                            out.append(exc)
                            continue
                    last = nxt + h[6]
                    ts = h[8] if h[8] > -1 else -1
                    iov.append(data)
                    metas.append((size, n, nxt, last, h[8]))
                    stamps.append((size, nxt, n - 12, epoch))
                    res = _new_tuple(AppendResult, (nxt, last, ts, -1, h[12], n))
                    nxt = last + 1
                    size += n
                    if ts > max_ts:
                        max_ts = ts
                    out.append(res)
                    done.append((res, info, epoch))
                    continue
                try:
                    p = _Prepared(*self._prepare(data, epoch, assign_offsets, nxt, now, size))
                except StorageError as exc:
                    out.append(exc)
                    continue
                iov += p.iov
                metas += p.metas
                stamps += p.stamps
                nxt = p.metas[-1][3] + 1
                size += p.size
                max_ts = max(max_ts, p.max_ts)
                res = AppendResult(p.metas[0][2], nxt - 1, p.max_ts, p.append_time, p.records,
                                   p.size)
                out.append(res)
                done.append((res, p.info, epoch))
            if metas:
                self._write(iov, metas, size, max_ts, now, stamps)
                for res, info, epoch in done:
                    self._after_append(res, info, epoch)
            return out

    def _prepare(self, data: Buffer, leader_epoch: int, assign_offsets: bool, nxt: int,
                 now: int, at: int) -> tuple[list[Buffer], list[BatchMeta], int, int, int, int,
                                             BatchesInfo | None, list[Stamp]]:
        """Validate `data` and lay out what to write for offsets from `nxt`, `at` bytes into
        the coming write. Raises the StorageError that refuses it; writes nothing."""
        cfg = self.config
        hooks = self.hooks
        info: BatchesInfo | None = None
        scanned = None
        if not (hooks.before_append or hooks.on_append):
            scanned = _scan_batches(data, cfg.max_message_bytes, assign_offsets)
        if scanned is None:  # hooks want headers, or a bad batch: the canonical checks
            info = validate_batches(data, cfg.max_message_bytes, producer_batches=assign_offsets)
            scanned = [(h.position, h.size, h.base_offset, h.last_offset_delta,
                        h.max_timestamp, h.record_count) for h in info.batches]
            for check in hooks.before_append:
                check(info, data)
        mv = data if isinstance(data, memoryview) else memoryview(data)
        append_time = now if cfg.log_append_time and assign_offsets else -1
        metas: list[BatchMeta] = []
        stamps: list[Stamp] = []  # headers the segment stamps as it writes them
        max_ts, records = -1, 0
        copy: bytearray | None = None
        if append_time >= 0:
            copy = bytearray(mv)  # LogAppendTime rewrites CRC-covered fields: a private copy
        for pos, size, hbase, delta, ts, count in scanned:
            if assign_offsets:
                base = nxt
                if copy is not None:
                    stamp(copy, pos, base, leader_epoch)
                    if append_time >= 0:
                        stamp_log_append_time(copy, pos, size, append_time)
                        ts = append_time
                else:
                    stamps.append((at + pos, base, size - 12, leader_epoch))
            else:
                base = hbase
                if base < nxt:
                    raise InvalidRecordError(f"batch offset {base} is below the log end offset "
                                             f"{nxt} of {self.directory}")
            last = base + delta
            metas.append((at + pos, size, base, last, ts))
            if ts > max_ts:
                max_ts = ts
            records += count
            nxt = last + 1
        iov: list[Buffer] = [mv if copy is None else copy]
        return iov, metas, len(mv), max_ts, records, append_time, info, stamps

    def _write(self, iov: list[Buffer], metas: list[BatchMeta], size: int, max_ts: int,
               now: int, stamps: list[Stamp]) -> None:
        cfg = self.config
        seg = self._segments[-1]
        first_base, last_offset = metas[0][2], metas[-1][3]
        if (seg.size and (seg.size + size > cfg.segment_bytes
                          or seg.index_full()
                          or seg.time_waited_for_roll(now, max_ts)
                          > cfg.segment_ms - cfg.segment_jitter_ms)) \
                or last_offset - seg.base_offset > MAX_RELATIVE_OFFSET:
            seg = self._roll_at(first_base)
        seg.append(iov[0] if len(iov) == 1 else iov, metas, size, stamps)
        self._leo = last_offset + 1

    def _after_append(self, result: AppendResult, info: BatchesInfo | None,
                      leader_epoch: int) -> None:
        self._unflushed_messages += result.record_count
        for cb in self.hooks.on_append:
            cb(result, info, leader_epoch)  # type: ignore[arg-type]
        fm = self.config.flush_messages
        if fm is not None and self._unflushed_messages >= fm:
            self.flush()

    # ------------------------------------------------------------------ roll
    def roll(self) -> Segment:
        """Start a new active segment at the log end (no-op when the active one is empty)."""
        with self._lock:
            self._check_open()
            if self._segments[-1].size == 0:
                return self._segments[-1]
            return self._roll_at(self._leo)

    def _roll_at(self, base: int) -> Segment:
        old = self._segments[-1]
        new = _new_segment(self.directory, base, self.config)
        new.on_map = self._on_map
        old.seal()
        self._segments.append(new)
        self._bases.append(base)
        self._dir_dirty = True
        self.segment_generation += 1
        return new

    # ------------------------------------------------------------------ read
    def read(self, offset: int, max_bytes: int, max_offset: int | None = None,
             *, min_one_batch: bool = True) -> FetchData:
        """Whole batches from the one holding `offset`, up to `max_bytes` (the first batch is
        returned whole even when larger, KIP-74) and not past `max_offset` (exclusive, e.g.
        the high watermark). Raises OffsetOutOfRangeError outside [log start, log end]."""
        if self._closed:
            raise LogClosedError(f"log {self.directory} is closed")
        segments = self._segments
        bases = self._bases
        leo = self._leo
        start = self._log_start
        if offset < start or offset > leo:
            raise OffsetOutOfRangeError(
                f"offset {offset} is outside [{start}, {leo}] of {self.directory}")
        limit = leo if max_offset is None else min(max_offset, leo)
        slices: list[memoryview] = []
        total = 0
        if offset >= limit:
            return FetchData(slices, 0, start, leo, self._hw)
        i = max(bisect.bisect_right(bases, offset) - 1, 0)
        first = True
        while i < len(segments) and total < max_bytes:
            seg = segments[i]
            i += 1
            if first:
                hdr = seg.find(offset)
                if hdr is None:
                    continue  # offset past this segment's end (a gap left by compaction)
                pos = hdr[0]
                first = False
            else:
                pos = 0
            end = seg.read_end(pos, pos + max_bytes - total, limit, min_one_batch and not total)
            if end > pos:
                if not seg.active or end - pos > _TAIL_READ:  # not a hot read at the tail
                    seg.advise_sequential(pos, end)
                slices.append(seg.view(pos, end))
                total += end - pos
                if not seg.active:
                    self._touch(seg)
            if end < seg.size:
                break  # stopped by max_bytes or max_offset
        return FetchData(slices, total, start, leo, self._hw)

    # ------------------------------------------------------------------ search by time
    def offset_for_timestamp(self, timestamp: int) -> TimestampOffset | None:
        """First record with a timestamp >= `timestamp` (-2 earliest, -1 latest), or None."""
        self._check_open()
        if timestamp == EARLIEST_TIMESTAMP:
            return TimestampOffset(-1, self._log_start)
        if timestamp == LATEST_TIMESTAMP:
            return TimestampOffset(-1, self._leo)
        for seg in list(self._segments):
            if seg.max_timestamp < timestamp:
                continue
            _, from_offset = seg.time_index.lookup(timestamp)  # type: ignore[union-attr]
            hdr = seg.find(max(from_offset, self._log_start))
            if hdr is None:
                continue
            for pos, size, _base, last, max_ts in seg.walk(hdr[0]):
                if max_ts >= timestamp and last >= self._log_start:
                    return self._first_record_at_or_after(seg, pos, size, timestamp)
        return None

    def _first_record_at_or_after(self, seg: Segment, pos: int, size: int,
                                  timestamp: int) -> TimestampOffset:
        from qnode.storage.batch_reader import Batch

        batch = Batch(seg.view(pos, pos + size))
        h = batch.header
        for rec in batch.record_tuples(verify=False):
            if rec[1] >= timestamp and rec[0] >= self._log_start:
                return TimestampOffset(rec[1], rec[0], h.leader_epoch)
        return TimestampOffset(h.max_timestamp, max(h.base_offset, self._log_start),
                               h.leader_epoch)

    # ------------------------------------------------------------------ truncation
    def truncate_to(self, offset: int) -> int:
        """Remove everything from `offset` on (a batch holding `offset` goes whole; followers
        truncate at batch boundaries). Returns the new log end offset."""
        with self._lock:
            self._check_open()
            if offset >= self._leo:
                return self._leo
            if offset <= self._segments[0].base_offset or offset < self._log_start:
                self._truncate_fully(min(offset, self._leo))
            else:
                while len(self._segments) > 1 and self._segments[-1].base_offset >= offset:
                    gone = self._segments.pop()
                    self._forget_mapped(gone)
                    gone.delete()
                    self._bases.pop()
                seg = self._segments[-1]
                self._forget_mapped(seg)
                seg.unseal()
                seg.truncate_to(offset)
                self._leo = seg.next_offset
            self._after_truncate()
            return self._leo

    def _truncate_fully(self, start: int) -> None:
        for seg in self._segments:
            seg.delete()
        self._segments = [_new_segment(self.directory, start, self.config)]
        self._segments[0].on_map = self._on_map
        with self._mapped_lock:
            self._mapped.clear()
        self._bases = [start]
        self._leo = start
        self._log_start = start
        self._dir_dirty = True

    def truncate_fully_and_start_at(self, offset: int) -> None:
        """Drop the whole log and restart it empty at `offset` (a follower far behind)."""
        with self._lock:
            self._check_open()
            self._truncate_fully(offset)
            self._after_truncate()
            for cb in self.hooks.on_log_start:
                cb(offset)

    def _after_truncate(self) -> None:
        self._hw = min(self._hw, self._leo)
        self._recovery_point = min(self._recovery_point, self._leo)
        self.segment_generation += 1
        for cb in self.hooks.on_truncate:
            cb(self._leo)

    def delete_records_before(self, offset: int) -> int:
        """Advance the log start to `offset` (DeleteRecords); whole segments below it go.
        `offset` must not pass the high watermark. Returns the new log start."""
        with self._lock:
            self._check_open()
            if offset > self._hw:
                raise OffsetOutOfRangeError(
                    f"cannot delete records before {offset}: past the high watermark {self._hw}")
            if offset > self._log_start:
                self._log_start = offset
                for cb in self.hooks.on_log_start:
                    cb(offset)
            self.delete_segments_below_log_start()
            self.segment_generation += 1
            return self._log_start

    def delete_segments_below_log_start(self) -> int:
        """Delete closed segments that hold no offset >= log start; returns how many."""
        n = 0
        with self._lock:
            while len(self._segments) > 1 and self._segments[1].base_offset <= self._log_start:
                self._delete_oldest()
                n += 1
        return n

    def delete_oldest_segments(self, count: int) -> int:
        """Delete the `count` oldest segments (never the active one), moving the log start
        up to the next segment's base. Used by retention. Returns how many went."""
        n = 0
        with self._lock:
            self._check_open()
            while n < count and len(self._segments) > 1:
                self._delete_oldest()
                n += 1
            if n:
                new_start = max(self._log_start, self._segments[0].base_offset)
                if new_start != self._log_start:
                    self._log_start = new_start
                    for cb in self.hooks.on_log_start:
                        cb(new_start)
                self._hw = max(self._hw, self._log_start)
                self._recovery_point = max(self._recovery_point, self._log_start)
                self.segment_generation += 1
        return n

    def _delete_oldest(self) -> None:
        seg = self._segments.pop(0)
        self._bases.pop(0)
        self._forget_mapped(seg)
        self.segment_remover(seg)

    # ------------------------------------------------------------------ cleaner support
    def replace_segments(self, old: list[Segment], new: list[Segment]) -> None:
        """Swap cleaned segments in for `old` (closed, contiguous). Each of `new` was written
        with suffix `.cleaned`; crash-safety: `.cleaned` -> `.swap` (indexes first, the log
        file last: that rename commits), old segments deleted, `.swap` -> final names.
        Recovery removes `.cleaned` leftovers and finishes committed `.swap`s."""
        from qnode.storage.segment import CLEANED, SWAP

        with self._lock:
            self._check_open()
            if not old:
                raise ValueError("replace_segments needs at least one old segment")
            ids = [id(s) for s in self._segments]
            pos = [ids.index(id(s)) for s in old]
            if pos != list(range(pos[0], pos[0] + len(old))) or pos[-1] == len(ids) - 1:
                raise StorageError("replace_segments: old segments must be contiguous and closed")
            for seg in new:
                if seg.suffix != CLEANED:
                    raise StorageError(
                        f"cleaned segment {seg.base_offset} lacks the .cleaned suffix")
                seg.seal()
                seg.flush()
            for seg in new:
                seg.change_suffix(SWAP)
            fsync_dir(self.directory)
            for seg in old:
                self._forget_mapped(seg)
                self.segment_remover(seg)
            for seg in new:
                seg.on_map = self._on_map
                seg.unmap()
            for seg in new:
                seg.change_suffix("")
            fsync_dir(self.directory)
            self._segments[pos[0]:pos[-1] + 1] = sorted(new, key=lambda s: s.base_offset)
            self._bases = [s.base_offset for s in self._segments]
            self.segment_generation += 1

    # ------------------------------------------------------------------ flush / close
    def flush(self, upto: int | None = None) -> None:
        """fsync what lies between the recovery point and `upto` (default: the log end) and
        advance the recovery point there. Index pages are synced under the log lock; the
        data fsync runs without it, so a background flusher never stalls appends."""
        with self._lock:
            self._check_open()
            target = self._leo if upto is None else min(upto, self._leo)
            rp = self._recovery_point
            if target <= rp and not self._dir_dirty:
                if upto is None:
                    self._unflushed_messages = 0
                for cb in self.hooks.on_flush:
                    cb()
                return
            segs = [s for s in self._segments if s.base_offset < target and
                    (s is self._segments[-1] or s.next_offset > rp)] or [self._segments[-1]]
            for seg in segs:
                if not seg.exists():
                    raise SegmentMissingError(
                        f"segment file {seg.log_path} was deleted under the running log")
                seg.flush_indexes()
            dir_dirty, self._dir_dirty = self._dir_dirty, False
            if upto is None:
                self._unflushed_messages = 0
        for seg in segs:
            try:
                seg.flush_data()
            except (OSError, ValueError):
                if not seg.closed:  # a segment deleted meanwhile needs no flush
                    with self._lock:
                        self._dir_dirty = self._dir_dirty or dir_dirty
                    raise
        if dir_dirty:
            fsync_dir(self.directory)
        for cb in self.hooks.on_flush:
            cb()
        with self._lock:
            self._recovery_point = max(self._recovery_point, min(target, self._leo))
            self._last_flush_ms = _now_ms()

    @property
    def unflushed_rolled(self) -> bool:
        """A roll happened since the last flush: Kafka flushes the rolled segment then."""
        return self._recovery_point < self._segments[-1].base_offset

    def flush_due(self, now_ms: int) -> bool:
        """flush.ms has passed since the last flush and there is something to flush."""
        fms = self.config.flush_ms
        if fms is None or self._closed or self._recovery_point >= self._leo:
            return False
        return now_ms - self._last_flush_ms >= fms

    def maybe_flush(self, now_ms: int) -> bool:
        """Apply flush.ms; True when a flush happened."""
        if self.flush_due(now_ms):
            self.flush()
            return True
        return False

    def check_files(self) -> None:
        """Raise SegmentMissingError if a segment file vanished under the running log."""
        for seg in self._segments:
            if not seg.exists():
                raise SegmentMissingError(
                    f"segment file {seg.log_path} was deleted under the running log")

    def update_config(self, config: LogConfig) -> None:
        self.config = config

    @property
    def config(self) -> LogConfig:
        return self._config

    @config.setter
    def config(self, config: LogConfig) -> None:
        # what the append hot path reads of the config, read once here
        self._config = config
        self._one_batch_fast = not config.log_append_time
        self._max_batch = config.max_message_bytes
        self._segment_bytes = config.segment_bytes
        self._segment_ms = config.segment_ms - config.segment_jitter_ms
        self._flush_messages = config.flush_messages

    def close(self) -> None:
        """Flush, trim the active segment's indexes and mark the close clean."""
        with self._lock:
            if self._closed:
                return
            try:
                self.flush()
                for cb in self.hooks.on_close:
                    try:
                        cb()
                    except OSError:
                        pass  # best effort: without it, the next open replays more
                for seg in self._segments:
                    seg.close()
                try:
                    write_clean_shutdown(self.directory, self._leo)
                except OSError:
                    pass  # a full disk: the next open recovers the (already flushed) tail
            finally:
                self._closed = True
                for seg in self._segments:
                    seg.close()

    def close_without_flush(self) -> None:
        """Release files as a crash would: no flush, indexes left preallocated, no
        clean-shutdown mark (the next open recovers the tail)."""
        with self._lock:
            self._closed = True
            for seg in self._segments:
                seg.close(seal=False)

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        return (f"Log({self.directory!r}, start={self._log_start}, end={self._leo}, "
                f"hw={self._hw}, segments={len(self._segments)})")

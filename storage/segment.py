"""One segment of a partition log: `<base>.log` plus its `.index` and `.timeindex`.

The log's active segment is written through a shared read/write mapping of its file: an append
is a memcpy into the page cache (no syscall), which survives kill -9 of the process the moment
it is done. While active the file is as long as its mapping (sparse), with real blocks
allocated ahead of the data in chunks (fallocate: a full disk is a DiskFullError before any
byte is stored, never a SIGBUS). So an active segment's file ends in zeros past its data:
sealing trims them, and opening a segment cuts a zero tail a crash left (`_data_end`).
Segments made without a `capacity` (the cleaner's output) append with positional writes.
Reads are zero-copy memoryview slices of a mapping of the file; a truncation of the active
segment zeroes the cut range instead of shrinking the file, so a slice still being sent never
faults (SIGBUS). The segment only ever looks at batch headers; CRCs are checked when
recovering a tail.

Memory: mapped pages count in RSS while mapped, so the active segment keeps only a window
behind its tail mapped (older pages: MADV_DONTNEED, they stay in the page cache), sealing
drops the write mapping, and a closed segment maps its data and indexes only when read (its
owner, the Log, unmaps the least recently used: `on_map`, `unmap`).
"""

from __future__ import annotations

import errno
import mmap
import os
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from qnode.storage.checksum import crc32c
from qnode.storage.errors import DiskFullError, StorageError
from qnode.storage.offset_index import OffsetIndex, allocate, no_read_around
from qnode.storage.time_index import TimeIndex
from qnode.storage.write_vector import STAMP, Buffer, Stamp, stamped_iov

# RecordBatch v2 header prefix, up to and including maxTimestamp (Kafka's layout):
# baseOffset i64, batchLength i32, partitionLeaderEpoch i32, magic i8, crc u32,
# attributes i16, lastOffsetDelta i32, baseTimestamp i64, maxTimestamp i64.
HEADER_PREFIX = struct.Struct(">qiibIhiqq")
LOG_OVERHEAD = 12  # baseOffset + batchLength: the bytes not counted in batchLength
BATCH_HEADER_SIZE = 61
MIN_BATCH_LENGTH = BATCH_HEADER_SIZE - LOG_OVERHEAD
CRC_START = 21  # the CRC covers attributes .. end of batch
MAGIC_V2 = 2
MAX_RELATIVE_OFFSET = 0xFFFFFFFF
_MADV_POPULATE_READ = 22  # <linux/mman.h>; not exported by the mmap module of Python 3.11
_MADV_POPULATE_WRITE = 23
RESERVE_MIN = 64 * 1024  # blocks allocated ahead of the active segment's data: at least,
RESERVE_MAX = 4 << 20  # at most, and in between as much as the segment already holds
FOLIO_ALIGN = 2 << 20  # reservations end on this boundary (the largest page-cache folio)
# From this position on, an active segment asks for 2 MiB page-cache folios (MADV_HUGEPAGE):
# a quarter fewer CPU cycles per byte copied in (one fault and one zero-fill per 2 MiB), and
# a quiet partition whose segments stay small never pins 2 MiB of page cache.
HUGE_FROM = 4 << 20
POPULATE_FROM = HUGE_FROM  # and from here on, reserved chunks are mapped in one call
MAP_STEP = 64 << 20  # write mappings longer than this are a whole number of steps
# Mapped pages count in a process's RSS for as long as they stay mapped, page cache or not: a
# segment keeps at most about this much of its mapping resident behind the active tail (or
# around its readers) and drops the page-table entries of the rest (MADV_DONTNEED: on a
# shared file mapping the pages, dirty or not, stay in the page cache; a later access
# refaults them from there). Dropped every RELEASE_CHUNK bytes written or read.
RESIDENT_WINDOW = 16 << 20
RELEASE_CHUNK = 8 << 20
_ZERO_CHUNK = 1 << 20
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024

LOG_SUFFIX = ".log"
INDEX_SUFFIX = ".index"
TIMEINDEX_SUFFIX = ".timeindex"
SEGMENT_SUFFIXES = (LOG_SUFFIX, INDEX_SUFFIX, TIMEINDEX_SUFFIX)
DELETED = ".deleted"
CLEANED = ".cleaned"
SWAP = ".swap"

# (position in the appended buffer, size, base offset, last offset, max timestamp)
BatchMeta = tuple[int, int, int, int, int]


class SegmentMissingError(StorageError):
    """A segment file was deleted or replaced under a running log (the log dir is failing)."""


_LENGTH_MAGIC = struct.Struct(">ixxxxb")  # batchLength .. magic, from position 8


def _zeros(fd: int, start: int, end: int) -> bool:
    """Whether bytes [start, end) of the file are all zero (holes are skipped unread)."""
    pos = start
    while pos < end:
        try:
            data_at = os.lseek(fd, pos, os.SEEK_DATA)
            hole_at = min(os.lseek(fd, data_at, os.SEEK_HOLE), end)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return True  # only a hole from here on
            data_at, hole_at = pos, end  # no SEEK_DATA here: read it all
        while data_at < hole_at:
            chunk = os.pread(fd, min(_ZERO_CHUNK, hole_at - data_at), data_at)
            if not chunk:
                return True
            if chunk.count(0) != len(chunk):
                return False
            data_at += len(chunk)
        pos = max(hole_at, pos + 1)
    return True


def segment_name(base_offset: int) -> str:
    return f"{base_offset:020d}"


def segment_path(directory: str, base_offset: int, suffix: str, extra: str = "") -> str:
    return os.path.join(directory, segment_name(base_offset) + suffix + extra)


@dataclass(frozen=True)
class SegmentRecovery:
    """What recovering one segment's tail found."""

    validated_batches: int
    validated_bytes: int
    truncated_bytes: int
    reason: str | None  # why the tail was cut, None when it was clean


class Segment:
    """A `.log` file and its two indexes. Not thread-safe: the Log serialises writers."""

    def __init__(
        self,
        directory: str,
        base_offset: int,
        *,
        index_interval_bytes: int,
        index_max_bytes: int,
        active: bool,
        suffix: str = "",
        create: bool = False,
        capacity: int = 0,
    ) -> None:
        self.directory = directory
        self.base_offset = base_offset
        self.suffix = suffix
        self.index_interval_bytes = index_interval_bytes
        self.index_max_bytes = index_max_bytes
        self.log_path = segment_path(directory, base_offset, LOG_SUFFIX, suffix)
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        self._fd = os.open(self.log_path, flags, 0o644)
        st = os.fstat(self._fd)
        self._ino, self._dev = st.st_ino, st.st_dev  # what `exists` compares the path with
        self.index: OffsetIndex | None = None
        self.time_index: TimeIndex | None = None
        self._mm: mmap.mmap | None = None
        self._mv: memoryview | None = None
        self._mapped = 0  # bytes of the file the current mapping may be read at
        self.capacity = capacity  # expected size (segment.bytes): 0 = positional writes
        self._writing = False  # appends go through the mapping
        self._cap = 0  # length of the write mapping
        self._reserved = 0  # file bytes reserved (allocated) for the write mapping
        self._populate_writes = True  # MADV_POPULATE_WRITE works here (until it fails once)
        self._exposed = 0  # end of the furthest view handed out from the current mapping
        self._retired: list[tuple[mmap.mmap, int]] = []  # mappings views may still hold
        self._released = 0  # the write mapping's pages below this are not kept mapped
        self._release_at = RESIDENT_WINDOW + RELEASE_CHUNK  # write position of the next drop
        self._viewed = 0  # bytes handed out in views since pages were last dropped
        # called when a read mapping is made (the Log bounds how many stay mapped)
        self.on_map: Callable[[Segment], None] | None = None
        # (position, size, base, last, max ts) of the last batch appended, for tail reads
        self._tail: tuple[int, int, int, int, int] | None = None
        try:
            self.size = os.fstat(self._fd).st_size
            self.index = OffsetIndex(
                segment_path(directory, base_offset, INDEX_SUFFIX, suffix),
                base_offset, index_max_bytes, writable=active,
            )
            self.time_index = TimeIndex(
                segment_path(directory, base_offset, TIMEINDEX_SUFFIX, suffix),
                base_offset, index_max_bytes, writable=active,
            )
            self.index.on_map = self.time_index.on_map = self._index_mapped
            if self.size:
                self.size = self._data_end(self.size)
            if active and capacity > 0:
                self._map_for_write(self.size)
        except BaseException:
            self._close_files()
            if create:
                self._unlink_all()
            raise
        self.active = active
        self.created_ms = int(time.time() * 1000)
        self.first_batch_ts = -1
        self.max_timestamp = -1
        self.offset_of_max_timestamp = base_offset
        self.bytes_since_index = 0
        self._next_offset: int | None = base_offset if create else None
        if not create and self.size:
            self.first_batch_ts = self._first_batch_timestamp()
            ts, off = self.time_index.last_entry()
            self.max_timestamp, self.offset_of_max_timestamp = ts, off
            _, ipos = self.index.last_entry()
            self.bytes_since_index = self.size - ipos

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(
        cls, directory: str, base_offset: int, *, index_interval_bytes: int,
        index_max_bytes: int, suffix: str = "", capacity: int = 0,
    ) -> Segment:
        """A new empty active segment; DiskFullError (and no files left) if it cannot be made.
        `capacity` (the log's segment.bytes) makes appends go through a write mapping."""
        try:
            return cls(
                directory, base_offset, index_interval_bytes=index_interval_bytes,
                index_max_bytes=index_max_bytes, active=True, suffix=suffix, create=True,
                capacity=capacity,
            )
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise DiskFullError(f"no space to create segment {base_offset}: {exc}") from exc
            raise

    def _unlink_all(self) -> None:
        for sfx in SEGMENT_SUFFIXES:
            try:
                os.unlink(segment_path(self.directory, self.base_offset, sfx, self.suffix))
            except FileNotFoundError:
                pass

    # ------------------------------------------------------------------ reading
    def _remap(self) -> memoryview | None:
        """The mapping reads go through (a new read-only one of [0, size) when the current
        one is too short or gone); None when the segment is empty."""
        if self._writing:
            return self._mv  # the write mapping covers every byte of the segment
        self._drop_mapping()
        if not self.size:
            return None
        mm = mmap.mmap(self._fd, self.size, access=mmap.ACCESS_READ)
        mv = memoryview(mm)
        self._mm = mm
        self._mv = mv
        self._mapped = self.size
        self._viewed = 0
        if self.on_map is not None:
            self.on_map(self)
        return mv

    def _drop_mapping(self) -> None:
        """Forget the current mapping; outstanding slices keep it alive until they go (the
        last reference unmaps it). One that views may still hold past the data end is
        remembered: the file must not shrink under it (`_trim_file`)."""
        if self._mm is not None and self._exposed > self.size:
            self._retired.append((self._mm, self._exposed))
        self._mv = None
        self._mm = None
        self._mapped = 0
        self._exposed = 0

    def unmap(self) -> None:
        """Drop the read mappings of a closed segment, its indexes' too (the next read maps
        them again); a no-op for the write mappings of the active segment."""
        if not self._writing:
            self._drop_mapping()
        for idx in (self.index, self.time_index):
            if idx is not None:
                idx.unmap()

    def _index_mapped(self) -> None:
        if self.on_map is not None:
            self.on_map(self)

    @property
    def mapped(self) -> bool:
        """Whether this segment holds a mapping of its file or of an index now."""
        return self._mm is not None or any(
            idx is not None and idx.mapped for idx in (self.index, self.time_index))

    def _release(self, start: int, end: int) -> None:
        """Drop the page-table entries of [start, end) of the current mapping (rounded in to
        pages): RSS goes down, the page cache keeps the pages (dirty ones stay dirty)."""
        mm = self._mm
        page = mmap.PAGESIZE
        start = -(-start // page) * page
        end = min(end, self._mapped)
        end -= end % page
        if mm is None or end <= start:
            return
        try:
            mm.madvise(mmap.MADV_DONTNEED, start, end - start)
        except (OSError, ValueError):
            pass  # best effort: only memory accounting depends on it

    def _release_behind(self, end: int) -> None:
        """The tail moved RELEASE_CHUNK past the last drop: drop the write mapping's pages
        more than RESIDENT_WINDOW behind it (whole 2 MiB folios, never a part of one)."""
        limit = (end - RESIDENT_WINDOW) // FOLIO_ALIGN * FOLIO_ALIGN
        if limit > self._released:
            self._release(self._released, limit)
            self._released = limit
        self._release_at = limit + RESIDENT_WINDOW + RELEASE_CHUNK

    def _release_around(self, start: int, end: int) -> None:
        """Readers went through RELEASE_CHUNK bytes: keep [start, end) and (active segment)
        the window behind the tail mapped, drop the rest; readers elsewhere refault from the
        page cache."""
        self._viewed = 0
        low = start // FOLIO_ALIGN * FOLIO_ALIGN
        if self._writing:
            low = min(low, max(self.size - RESIDENT_WINDOW, 0) // FOLIO_ALIGN * FOLIO_ALIGN)
            self._release(0, low)
            self._released = max(self._released, low)
        else:
            self._release(0, low)
            self._release(-(-end // FOLIO_ALIGN) * FOLIO_ALIGN, self._mapped)

    def view(self, start: int, end: int) -> memoryview:
        """Zero-copy slice [start, end) of the segment file."""
        assert 0 <= start <= end <= self.size, (start, end, self.size)
        if start == end:
            return memoryview(b"")
        mv = self._mv  # read once: another thread may swap or drop the mapping
        if mv is None or end > self._mapped:
            mv = self._remap()
        assert mv is not None
        if end > self._exposed:
            self._exposed = end
        self._viewed += end - start
        if self._viewed >= RELEASE_CHUNK:
            self._release_around(start, end)
        return mv[start:end]

    # ------------------------------------------------------------------ the write mapping
    def _map_for_write(self, file_size: int) -> None:
        """Map the file read/write with room to grow. The file is extended (sparse) to the
        whole mapping while the segment is active: Python's mmap will not map past the end of
        a file, and growing a mapped file's size as data comes costs several times more in
        the kernel than stores within its size."""
        need = max(self.size, self.capacity, 1)
        cap = -(-need // MAP_STEP) * MAP_STEP if need > MAP_STEP else \
            -(-need // mmap.PAGESIZE) * mmap.PAGESIZE
        if os.fstat(self._fd).st_size < cap:
            os.ftruncate(self._fd, cap)
        mm = mmap.mmap(self._fd, cap, access=mmap.ACCESS_WRITE)
        if self._mm is not None and self._exposed:
            # views of the old mapping may outlive a later truncation: the file must not
            # shrink under them (`_trim_file` asks the old mapping whether any are left)
            self._retired.append((self._mm, self._exposed))
        # swapped in whole, never None in between: a reader thread may be taking a view
        self._mv = memoryview(mm)
        self._mm = mm
        self._exposed = 0
        self._mapped = cap
        no_read_around(mm, min(cap, HUGE_FROM))
        if cap > HUGE_FROM:
            try:  # 2 MiB page-cache folios past the first MiBs: a fault per 2 MiB copied
                mm.madvise(mmap.MADV_HUGEPAGE, HUGE_FROM, cap - HUGE_FROM)
            except (OSError, ValueError, AttributeError):
                pass
        self._cap = cap
        # Blocks past the mapping are no reservation *for* it: a remap after a cut to a short
        # size maps less than the file held, and an append between the two ends must go
        # through `_reserve` (which maps further), not into a store past the mapping.
        self._reserved = min(file_size, cap)
        self._writing = True
        self._released = 0
        self._release_at = min(self._release_at, self.size + RESIDENT_WINDOW + RELEASE_CHUNK)

    def _reserve(self, end: int, populate: bool = False) -> bool:
        """Put real blocks under the file up to past `end`, before anything is stored there
        through the mapping. False when the disk has no room for that: the caller then
        writes with pwrite, which says ENOSPC where a store into the mapping would SIGBUS.

        The reserved end is a multiple of FOLIO_ALIGN: the first store into a page-cache
        folio (large folios; 2 MiB ones past HUGE_FROM) reserves blocks for the whole folio,
        so no folio the copies touch may reach past what fallocate made real. `populate`: the
        caller copies through the mapping (append_batch), so map the new chunk in one call."""
        if end > self._cap:  # an append past the mapping: a longer mapping (rare)
            self.capacity = max(self.capacity, end)
            self._map_for_write(self._reserved)
        start = self._reserved
        ahead = min(RESERVE_MAX, max(RESERVE_MIN, self.size))
        target = min(-(-(end + ahead) // FOLIO_ALIGN) * FOLIO_ALIGN, self._cap)
        try:
            allocate(self._fd, start, target, "log")
        except DiskFullError:
            return False
        if populate and start >= POPULATE_FROM and self._populate_writes:
            # Map the chunk writable in one call instead of a fault per folio as the copies
            # reach it. Measured (bare copy loop, 128 MiB runs, page cache full): it is not
            # faster on average, but it removes the runs where the kernel's read-around of
            # the faulting file failed to get pages under reclaim and every later fault took
            # the slow one-page path (4-5x slower copies). The chunk's zeros become dirty
            # early: harmless, they are the file's contents until the data lands.
            try:
                assert self._mm is not None
                self._mm.madvise(_MADV_POPULATE_WRITE, start, target - start)
            except (OSError, ValueError):
                self._populate_writes = False  # before Linux 5.14, or refused: plain faults
        self._reserved = target
        return True

    def _trim_file(self) -> None:
        """Cut the file to its data (the reserved zero tail goes), but never under a mapping
        that views handed out before a truncation may still read (they would SIGBUS)."""
        keep = self.size
        alive = []
        for mm, end in self._retired:
            try:
                mm.close()  # refused while a view of it exists
            except BufferError:
                alive.append((mm, end))
                keep = max(keep, end)
        self._retired = alive
        if os.fstat(self._fd).st_size > keep:
            os.ftruncate(self._fd, keep)
        self._reserved = keep

    def _data_end(self, file_size: int) -> int:
        """End of the data of a file that may end in zeros (a reserved tail a crash left
        behind): a header walk from the last index entry; when it stops short of the end and
        only zeros follow, the file is cut there. Anything else is left to recovery."""
        assert self.index is not None
        _, pos = self.index.last_entry()
        if pos >= file_size:
            pos = 0
        fd = self._fd
        while pos + BATCH_HEADER_SIZE <= file_size:
            head = os.pread(fd, 17, pos)
            length, magic = _LENGTH_MAGIC.unpack_from(head, 8)
            if length < MIN_BATCH_LENGTH or magic != MAGIC_V2 or \
                    pos + length + LOG_OVERHEAD > file_size:
                break
            pos += length + LOG_OVERHEAD
        if pos >= file_size or not _zeros(fd, pos, file_size):
            return file_size
        os.ftruncate(fd, pos)
        return pos

    def advise_sequential(self, start: int, end: int) -> None:
        """Ask the kernel to read ahead [start, end) of a mapped range (cold sequential reads)."""
        if self._mm is not None and end > start:
            page = mmap.PAGESIZE
            a = start - start % page
            try:
                self._mm.madvise(mmap.MADV_WILLNEED, a, min(end, self._mapped) - a)
            except (OSError, ValueError):
                pass

    def _populate(self, start: int, end: int) -> None:
        """Read [start, end) ahead and map it in one go before a scan (MADV_POPULATE_READ,
        Linux 5.14+): one syscall instead of a page fault every few pages. Best effort."""
        # read-ahead first: the head of an active segment's mapping faults one page at a
        # time (no_read_around), so a cold scan there would read the disk page by page
        self.advise_sequential(start, end)
        if self._mm is None or end <= start:
            return
        a = start - start % mmap.PAGESIZE
        try:
            self._mm.madvise(_MADV_POPULATE_READ, a, min(end, self._mapped) - a)
        except (OSError, ValueError):
            pass  # before Linux 5.14: the read-ahead alone

    def header_at(self, pos: int) -> tuple[int, int, int, int, int, int, int, int, int]:
        """(base, length, leader epoch, magic, crc, attributes, last delta, base ts, max ts)."""
        mv = self._mv
        if mv is None or pos + HEADER_PREFIX.size > self._mapped:
            mv = self._remap()
        assert mv is not None
        return HEADER_PREFIX.unpack_from(mv, pos)

    def walk(self, start: int = 0, end: int | None = None
             ) -> Iterator[tuple[int, int, int, int, int]]:
        """Header-only walk: (position, size, base offset, last offset, max timestamp).
        Stops at the first structurally impossible header (the caller decides what that means)."""
        end = self.size if end is None else end
        pos = start
        mv = self._mv
        if mv is None or end > self._mapped:
            mv = self._remap()
        unpack = HEADER_PREFIX.unpack_from
        while pos + BATCH_HEADER_SIZE <= end:
            base, length, _ple, magic, _crc, _attrs, delta, _bts, max_ts = unpack(mv, pos)
            size = length + LOG_OVERHEAD
            if length < MIN_BATCH_LENGTH or magic != MAGIC_V2 or delta < 0 or pos + size > end:
                return
            yield pos, size, base, base + delta, max_ts
            pos += size

    def find(self, offset: int) -> tuple[int, int, int, int, int] | None:
        """The first batch whose last offset is >= `offset`, found from the sparse index by a
        short header walk; None when the segment ends before it."""
        tail = self._tail
        if tail is not None and tail[2] <= offset <= tail[3] and tail[0] + tail[1] == self.size:
            return tail  # a consumer at the end of the log reads the last batch appended
        assert self.index is not None
        _, pos = self.index.lookup(offset)
        if pos >= self.size:
            pos = 0  # a damaged index must not hide data: walk from the start
        for hdr in self.walk(pos):
            if hdr[3] >= offset:
                return hdr
        return None

    def read_end(self, start: int, max_end: int, limit: int, take_first: bool) -> int:
        """End of the longest run of whole batches from `start` (a batch boundary) that ends
        by `max_end` and holds only offsets below `limit`; with `take_first` the first batch
        comes whatever its size (KIP-74). The sparse index jumps close to either bound, so
        only a short header walk is needed however large the read."""
        size = self.size
        if max_end >= size and limit >= self.next_offset:
            return size  # the common tail read: everything to the end
        assert self.index is not None
        walk_from = start
        idx = self.index
        i = idx._search(1, max_end)
        j = idx._search(0, limit - self.base_offset)
        if i >= 0 and j >= 0:
            cand = min(idx.entry_at(i)[1], idx.entry_at(j)[1])
            if start < cand <= size:
                walk_from = cand
        end = walk_from
        for p, sz, _base, last, _ts in self.walk(walk_from):
            if last >= limit or p + sz > max_end:
                break
            end = p + sz
        if end == start and take_first:
            for _p, sz, _base, last, _ts in self.walk(start):
                if last < limit:
                    end = start + sz
                break
        return end

    @property
    def next_offset(self) -> int:
        """One past the last offset in this segment (its base when empty)."""
        if self._next_offset is None:
            assert self.index is not None
            off, pos = self.index.last_entry()
            nxt = self.base_offset
            for _, _, _, last, _ in self.walk(pos):
                nxt = last + 1
            if pos and nxt == self.base_offset:
                nxt = off  # the tail is unreadable: the index is the best we know
            self._next_offset = nxt
        return self._next_offset

    def largest_timestamp(self) -> int:
        """Largest batch timestamp, or the file's mtime when no batch carries one."""
        if self.max_timestamp >= 0:
            return self.max_timestamp
        return int(os.stat(self.log_path).st_mtime * 1000) if self.exists() else 0

    def time_waited_for_roll(self, now_ms: int, incoming_max_ts: int) -> int:
        """Kafka's rule: the incoming timestamp minus the segment's first batch timestamp,
        or wall-clock time since creation when the segment has no timestamped batch."""
        if self.first_batch_ts >= 0 and incoming_max_ts >= 0:
            return incoming_max_ts - self.first_batch_ts
        return now_ms - self.created_ms

    def _first_batch_timestamp(self) -> int:
        for _, _, _, _, max_ts in self.walk(0, min(self.size, 1 << 20)):
            return max_ts
        return -1

    def exists(self) -> bool:
        """False when the .log file was deleted or replaced under us (or is closed): one
        stat of the path, compared with the file we hold open."""
        if self._fd < 0:
            return False
        try:
            st = os.stat(self.log_path)
        except OSError:
            return False
        return st.st_ino == self._ino and st.st_dev == self._dev

    # ------------------------------------------------------------------ writing
    def index_full(self) -> bool:
        idx, tix = self.index, self.time_index
        assert idx is not None and tix is not None
        # one time-index slot stays free for the entry written when the segment is sealed
        return idx.entries >= idx.max_entries or tix.entries >= tix.max_entries - 1

    def append(self, data: bytes | bytearray | memoryview | Sequence[Buffer],
               batches: Sequence[BatchMeta], size: int | None = None,
               stamps: Sequence[Stamp] = ()) -> None:
        """Write whole batches at the end of the file and index them; `data` is one buffer or
        a list of buffers written back to back. Batch positions in `batches` and `stamps`
        are relative to the start of the write; each stamp's header fields (base offset,
        length, leader epoch) are written over the copy, never into the caller's buffers. On
        ENOSPC nothing is written (or the file is cut back) and DiskFullError raised: the
        segment is unchanged."""
        assert self.active and self.index is not None and self.time_index is not None
        # index blocks first: a full disk must refuse the append before any byte is written
        self.index.reserve(len(batches))
        self.time_index.reserve(len(batches) + 1)
        start = self.size
        if isinstance(data, (bytes, bytearray, memoryview)):
            data = [data]
        n = sum(len(b) for b in data) if size is None else size
        if self._writing and start + n > self._reserved:
            self._reserve(start + n)  # no room: pwrite below says ENOSPC, nothing is kept
        # Several batches go out in one pwritev, not through the mapping: measured here
        # (16 x 16 KiB per call, runs after the page cache was dropped), 1,809 MiB/s steady
        # against 347-1,071 MiB/s through the mapping, whose faults zero every new page-cache
        # folio before the copy overwrites it; write() never zeroes a page it fills whole.
        self._pwrite(stamped_iov(data, stamps), n, start)
        self.size = start + n
        interval = self.index_interval_bytes
        since = self.bytes_since_index
        idx, tix = self.index, self.time_index
        for pos, bsize, base, _last, max_ts in batches:
            if max_ts > self.max_timestamp:
                self.max_timestamp = max_ts
                self.offset_of_max_timestamp = base
            if since > interval:
                idx.append(base, start + pos)
                tix.append(self.max_timestamp, self.offset_of_max_timestamp)
                since = 0
            since += bsize
        self.bytes_since_index = since
        self._next_offset = batches[-1][3] + 1
        pos, bsize, base, last, max_ts = batches[-1]
        self._tail = (start + pos, bsize, base, last, max_ts)
        if self.first_batch_ts < 0 and start == 0 and batches:
            self.first_batch_ts = batches[0][4]

    def append_batch(self, data: Buffer, base_offset: int, last_offset: int, max_ts: int,
                     leader_epoch: int) -> None:
        """The append hot path: one whole, validated batch, copied into the write mapping and
        stamped there with `base_offset` and `leader_epoch` (leader_epoch < 0: the batch
        keeps its own offsets and epoch). The caller's buffer is not modified."""
        start = self.size
        n = len(data)
        end = start + n
        since = self.bytes_since_index
        index_it = since > self.index_interval_bytes
        if index_it:  # index blocks before any log byte: a full disk refuses the whole append
            idx, tix = self.index, self.time_index
            assert idx is not None and tix is not None
            if (idx.entries + 1) << 3 > idx._allocated:
                idx.reserve(1)
            if (tix.entries + 2) * 12 > tix._allocated:
                tix.reserve(2)
        if not self._writing:
            self.append(data, [(0, n, base_offset, last_offset, max_ts)], n,
                        () if leader_epoch < 0 else
                        ((0, base_offset, n - LOG_OVERHEAD, leader_epoch),))
            return
        if end > self._reserved and not self._reserve(end, populate=True):
            self.append(data, [(0, n, base_offset, last_offset, max_ts)], n,
                        () if leader_epoch < 0 else
                        ((0, base_offset, n - LOG_OVERHEAD, leader_epoch),))
            return  # a disk too full for a reservation: pwrite says ENOSPC cleanly
        self._mv[start:end] = data  # type: ignore[index]
        if leader_epoch >= 0:
            STAMP.pack_into(self._mm, start, base_offset, n - LOG_OVERHEAD,  # type: ignore
                             leader_epoch)
        self.size = end
        if end >= self._release_at:
            self._release_behind(end)
        if max_ts > self.max_timestamp:
            self.max_timestamp = max_ts
            self.offset_of_max_timestamp = base_offset
        if index_it:
            idx.append(base_offset, start)
            tix.append(self.max_timestamp, self.offset_of_max_timestamp)
            since = 0
        self.bytes_since_index = since + n
        self._next_offset = last_offset + 1
        self._tail = (start, n, base_offset, last_offset, max_ts)
        if start == 0:
            self.first_batch_ts = max_ts

    def _pwrite(self, data: Sequence[Buffer], n: int, start: int) -> None:
        done = 0
        try:
            if len(data) == 1:
                mv = memoryview(data[0])
                done = os.pwrite(self._fd, mv, start)
            else:
                if len(data) > _IOV_MAX:
                    data = [b"".join(data)]
                done = os.pwritev(self._fd, data, start)
                if done < n:
                    mv = memoryview(b"".join(data))
            while done < n:  # short writes happen only near ENOSPC; the next one raises
                done += os.pwrite(self._fd, mv[done:], start + done)
        except OSError as exc:
            try:
                if self._writing:  # the file stays as long as its mapping: zero, not cut
                    self._zero_range(start, start + done)
                else:
                    os.ftruncate(self._fd, start)
            except OSError:
                pass
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise DiskFullError(f"disk full appending to {self.log_path}: {exc}") from exc
            raise

    def flush(self) -> None:
        self.flush_indexes()
        self.flush_data()

    def flush_indexes(self) -> None:
        assert self.index is not None and self.time_index is not None
        self.index.flush()
        self.time_index.flush()

    def flush_data(self) -> None:
        fd = self._fd
        if fd >= 0:
            os.fdatasync(fd)

    def seal(self) -> None:
        """The segment stops being active: final time entry, indexes trimmed to size."""
        assert self.index is not None and self.time_index is not None
        if self.active:
            if self.max_timestamp >= 0:
                self.time_index.append(self.max_timestamp, self.offset_of_max_timestamp)
            self.index.trim()
            self.time_index.trim()
            self.index.unmap()  # mapped again by the first lookup (and bounded then)
            self.time_index.unmap()
            self.active = False
            if self._writing:
                self._writing = False
                self._trim_file()
                # Reads map [0, size) again when they come; views handed out keep this
                # mapping alive until they go (the last reference unmaps it).
                self._drop_mapping()

    def unseal(self) -> None:
        """Make a sealed segment writable again (after a truncation back into it)."""
        assert self.index is not None and self.time_index is not None
        if not self.active:
            self.index.reopen_writable(self.index_max_bytes)
            self.time_index.reopen_writable(self.index_max_bytes)
            self.active = True
            off, pos = self.index.last_entry()
            self.bytes_since_index = self.size - pos
            if self.capacity > 0:
                self._map_for_write(os.fstat(self._fd).st_size)

    def truncate_to(self, offset: int) -> int:
        """Drop every batch whose last offset is >= `offset` (a batch holding `offset` goes
        whole). Returns the bytes removed."""
        assert self.index is not None and self.time_index is not None
        hdr = self.find(offset)
        if hdr is None:
            return 0
        pos = hdr[0]
        return self.truncate_at(pos, hdr[2])

    def truncate_at(self, pos: int, next_offset: int) -> int:
        """Cut the file at byte `pos`, where the batch with base `next_offset` started."""
        assert self.index is not None and self.time_index is not None
        removed = self.size - pos
        self._tail = None
        if self._writing:
            # Zero the cut bytes instead of shrinking the file: a slice of them still being
            # sent reads zeros rather than faulting, and recovery sees the end of the log.
            self._zero_range(pos, self.size)
            self.size = pos
            if self._exposed > pos:
                self._map_for_write(self._reserved)  # later views come from a new mapping
        else:
            self._drop_mapping()
            os.ftruncate(self._fd, pos)
        self.size = pos
        self.index.truncate_to_position(pos)
        self.time_index.truncate_to(next_offset)
        self._next_offset = next_offset if pos else self.base_offset
        # the running max timestamp: last time entry, then the batches after the last index entry
        self.max_timestamp, self.offset_of_max_timestamp = self.time_index.last_entry()
        _, ipos = self.index.last_entry()
        for _, _, base, _, max_ts in self.walk(ipos):
            if max_ts > self.max_timestamp:
                self.max_timestamp, self.offset_of_max_timestamp = max_ts, base
        self.bytes_since_index = self.size - ipos if self.index.entries else self.size
        if pos == 0:
            self.first_batch_ts = -1
        return removed

    def _zero_range(self, start: int, end: int) -> None:
        """Write zeros over [start, end) (blocks stay allocated, so no SIGBUS on reuse)."""
        zeros = bytes(min(_ZERO_CHUNK, end - start))
        pos = start
        while pos < end:
            pos += os.pwrite(self._fd, memoryview(zeros)[:min(len(zeros), end - pos)], pos)

    # ------------------------------------------------------------------ recovery
    def recover(self, start_pos: int, expected_offset: int | None) -> SegmentRecovery:
        """Validate every batch from `start_pos` (CRC, magic, length, monotone offsets),
        re-index them, and cut the file at the first bad one."""
        assert self.index is not None and self.time_index is not None
        self.index.truncate_to_position(start_pos)
        self.time_index.truncate_to(expected_offset if expected_offset is not None
                                    else self.base_offset)
        _, ipos = self.index.last_entry()
        self.bytes_since_index = start_pos - ipos
        if start_pos == 0:
            self.max_timestamp, self.offset_of_max_timestamp = -1, self.base_offset
            self.first_batch_ts = -1
        else:
            self.max_timestamp, self.offset_of_max_timestamp = self.time_index.last_entry()
            for _, _, base, _, max_ts in self.walk(ipos, start_pos):
                if max_ts > self.max_timestamp:
                    self.max_timestamp, self.offset_of_max_timestamp = max_ts, base
        mv = self._remap()
        end = self.size
        self._populate(start_pos, end)
        pos = start_pos
        nxt = expected_offset if expected_offset is not None else self.base_offset
        batches = 0
        reason: str | None = None
        unpack = HEADER_PREFIX.unpack_from
        interval = self.index_interval_bytes
        while pos < end:
            if pos + BATCH_HEADER_SIZE > end:
                reason = f"torn batch header at position {pos}"
                break
            assert mv is not None
            base, length, _ple, magic, crc, _attrs, delta, _bts, max_ts = unpack(mv, pos)
            size = length + LOG_OVERHEAD
            if magic != MAGIC_V2:
                reason = f"magic {magic} at position {pos}"
                break
            if length < MIN_BATCH_LENGTH:
                reason = f"impossible batch length {length} at position {pos}"
                break
            if pos + size > end:
                reason = f"torn batch at position {pos} ({size} bytes, {end - pos} on disk)"
                break
            if crc32c(mv[pos + CRC_START : pos + size]) != crc:
                reason = f"CRC mismatch at position {pos}"
                break
            if delta < 0 or base < nxt or base + delta - self.base_offset > MAX_RELATIVE_OFFSET:
                reason = f"offset {base} out of order at position {pos} (expected >= {nxt})"
                break
            if max_ts > self.max_timestamp:
                self.max_timestamp, self.offset_of_max_timestamp = max_ts, base
            if self.bytes_since_index > interval and not self.index.is_full():
                self.index.append(base, pos)
                self.time_index.append(self.max_timestamp, self.offset_of_max_timestamp)
                self.bytes_since_index = 0
            self.bytes_since_index += size
            if pos == 0:
                self.first_batch_ts = max_ts
            nxt = base + delta + 1
            pos += size
            batches += 1
        truncated = 0
        if pos < end:
            truncated = self.truncate_at(pos, nxt)
        if self._writing:  # the scan mapped the whole tail: keep only the window behind it
            self._release_around(self.size, self.size)
        else:
            self._drop_mapping()  # a closed segment is mapped again when read
        self._next_offset = nxt if pos else self.base_offset
        return SegmentRecovery(batches, pos - start_pos, truncated, reason)

    def recover_tail(self, start_pos: int, expected_offset: int | None) -> SegmentRecovery:
        """`recover`, also for a sealed segment (its indexes are reopened, then trimmed)."""
        sealed = not self.active
        if sealed:
            self.unseal()
        rec = self.recover(start_pos, expected_offset)
        if sealed:
            self.seal()
        return rec

    def indexes_sane(self) -> bool:
        """Cheap O(1) checks of both indexes against the log (Kafka's sanity check)."""
        assert self.index is not None and self.time_index is not None
        idx, tix = self.index, self.time_index
        if idx.entries:
            rel, pos = idx.entry_at(idx.entries - 1)
            if pos >= max(self.size, 1) or (idx.entries > 1 and rel == 0):
                return False
            if idx.entries > 1:
                prel, ppos = idx.entry_at(idx.entries - 2)
                if prel >= rel or ppos >= pos:
                    return False
        if tix.entries > 1:
            ts, rel = tix.entry_at(tix.entries - 1)
            pts, prel = tix.entry_at(tix.entries - 2)
            if pts >= ts or prel >= rel:
                return False
        return True

    def rebuild_indexes(self) -> None:
        """Rebuild both indexes from a header walk of the whole file (no CRC checks)."""
        assert self.index is not None and self.time_index is not None
        sealed = not self.active
        if sealed:
            self.index.reopen_writable(self.index_max_bytes)
            self.time_index.reopen_writable(self.index_max_bytes)
        self.index.truncate_entries(0)
        self.time_index.truncate_entries(0)
        self.max_timestamp, self.offset_of_max_timestamp = -1, self.base_offset
        self.bytes_since_index = 0
        nxt = self.base_offset
        interval = self.index_interval_bytes
        end = 0
        for pos, size, base, last, max_ts in self.walk(0):
            if max_ts > self.max_timestamp:
                self.max_timestamp, self.offset_of_max_timestamp = max_ts, base
            if self.bytes_since_index > interval and not self.index.is_full():
                self.index.append(base, pos)
                self.time_index.append(self.max_timestamp, self.offset_of_max_timestamp)
                self.bytes_since_index = 0
            self.bytes_since_index += size
            nxt = last + 1
            end = pos + size
        self._next_offset = nxt
        if end == 0:
            self.first_batch_ts = -1
        if sealed:
            if self.max_timestamp >= 0:
                self.time_index.append(self.max_timestamp, self.offset_of_max_timestamp)
            self.index.trim()
            self.time_index.trim()

    def position_of(self, offset: int) -> int | None:
        """Byte position of the batch starting exactly at `offset` (header walk), else None."""
        assert self.index is not None
        _, pos = self.index.lookup(offset)
        for p, _, base, last, _ in self.walk(pos):
            if base == offset:
                return p
            if last >= offset:
                return None
        return self.size if self.next_offset == offset else None

    # ------------------------------------------------------------------ lifecycle
    def _close_files(self) -> None:
        for idx in (self.index, self.time_index):
            if idx is not None:
                idx.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def close(self, seal: bool = True) -> None:
        """Seal (trim indexes) and release the files; outstanding views stay valid.
        seal=False leaves the files as a crash would (preallocated indexes)."""
        if self._fd < 0:
            return
        if seal and self.active and self.exists():
            self.seal()
        elif self._retired and not self.active and self.exists():
            self._trim_file()  # a trim a truncation's live views held back
        self._writing = False
        self._drop_mapping()
        self._close_files()

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def file_paths(self) -> list[str]:
        return [segment_path(self.directory, self.base_offset, s, self.suffix)
                for s in SEGMENT_SUFFIXES]

    def change_suffix(self, new_suffix: str) -> None:
        """Rename the three files from the current suffix to `new_suffix` (log file last,
        so a `.log<suffix>` file on disk means its indexes were renamed before it)."""
        assert self.index is not None and self.time_index is not None
        self.index.rename(segment_path(self.directory, self.base_offset, INDEX_SUFFIX, new_suffix))
        self.time_index.rename(
            segment_path(self.directory, self.base_offset, TIMEINDEX_SUFFIX, new_suffix))
        new_log = segment_path(self.directory, self.base_offset, LOG_SUFFIX, new_suffix)
        os.rename(self.log_path, new_log)
        self.log_path = new_log
        self.suffix = new_suffix

    def delete(self) -> None:
        """Rename to `.deleted` (so a crash leaves an obvious leftover), then remove."""
        paths = self.file_paths()
        self.close()
        for p in paths:
            try:
                os.rename(p, p + DELETED)
                os.unlink(p + DELETED)
            except FileNotFoundError:
                pass

    def __repr__(self) -> str:
        return f"Segment(base={self.base_offset}, size={self.size}, active={self.active})"

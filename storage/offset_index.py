"""Sparse offset index of one segment: relative offset (u32) -> file position (u32).

The file is preallocated to `segment.index.bytes` while its segment is active and memory-mapped,
so an append is an 8-byte store into the page cache; it is trimmed to its entries when the
segment rolls or closes. Entries are big-endian, as Kafka writes them. `MappedIndex` is the
shared machinery (preallocate, map, find the valid entry count, trim) that `TimeIndex` reuses.
"""

from __future__ import annotations

import errno
import mmap
import os
import struct
from collections.abc import Callable

from qnode.storage.errors import DiskFullError

_OFFSET_ENTRY = struct.Struct(">II")


ALLOCATION_CHUNK = 64 * 1024


def allocate(fd: int, start: int, end: int, what: str = "index") -> None:
    """Reserve real blocks for [start, end) so a store through the mapping there cannot SIGBUS
    on a full disk (it gets DiskFullError here instead, naming `what` the bytes are for);
    filesystems without fallocate keep the sparse file (and Kafka's behaviour). Used for the
    indexes and for the active segment's log file."""
    if end <= start:
        return
    try:
        os.posix_fallocate(fd, start, end - start)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise DiskFullError(f"no space for {end - start} more {what} bytes: {exc}") from exc
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise


def no_read_around(mm: mmap.mmap, length: int | None = None) -> None:
    """Fault one page at a time in the first `length` bytes (default: all) of a mapping that
    is written where the file is still a hole or unwritten blocks. The kernel's read-around
    on a fault fills read_ahead_kb of page cache (8 MiB on this VM's disk) with those zeros:
    for a new segment's sparse 10 MiB indexes and the head of its log, 24 MiB of page cache
    per partition, and ~3 ms of first-touch per file (the 1,000-partition produce bench)."""
    try:
        mm.madvise(mmap.MADV_RANDOM, 0, len(mm) if length is None else length)
    except (OSError, ValueError):
        pass  # advice only


class MappedIndex:
    """A file of fixed-size entries, mapped read/write, whose valid entries form a prefix."""

    entry: struct.Struct = _OFFSET_ENTRY

    def __init__(self, path: str, base_offset: int, max_bytes: int, writable: bool) -> None:
        self.path = path
        self.base_offset = base_offset
        esize = self.entry.size
        self.max_entries = max(1, max_bytes // esize) if writable else 0
        self.writable = writable
        self._mm: mmap.mmap | None = None
        flags = os.O_RDWR | os.O_CREAT
        self._fd = os.open(path, flags, 0o644)
        try:
            file_size = os.fstat(self._fd).st_size
            file_entries = file_size // esize
            self._allocated = file_size  # bytes backed by real blocks (or data)
            if writable:
                capacity = max(self.max_entries, file_entries)
                self.max_entries = capacity
                if file_size < capacity * esize:
                    # sparse up to the cap (Kafka's preallocation); real blocks come in chunks
                    os.ftruncate(self._fd, capacity * esize)
                self._map(capacity * esize)
            else:
                self.max_entries = file_entries
                if file_entries:
                    self._map(file_entries * esize)
            self.entries = self._valid_prefix(file_entries)
            if writable:
                self._allocated = min(self._allocated, self.entries * esize)
                self.reserve(1)
            else:
                self._close_fd()
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- mapping
    def _close_fd(self) -> None:
        """A read-only index needs only its mapping (which holds its own dup of the fd):
        a closed segment then costs one descriptor per index, not two."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _map(self, length: int) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        if length > 0:
            mm = mmap.mmap(self._fd, length, access=mmap.ACCESS_WRITE)
            if self.writable:
                no_read_around(mm)
            self._mm = mm

    def _view(self) -> mmap.mmap:
        """The mapping, made again if `unmap` dropped it (a read-only index maps on use)."""
        mm = self._mm
        if mm is None:
            assert not self.writable and self.entries, f"index {self.path} has no mapping"
            fd = os.open(self.path, os.O_RDWR)
            try:
                mm = mmap.mmap(fd, self.entries * self.entry.size, access=mmap.ACCESS_WRITE)
            finally:
                os.close(fd)  # the mapping holds its own dup
            self._mm = mm
            if self.on_map is not None:
                self.on_map()
        return mm

    # called when a read-only index maps itself again (its segment's owner bounds them)
    on_map: Callable[[], None] | None = None

    def unmap(self) -> None:
        """Drop the mapping of a read-only index (the next lookup maps it again). Never
        closed here: a reader in another thread may still hold it; the last reference
        unmaps it."""
        if not self.writable:
            self._mm = None

    @property
    def mapped(self) -> bool:
        return self._mm is not None

    def _rel(self, i: int) -> int:
        return struct.unpack_from(">I", self._view(), i * self.entry.size + self._rel_pos)[0]

    _rel_pos = 0  # byte position of the relative offset inside an entry

    def _valid_prefix(self, n: int) -> int:
        """Entries are written in order with strictly increasing relative offsets, and a never
        written slot is zero: so for i >= 1 "slot i is used" is a prefix property."""
        if n == 0 or self._mm is None:
            return 0
        if n == 1 or self._rel(n - 1) != 0:
            return n
        lo, hi = 1, n - 1  # slot hi is unused; find the first unused slot in [1, hi]
        while lo < hi:
            mid = (lo + hi) // 2
            if self._rel(mid) != 0:
                lo = mid + 1
            else:
                hi = mid
        if lo == 1 and self._is_zero(0):
            return 0
        return lo

    def _is_zero(self, i: int) -> bool:
        esize = self.entry.size
        return self._view()[i * esize : (i + 1) * esize] == bytes(esize)

    # ---------------------------------------------------------------- entries
    def reserve(self, n: int) -> None:
        """Make sure the next `n` entries land on allocated blocks (DiskFullError if not)."""
        esize = self.entry.size
        need = min(self.entries + n, self.max_entries) * esize
        if need > self._allocated:
            end = min(-(-need // ALLOCATION_CHUNK) * ALLOCATION_CHUNK, self.max_entries * esize)
            allocate(self._fd, self._allocated, max(end, need))
            self._allocated = max(end, need)

    def is_full(self) -> bool:
        return self.entries >= self.max_entries

    def entry_at(self, i: int) -> tuple[int, ...]:
        assert 0 <= i < self.entries
        return self.entry.unpack_from(self._view(), i * self.entry.size)

    def last(self) -> tuple[int, ...] | None:
        """The last entry's fields (cached: the append path reads it every time)."""
        if self._last is None and self.entries:
            self._last = self.entry_at(self.entries - 1)
        return self._last

    _last: tuple[int, ...] | None = None

    def _put(self, *fields: int) -> None:
        if not self.writable:
            raise ValueError(f"index {self.path} is read-only (its segment was rolled)")
        if self.entries >= self.max_entries:
            raise ValueError(f"index {self.path} is full")
        assert self._mm is not None
        if (self.entries + 1) * self.entry.size > self._allocated:
            self.reserve(1)
        self.entry.pack_into(self._mm, self.entries * self.entry.size, *fields)
        self.entries += 1
        self._last = fields

    def truncate_entries(self, n: int) -> None:
        """Keep the first n entries; the dropped slots are zeroed so a reopen cannot see them."""
        if n >= self.entries:
            return
        esize = self.entry.size
        self._view()[n * esize : self.entries * esize] = bytes((self.entries - n) * esize)
        self.entries = n
        self._last = None

    def _search(self, key_of_entry: int, target: int) -> int:
        """Index of the last entry whose field `key_of_entry` is <= target, or -1."""
        lo, hi = 0, self.entries - 1
        found = -1
        if hi < 0:
            return -1
        mm = self._mm if self._mm is not None else self._view()
        unpack = self.entry.unpack_from
        esize = self.entry.size
        while lo <= hi:
            mid = (lo + hi) >> 1
            if unpack(mm, mid * esize)[key_of_entry] <= target:
                found = mid
                lo = mid + 1
            else:
                hi = mid - 1
        return found

    # ---------------------------------------------------------------- lifecycle
    def flush(self) -> None:
        if self._mm is not None and self.entries:
            self._mm.flush()

    def trim(self) -> None:
        """Shrink the file to its entries and stop accepting appends (segment rolled)."""
        size = self.entries * self.entry.size
        if self._mm is not None:
            self._mm.flush()
            self._mm.close()
            self._mm = None
        os.ftruncate(self._fd, size)
        self._allocated = size
        self.max_entries = self.entries
        self.writable = False
        if size:
            self._mm = mmap.mmap(self._fd, size, access=mmap.ACCESS_WRITE)
        self._close_fd()

    def reopen_writable(self, max_bytes: int) -> None:
        """Extend a trimmed index again (the segment became active again after a truncation)."""
        if self.writable:
            return
        capacity = max(self.entries, max_bytes // self.entry.size, 1)
        if self._fd < 0:
            self._fd = os.open(self.path, os.O_RDWR)
        self._allocated = self.entries * self.entry.size
        os.ftruncate(self._fd, capacity * self.entry.size)
        self.max_entries = capacity
        self.writable = True
        self._map(capacity * self.entry.size)
        self.reserve(1)

    def rename(self, new_path: str) -> None:
        os.rename(self.path, new_path)
        self.path = new_path

    def close(self) -> None:
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:  # a caller still holds a view; the mapping dies with it
                pass
            self._mm = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class OffsetIndex(MappedIndex):
    """relative offset -> position, one entry per `index.interval.bytes` of log."""

    entry = _OFFSET_ENTRY
    _rel_pos = 0

    def append(self, offset: int, position: int) -> None:
        rel = offset - self.base_offset
        last = self._last if self._last is not None else self.last()
        # a non-monotone index would send lookups to the wrong batch: refuse it loudly
        if not 0 <= rel <= 0xFFFFFFFF or (last is not None and (rel <= last[0] or
                                                              position <= last[1])):
            raise AssertionError(f"index {self.path}: entry ({rel}, {position}) after {last}")
        entries = self.entries
        if not self.writable or entries >= self.max_entries or (entries + 1) << 3 > \
                self._allocated:
            self._put(rel, position)  # raises the precise error, or allocates more
            return
        _OFFSET_ENTRY.pack_into(self._mm, entries << 3, rel, position)  # type: ignore[arg-type]
        self.entries = entries + 1
        self._last = (rel, position)

    def lookup(self, offset: int) -> tuple[int, int]:
        """(offset, position) of the last entry at or below `offset`, else (base, 0)."""
        i = self._search(0, offset - self.base_offset)
        if i < 0:
            return self.base_offset, 0
        rel, pos = self.entry_at(i)
        return self.base_offset + rel, pos

    def last_entry(self) -> tuple[int, int]:
        if not self.entries:
            return self.base_offset, 0
        rel, pos = self.entry_at(self.entries - 1)
        return self.base_offset + rel, pos

    def truncate_to(self, offset: int) -> None:
        """Drop entries for offsets >= `offset`."""
        self.truncate_entries(self._search(0, offset - self.base_offset - 1) + 1)

    def truncate_to_position(self, position: int) -> None:
        """Drop entries pointing at or past `position`."""
        self.truncate_entries(self._search(1, position - 1) + 1)

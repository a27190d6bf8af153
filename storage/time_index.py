"""Sparse time index of one segment: timestamp (i64) -> relative offset (u32).

An entry (T, r) is written when the segment's running maximum timestamp rises to T at the
batch starting at relative offset r. So every batch before r has a max timestamp below T,
and the first batch with a timestamp >= t can only start at or after the last entry with
T <= t: that is where a search by time begins its header walk.
"""

from __future__ import annotations

import struct

from qnode.storage.offset_index import MappedIndex

_TIME_ENTRY = struct.Struct(">qI")


class TimeIndex(MappedIndex):
    entry = _TIME_ENTRY
    _rel_pos = 8

    def append(self, timestamp: int, offset: int) -> None:
        """Record that the running max timestamp reached `timestamp` at batch `offset`;
        ignored unless both strictly increase (the index is sparse and monotone)."""
        rel = offset - self.base_offset
        assert 0 <= rel <= 0xFFFFFFFF
        last = self._last if self._last is not None else self.last()
        if last is not None and (timestamp <= last[0] or rel <= last[1]):
            return
        entries = self.entries
        if not self.writable or entries >= self.max_entries or \
                (entries + 1) * 12 > self._allocated:
            self._put(timestamp, rel)  # raises the precise error, or allocates more
            return
        _TIME_ENTRY.pack_into(self._mm, entries * 12, timestamp, rel)  # type: ignore[arg-type]
        self.entries = entries + 1
        self._last = (timestamp, rel)

    def lookup(self, timestamp: int) -> tuple[int, int]:
        """(timestamp, offset) of the last entry with timestamp <= `timestamp`, else (-1, base)."""
        i = self._search(0, timestamp)
        if i < 0:
            return -1, self.base_offset
        ts, rel = self.entry_at(i)
        return ts, self.base_offset + rel

    def last_entry(self) -> tuple[int, int]:
        """(max timestamp, offset) of the last entry, or (-1, base) when empty."""
        if not self.entries:
            return -1, self.base_offset
        ts, rel = self.entry_at(self.entries - 1)
        return ts, self.base_offset + rel

    def truncate_to(self, offset: int) -> None:
        """Drop entries for offsets >= `offset` (linear from the end: truncation is rare)."""
        n = self.entries
        while n and self.entry_at(n - 1)[1] >= offset - self.base_offset:
            n -= 1
        self.truncate_entries(n)

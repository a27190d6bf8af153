"""Bounded key-hash → latest-offset map of the log cleaner.

Compaction needs, for every key in the dirty part of a log, the offset of its latest
record. Holding the keys themselves would cost unbounded memory, so, as Kafka's
SkimpyOffsetMap does, the map stores only a 64-bit hash of each key (xxhash64) and the
offset, in a fixed-size open-addressing table allocated once from a byte budget
(`log.cleaner.dedupe.buffer.size`). Each slot is 16 bytes: hash, offset. Two different
keys with the same 64-bit hash would merge; at 2**-64 per pair this is accepted, as Kafka
accepts it for its MD5 prefix.

When the table reaches its load factor it reports `full`; the cleaner then cleans the
prefix of the log the map covers and continues in the next round.
"""

from __future__ import annotations

from array import array

import xxhash

SLOT_BYTES = 16
EMPTY = 0  # hash value marking a free slot; a real hash of 0 is stored as 1


def key_hash(key: bytes | bytearray | memoryview) -> int:
    """The 64-bit hash the map keys on (never EMPTY)."""
    h = xxhash.xxh64_intdigest(key)
    return h if h != EMPTY else 1


class OffsetMap:
    """Fixed-size open-addressing table (linear probing) of key hash → latest offset."""

    def __init__(self, memory_bytes: int, load_factor: float = 0.9) -> None:
        slots = memory_bytes // SLOT_BYTES
        if slots < 2:
            raise ValueError(
                f"offset map needs at least {2 * SLOT_BYTES} bytes, got {memory_bytes}")
        if not 0.0 < load_factor <= 1.0:
            raise ValueError(f"load factor must be in (0, 1], got {load_factor}")
        self.slots = slots
        self.max_entries = max(1, min(slots - 1, int(slots * load_factor)))
        self._hashes = array("Q", bytes(8 * slots))
        self._offsets = array("q", bytes(8 * slots))
        self.size = 0
        self.latest_offset = -1  # largest offset put since the last clear
        self.lookups = 0
        self.probes = 0

    @property
    def full(self) -> bool:
        return self.size >= self.max_entries

    @property
    def utilization(self) -> float:
        return self.size / self.slots

    def put(self, h: int, offset: int) -> None:
        """Map hash `h` to `offset` (later puts of a hash win). Caller checks `full` first."""
        hashes = self._hashes
        slots = self.slots
        i = h % slots
        while True:
            cur = hashes[i]
            if cur == h:
                break
            if cur == EMPTY:
                if self.size >= self.max_entries:
                    raise OverflowError("offset map is full")
                hashes[i] = h
                self.size += 1
                break
            i += 1
            if i == slots:
                i = 0
        self._offsets[i] = offset
        if offset > self.latest_offset:
            self.latest_offset = offset

    def get(self, h: int) -> int:
        """The offset stored for hash `h`, or -1."""
        hashes = self._hashes
        slots = self.slots
        i = h % slots
        self.lookups += 1
        while True:
            cur = hashes[i]
            if cur == h:
                return self._offsets[i]
            if cur == EMPTY:
                return -1
            self.probes += 1
            i += 1
            if i == slots:
                i = 0

    def clear(self) -> None:
        if self.size:  # a fresh or already cleared table needs no zeroing
            self._hashes = array("Q", bytes(8 * self.slots))
            self._offsets = array("q", bytes(8 * self.slots))
        self.size = 0
        self.latest_offset = -1
        self.lookups = self.probes = 0

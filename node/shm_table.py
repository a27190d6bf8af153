"""Per-worker partition-state table in POSIX shared memory, one seqlock per row.

The owning worker (`ShmTable`) publishes, for every partition replica it owns, LEO, HW, LSO,
log start, leader epoch, active segment base and segment generation. Any process of the node
(`ShmTableReader`: the coordinator for Metadata offsets, the CLI, a local consumer) reads a
consistent row without asking the worker.

Layout: a 64-byte header (magic, layout version, capacity, row size, owner pid, incarnation,
rows handed out, and a counter the writer bumps each time a row is taken or freed) then
`capacity` rows of `ROW_SIZE` bytes. Row: seq u64 | topic hash u64 | partition i32 |
in-use u32 | leo, hw, lso, log_start, segment base, segment generation i64 | leader epoch i32 |
pad | topic name length u16 + UTF-8 name (truncated to what fits; the hash is the key).

Seqlock: the single writer bumps `seq` to odd, writes the row, bumps it to even. A reader
copies the row and re-reads `seq`; an odd value or a changed one means a write overlapped and
it retries (bounded: a writer killed mid-write leaves an odd seq, and readers must not hang).
The seq word is written and read as one aligned 8-byte store/load through a `Q` memoryview:
`struct.pack_into` first zeroes its target, and a seq passing through 0 would let a reader
that saw 0 before and after a write accept a torn row. x86 keeps stores (and loads) in
program order, so no further fence is needed there.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass

import posix_ipc
import xxhash

MAGIC = b"QNSHMTB1"
HEADER = struct.Struct("<8sIIIIQ")  # magic, layout version, capacity, row size, pid, incarnation
HEADER_SIZE = 64
USED = struct.Struct("<I")  # rows ever handed out (readers scan no further)
USED_OFFSET = HEADER.size
# bumped after each allocate/free: a reader rescans the rows for a partition it cannot find
# only when this moved since its last scan (a miss used to rescan every row, every time)
SLOTS_CHANGED_WORD = 40 >> 3
LAYOUT_VERSION = 2
ROW_SIZE = 256
KEY = struct.Struct("<QiI")  # topic hash, partition, in use  (at row offset 8)
VALUES = struct.Struct("<qqqqqqi4x")  # leo hw lso log_start seg_base seg_gen epoch (offset 24)
ROW = struct.Struct("<QQiIqqqqqqi4xH")  # seq + key + values + name length (one copy for readers)
NAME_OFFSET = ROW.size
MAX_NAME_BYTES = ROW_SIZE - NAME_OFFSET
VALUES_OFFSET = 8 + KEY.size
DEFAULT_CAPACITY = 16384  # tmpfs is sparse: untouched rows cost no memory
READ_RETRIES = 100_000

assert VALUES_OFFSET + VALUES.size + 2 == ROW.size <= ROW_SIZE


class ShmTableError(Exception):
    """The table is full, missing, of another layout, or a row stayed torn."""


@dataclass(frozen=True, slots=True)
class PartitionState:
    topic: str  # possibly truncated: match on (topic_hash, partition)
    partition: int
    log_end_offset: int
    high_watermark: int
    last_stable_offset: int
    log_start_offset: int
    leader_epoch: int
    active_segment_base: int
    segment_generation: int
    topic_hash: int


def topic_hash(topic: str) -> int:
    return xxhash.xxh64_intdigest(topic.encode())


def shm_name(node_id: int, data_dir: str, worker_id: int) -> str:
    """`/qnode.<node_id>.<data_dir hash 8 hex>.w<worker_id>` (docs/internals.md §3)."""
    digest = xxhash.xxh32_hexdigest(os.path.realpath(data_dir).encode())
    return f"/qnode.{node_id}.{digest}.w{worker_id}"


def _map(name: str, size: int | None, create: bool) -> tuple[mmap.mmap, int]:
    if create:
        try:
            shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, size=size)
        except posix_ipc.ExistentialError:
            # left behind by a crashed owner of the same name: replace it
            posix_ipc.unlink_shared_memory(name)
            shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, size=size)
    else:
        try:
            shm = posix_ipc.SharedMemory(name)
        except posix_ipc.ExistentialError:
            raise ShmTableError(f"shared-memory table {name} does not exist") from None
    try:
        ino = os.fstat(shm.fd).st_ino
        prot = mmap.PROT_READ | mmap.PROT_WRITE if create else mmap.PROT_READ
        mm = mmap.mmap(shm.fd, shm.size, mmap.MAP_SHARED, prot)
    finally:
        shm.close_fd()
    return mm, ino


class ShmTable:
    """The writer side: one per worker, created at start, unlinked at clean exit."""

    def __init__(self, name: str, capacity: int = DEFAULT_CAPACITY) -> None:
        self.name = name
        self.capacity = capacity
        self._mm, _ = _map(name, HEADER_SIZE + capacity * ROW_SIZE, create=True)
        self._words = memoryview(self._mm).cast("Q")  # seq words: one aligned 8-byte store
        incarnation = time.time_ns()
        HEADER.pack_into(
            self._mm, 0, MAGIC, LAYOUT_VERSION, capacity, ROW_SIZE, os.getpid(), incarnation
        )
        self._seq = [0] * capacity
        self._slots: dict[tuple[str, int], int] = {}
        self._free = list(range(capacity - 1, -1, -1))  # pop() hands out low slots first
        self._used = 0
        self._closed = False

    # -- slots ---------------------------------------------------------------------------

    def slot_of(self, topic: str, partition: int) -> int | None:
        return self._slots.get((topic, partition))

    def allocate(self, topic: str, partition: int) -> int:
        """The row of (topic, partition), taking a free one on first use."""
        key = (topic, partition)
        slot = self._slots.get(key)
        if slot is not None:
            return slot
        if not self._free:
            raise ShmTableError(f"shared-memory table {self.name} is full ({self.capacity} rows)")
        slot = self._free.pop()
        if slot >= self._used:
            self._used = slot + 1
            USED.pack_into(self._mm, USED_OFFSET, self._used)
        name = topic.encode()[:MAX_NAME_BYTES]
        off = HEADER_SIZE + slot * ROW_SIZE
        self._begin(slot, off)
        KEY.pack_into(self._mm, off + 8, topic_hash(topic), partition, 1)
        VALUES.pack_into(self._mm, off + VALUES_OFFSET, 0, 0, 0, 0, 0, 0, -1)
        struct.pack_into(f"<H{len(name)}s", self._mm, off + ROW.size - 2, len(name), name)
        self._end(slot, off)
        self._slots[key] = slot
        self._words[SLOTS_CHANGED_WORD] += 1
        return slot

    def free(self, topic: str, partition: int) -> None:
        """Release the row of a deleted partition; readers holding its slot see it vanish."""
        slot = self._slots.pop((topic, partition), None)
        if slot is None:
            return
        off = HEADER_SIZE + slot * ROW_SIZE
        self._begin(slot, off)
        KEY.pack_into(self._mm, off + 8, 0, 0, 0)
        self._end(slot, off)
        self._free.append(slot)
        self._words[SLOTS_CHANGED_WORD] += 1

    # -- updates -------------------------------------------------------------------------

    def _begin(self, slot: int, off: int) -> None:
        seq = self._seq[slot] + 1
        self._seq[slot] = seq
        self._words[off >> 3] = seq

    def _end(self, slot: int, off: int) -> None:
        seq = self._seq[slot] + 1
        self._seq[slot] = seq
        self._words[off >> 3] = seq

    def update(
        self,
        slot: int,
        leo: int,
        hw: int,
        lso: int,
        log_start: int,
        leader_epoch: int,
        segment_base: int,
        segment_generation: int,
    ) -> None:
        """Publish a partition's state (after every append: a few hundred nanoseconds)."""
        off = HEADER_SIZE + slot * ROW_SIZE
        seqs = self._seq
        seq = seqs[slot]
        words = self._words
        words[off >> 3] = seq + 1
        VALUES.pack_into(
            self._mm,
            off + VALUES_OFFSET,
            leo,
            hw,
            lso,
            log_start,
            segment_base,
            segment_generation,
            leader_epoch,
        )
        words[off >> 3] = seq + 2
        seqs[slot] = seq + 2

    def close(self, unlink: bool = True) -> None:
        if self._closed:
            return
        self._closed = True
        self._words.release()
        self._mm.close()
        if unlink:
            try:
                posix_ipc.unlink_shared_memory(self.name)
            except posix_ipc.ExistentialError:
                pass

    def __enter__(self) -> ShmTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ShmTableReader:
    """Read-only view of a worker's table from any process of the node."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._mm, self._ino = _map(name, None, create=False)
        if len(self._mm) < HEADER_SIZE:
            self._mm.close()
            raise ShmTableError(f"shared-memory table {name} is not initialised")
        magic, version, capacity, row_size, pid, incarnation = HEADER.unpack_from(self._mm, 0)
        if magic != MAGIC or version != LAYOUT_VERSION or row_size != ROW_SIZE:
            self._mm.close()
            raise ShmTableError(f"shared-memory table {name} has another layout")
        if len(self._mm) < HEADER_SIZE + capacity * ROW_SIZE:
            self._mm.close()
            raise ShmTableError(f"shared-memory table {name} is truncated")
        self.capacity = capacity
        self._words = memoryview(self._mm).cast("Q")  # seq words: one aligned 8-byte load
        self.owner_pid = pid
        self.incarnation = incarnation
        self._index: dict[tuple[int, int], int] = {}
        self._scanned_at = -1  # SLOTS_CHANGED at the start of the last full scan
        self.scans = 0

    def is_stale(self) -> bool:
        """True when the owner was replaced (restart) or removed the table: re-open by name."""
        try:
            return os.stat("/dev/shm" + self.name).st_ino != self._ino
        except FileNotFoundError:
            return True

    def _read_row(self, slot: int) -> tuple[tuple, bytes]:
        """(row fields, topic name bytes), copied between two equal even seq reads."""
        off = HEADER_SIZE + slot * ROW_SIZE
        mm = self._mm
        words = self._words
        i = off >> 3
        for attempt in range(READ_RETRIES):
            seq = words[i]  # one aligned 8-byte load
            if not seq & 1:
                row = ROW.unpack_from(mm, off)
                name = mm[off + NAME_OFFSET : off + NAME_OFFSET + min(row[11], MAX_NAME_BYTES)]
                if words[i] == seq:
                    return row, name
            if attempt > 100:
                time.sleep(0)  # let a descheduled writer finish its write
        raise ShmTableError(f"row {slot} of {self.name} stayed torn (writer died mid-write?)")

    def _used(self) -> int:
        return min(USED.unpack_from(self._mm, USED_OFFSET)[0], self.capacity)

    @staticmethod
    def _state(row: tuple, name: bytes) -> PartitionState:
        _, th, part, _, leo, hw, lso, start, base, gen, epoch, _ = row
        return PartitionState(
            name.decode(errors="replace"), part, leo, hw, lso, start, epoch, base, gen, th
        )

    def get(self, topic: str, partition: int) -> PartitionState | None:
        """The consistent state of (topic, partition), or None if this table does not hold it."""
        key = (topic_hash(topic), partition)
        slot = self._index.get(key)
        if slot is None:
            changed = self._words[SLOTS_CHANGED_WORD]
            if changed == self._scanned_at:
                return None  # no row was taken or freed since a scan that did not find it
            self._scan(changed)
            slot = self._index.get(key)
            if slot is None:
                return None
        row, name = self._read_row(slot)
        if row[3] and row[1] == key[0] and row[2] == partition:
            return self._state(row, name)
        del self._index[key]  # freed or reused since: look again
        return self.get(topic, partition)

    def _scan(self, changed: int) -> None:
        """Index every row in use. Read the counter first: a row taken during the scan moves
        it past `changed`, so the next miss scans again."""
        self.scans += 1
        index = {}
        for slot in range(self._used()):
            row, _ = self._read_row(slot)
            if row[3]:
                index[(row[1], row[2])] = slot
        self._index = index
        self._scanned_at = changed

    def __iter__(self) -> Iterator[PartitionState]:
        """Every partition in the table (a full scan)."""
        for slot in range(self._used()):
            row, name = self._read_row(slot)
            if row[3]:
                yield self._state(row, name)

    def close(self) -> None:
        self._words.release()
        self._mm.close()

    def __enter__(self) -> ShmTableReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

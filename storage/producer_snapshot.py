"""The producer-state snapshot file: `<20-digit offset>.snapshot` in a partition directory.

The offset is the log end the state covers (every batch below it is in the state). The
format is compact binary, big-endian, versioned and checksummed:

    u16 version | u32 CRC-32C of the body | body:
    i64 map end offset | i32 producer count |
    per producer: i64 pid | i16 epoch | i32 coordinator epoch | i64 txn first offset (-1) |
                  u8 batch count | per batch: i32 first seq | i32 last seq |
                  i64 first offset | i64 last offset | i64 max timestamp

Any fault (length, version, CRC, trailing bytes) is `CorruptSnapshotError`: the caller
discards the file and rebuilds the state from the log. The per-producer entries defined here
are also what `ProducerStateManager` keeps in memory.
"""

from __future__ import annotations

import os
import re
import struct
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from qnode.storage.checksum import crc32c
from qnode.storage.errors import StorageError

NO_PRODUCER_ID = -1
NO_PRODUCER_EPOCH = -1
NO_SEQUENCE = -1
DEDUPE_WINDOW = 5  # batches remembered per producer, as Kafka's max.in.flight bound
SNAPSHOT_SUFFIX = ".snapshot"
SNAPSHOT_VERSION = 1

_HEAD = struct.Struct(">HI")
_BODY_HEAD = struct.Struct(">qi")
_PRODUCER = struct.Struct(">qhiqB")
_BATCH = struct.Struct(">iiqqq")
_SNAPSHOT_RE = re.compile(r"^(\d{20})\.snapshot$")


class CorruptSnapshotError(StorageError):
    """A snapshot file that fails its CRC, version or length check."""


@dataclass(frozen=True, slots=True)
class BatchEntry:
    """One remembered batch of a producer (the dedupe window holds the last five)."""

    first_seq: int
    last_seq: int
    first_offset: int
    last_offset: int
    timestamp: int


@dataclass(slots=True)
class ProducerEntry:
    producer_id: int
    epoch: int = NO_PRODUCER_EPOCH
    coordinator_epoch: int = -1
    current_txn_first_offset: int = -1
    batches: deque[BatchEntry] = field(default_factory=lambda: deque(maxlen=DEDUPE_WINDOW))

    @property
    def last_seq(self) -> int:
        return self.batches[-1].last_seq if self.batches else NO_SEQUENCE

    @property
    def last_offset(self) -> int:
        return self.batches[-1].last_offset if self.batches else -1

    @property
    def last_timestamp(self) -> int:
        return self.batches[-1].timestamp if self.batches else -1


def snapshot_path(partition_dir: Path, offset: int) -> Path:
    return partition_dir / f"{offset:020d}{SNAPSHOT_SUFFIX}"


def list_snapshots(partition_dir: Path) -> list[tuple[int, Path]]:
    """(offset, path) of every snapshot file in the directory, oldest first."""
    found = []
    for name in os.listdir(partition_dir):
        m = _SNAPSHOT_RE.match(name)
        if m:
            found.append((int(m.group(1)), partition_dir / name))
    return sorted(found)


def encode_snapshot(map_end_offset: int, producers: list[ProducerEntry]) -> bytes:
    parts = [_BODY_HEAD.pack(map_end_offset, len(producers))]
    for p in producers:
        parts.append(_PRODUCER.pack(p.producer_id, p.epoch, p.coordinator_epoch,
                                    p.current_txn_first_offset, len(p.batches)))
        for b in p.batches:
            parts.append(_BATCH.pack(b.first_seq, b.last_seq, b.first_offset, b.last_offset,
                                     b.timestamp))
    body = b"".join(parts)
    return _HEAD.pack(SNAPSHOT_VERSION, crc32c(body)) + body


def decode_snapshot(data: bytes) -> tuple[int, list[ProducerEntry]]:
    """Parse a snapshot; raise `CorruptSnapshotError` on any fault."""
    if len(data) < _HEAD.size + _BODY_HEAD.size:
        raise CorruptSnapshotError(f"snapshot too short ({len(data)} bytes)")
    version, crc = _HEAD.unpack_from(data, 0)
    if version != SNAPSHOT_VERSION:
        raise CorruptSnapshotError(f"unsupported snapshot version {version}")
    body = memoryview(data)[_HEAD.size:]
    if crc32c(body) != crc:
        raise CorruptSnapshotError("snapshot CRC-32C mismatch")
    try:
        map_end, count = _BODY_HEAD.unpack_from(body, 0)
        pos = _BODY_HEAD.size
        producers = []
        for _ in range(count):
            pid, epoch, coord_epoch, txn_first, nb = _PRODUCER.unpack_from(body, pos)
            pos += _PRODUCER.size
            entry = ProducerEntry(pid, epoch, coord_epoch, txn_first)
            for _ in range(nb):
                entry.batches.append(BatchEntry(*_BATCH.unpack_from(body, pos)))
                pos += _BATCH.size
            producers.append(entry)
    except struct.error as exc:
        raise CorruptSnapshotError(f"snapshot body truncated: {exc}") from None
    if pos != len(body):
        raise CorruptSnapshotError(f"{len(body) - pos} trailing bytes after snapshot body")
    return map_end, producers

"""Helpers shared by the partition-log tests: build batches, read a log back."""

from __future__ import annotations

from qnode.storage import Log
from qnode.storage.batch_builder import BatchBuilder
from qnode.storage.batch_reader import iter_records


def make_batch(n: int = 10, size: int = 100, ts: int = 1_000, base_offset: int = 0,
               leader_epoch: int = -1) -> bytes:
    b = BatchBuilder(base_offset=base_offset, partition_leader_epoch=leader_epoch)
    for i in range(n):
        b.append(None, bytes([i % 256]) * size, timestamp_ms=ts)
    return b.build()


def read_all(log: Log, offset: int = 0, max_bytes: int = 1 << 30) -> list[int]:
    """Offsets of every record from `offset` to the log end."""
    data = b"".join(bytes(s) for s in log.read(offset, max_bytes).slices)
    return [r.offset for r in iter_records(data, min_offset=offset)]

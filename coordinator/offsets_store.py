"""Writing and loading `__consumer_offsets`: the group coordinator's durable state.

Writing: `OffsetsAppender` is the coordinator's `OffsetsWriter`. Appends made while the
server handles one burst of requests wait in a per-partition queue; `flush()` (called once
per turn of the server loop) seals each queue into ONE RecordBatch and hands it to `send`
(a Produce with acks=-1 to the partition's leader worker). Concurrent commits of many
consumers therefore cost one batch, one request and one fsync/replication round together.

Loading: `load_batches` replays the batches read from a partition (Fetch or mapped segments)
into the coordinator's cache, in log order, skipping control batches; the latest record per
key wins, a tombstone deletes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from qnode.coordinator.group_coordinator import ErrorCallback, GroupCoordinator, Records
from qnode.coordinator.group_metadata import GroupRecordError
from qnode.storage.batch_builder import BatchBuilder
from qnode.storage.batch_reader import read_batches
from qnode.transport.errors import ErrorCode

# (partition, one RecordBatch v2, callback with the partition's outcome)
SendBatch = Callable[[int, bytes, ErrorCallback], None]
MAX_BATCH_RECORDS = 20_000  # keeps one batch well under max.message.bytes (~100 B a record)


@dataclass(slots=True)
class _Pending:
    records: Records = field(default_factory=list)
    callbacks: list[ErrorCallback] = field(default_factory=list)


class OffsetsAppender:
    """Coalesces appends per partition into one batch per `flush()`."""

    def __init__(self, send: SendBatch) -> None:
        self._send = send
        self._pending: dict[int, _Pending] = {}
        self.batches_sent = 0
        self.records_sent = 0

    def append(self, partition: int, records: Records, done: ErrorCallback) -> None:
        p = self._pending.get(partition)
        if p is None:
            p = self._pending[partition] = _Pending()
        p.records.extend(records)
        p.callbacks.append(done)

    def has_pending(self) -> bool:
        return bool(self._pending)

    def flush(self) -> None:
        """Send every queued partition as one batch each (split past MAX_BATCH_RECORDS)."""
        pending, self._pending = self._pending, {}
        for partition, p in pending.items():
            chunks = [p.records[i:i + MAX_BATCH_RECORDS]
                      for i in range(0, len(p.records), MAX_BATCH_RECORDS)]
            outcome = _Outcome(len(chunks), p.callbacks)
            for chunk in chunks:
                self.batches_sent += 1
                self.records_sent += len(chunk)
                self._send(partition, build_batch(chunk), outcome.part_done)

    def fail_all(self, code: ErrorCode) -> None:
        """Answer everything still queued with `code` (the coordinator is shutting down)."""
        pending, self._pending = self._pending, {}
        for p in pending.values():
            for cb in p.callbacks:
                cb(code)


class _Outcome:
    """Completes the callbacks of a queue once all its batches are answered (first error wins)."""

    __slots__ = ("left", "callbacks", "error")

    def __init__(self, parts: int, callbacks: list[ErrorCallback]) -> None:
        self.left = parts
        self.callbacks = callbacks
        self.error = ErrorCode.NONE

    def part_done(self, err: ErrorCode) -> None:
        if err and not self.error:
            self.error = err
        self.left -= 1
        if self.left == 0:
            for cb in self.callbacks:
                cb(self.error)


def build_batch(records: Records) -> bytes:
    """One uncompressed RecordBatch v2 of (key, value-or-tombstone) records."""
    assert records, "no records to write"
    builder = BatchBuilder(batch_size=1 << 30)
    for key, value in records:
        builder.append(key, value)
    return builder.build()


@dataclass(slots=True)
class LoadProgress:
    next_offset: int = 0
    records: int = 0
    skipped: int = 0  # records this version cannot read (logged, never fatal)


def load_batches(data: bytes | memoryview, coordinator: GroupCoordinator,
                 progress: LoadProgress) -> None:
    """Replay whole batches from `data` (records below `progress.next_offset` are skipped)."""
    min_offset = progress.next_offset
    for batch in read_batches(data):
        h = batch.header
        if h.base_offset + h.last_offset_delta < min_offset:
            continue
        progress.next_offset = h.base_offset + h.last_offset_delta + 1
        if h.is_control:
            continue
        for offset, _ts, key, value, _headers in batch.record_tuples():
            if offset < min_offset or key is None:
                continue
            try:
                coordinator.load_record(key, value)
            except (GroupRecordError, KeyError, TypeError, ValueError):
                progress.skipped += 1
                continue
            progress.records += 1

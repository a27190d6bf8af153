"""The producer's record accumulator: per-partition batches between `send()` and the sender.

Application threads append records to the partition's open batch (encoded once, in
`send()`, by `record_writer`); a batch is sealed when it reaches `batch.size`,
when `linger.ms` has passed since it was opened, or on `flush()`. Sealed batches wait in
their partition's queue until the sender thread drains them into Produce requests.
`buffer.memory` bounds the bytes held in batches not yet acknowledged: opening a batch
reserves its size and blocks (up to `max.block.ms`) while the pool is exhausted.

Locking: one lock guards the open batches and the queues; the sender holds it only to seal
and to pop, never while encoding the batch, sending or waiting.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from qnode.sdk.errors import RequestTimeoutError
from qnode.sdk.futures import BatchResult
from qnode.sdk.record_writer import build_batch

PartitionKey = tuple[str, int]


class ProducerBatch:
    """One batch of one partition: encoded record parts while open, its bytes once built."""

    __slots__ = ("topic", "partition", "key", "parts", "count", "base_ts", "max_ts", "result",
                 "size", "created", "deadline", "sealed", "attempts", "retry_at", "data",
                 "record_count", "reserved", "counted", "base_sequence", "sent_at", "solo")

    def __init__(self, topic: str, partition: int, reserved: int, now: float,
                 delivery_timeout: float) -> None:
        self.topic = topic
        self.partition = partition
        self.key: PartitionKey = (topic, partition)
        self.parts: list[bytes] = []  # see record_writer: what send() appends per record
        self.count = 0
        self.base_ts = 0  # set from the first record
        self.max_ts = -1
        self.result = BatchResult(topic, partition)
        self.size = 61  # running estimate of the built batch (header included)
        self.created = now
        self.deadline = now + delivery_timeout
        self.sealed = False
        self.attempts = 0
        self.retry_at = 0.0
        self.data: bytes | None = None
        self.record_count = 0
        self.reserved = reserved
        self.counted = True  # in Accumulator.incomplete until completed
        self.solo = False  # sent alone in its request (a split retry must not fail with others)
        self.base_sequence = -1
        self.sent_at = 0.0

    def build(self, compression: int, producer_id: int = -1, producer_epoch: int = -1,
              base_sequence: int = -1) -> bytes:
        """Encode the sealed batch once; the record parts are dropped (only bytes remain)."""
        if self.data is None:
            assert self.sealed and self.count > 0
            self.base_sequence = base_sequence
            self.data = build_batch(self.parts, self.count, self.base_ts, self.max_ts,
                                    compression, producer_id, producer_epoch, base_sequence)
            self.record_count = self.count
            self.parts = []
        return self.data


class Accumulator:
    """Open and sealed batches of every partition this producer writes to."""

    def __init__(self, *, batch_size: int, linger_ms: float, buffer_memory: int,
                 max_block_ms: float, delivery_timeout_ms: float,
                 wake: Callable[[], None]) -> None:
        self.batch_size = batch_size
        self.linger = linger_ms / 1000.0
        self.buffer_memory = buffer_memory
        self.max_block = max_block_ms / 1000.0
        self.delivery_timeout = delivery_timeout_ms / 1000.0
        self.wake = wake
        self.lock = threading.Lock()
        self.memory_freed = threading.Condition(self.lock)
        # Open batch per partition; insertion order = creation order, so the first one is the
        # next to reach linger.ms.
        self.open: dict[PartitionKey, ProducerBatch] = {}
        self.sticky: dict[str, ProducerBatch] = {}  # topic → open batch of keyless records
        self.queues: dict[PartitionKey, deque[ProducerBatch]] = {}
        self.ready: dict[PartitionKey, None] = {}  # partitions with sealed batches (ordered)
        self.buffered = 0
        self.incomplete = 0  # batches created and not yet completed (close waits on it)
        self.unfinished: set[ProducerBatch] = set()  # the same batches: what flush() waits for
        self.all_done = threading.Condition(self.lock)
        self.flushing = 0
        self.closed = False
        self.sender_waiting = False

    # ------------------------------------------------------------------ app threads
    def new_batch(self, topic: str, partition: int, need: int) -> ProducerBatch:
        """Open a batch for a partition (caller holds the lock); blocks on buffer.memory."""
        reserve = max(self.batch_size, need)
        if self.buffered + reserve > self.buffer_memory and self.buffered > 0:
            deadline = time.monotonic() + self.max_block
            while self.buffered + reserve > self.buffer_memory and self.buffered > 0:
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    raise RequestTimeoutError(
                        f"buffer.memory ({self.buffer_memory} bytes) still full after "
                        f"max.block.ms ({self.max_block * 1000:.0f} ms)")
                self.memory_freed.wait(left)
        key = (topic, partition)
        old = self.open.get(key)
        if old is not None:
            self.seal(old)
        batch = ProducerBatch(topic, partition, reserve, time.monotonic(), self.delivery_timeout)
        self.buffered += reserve
        self.incomplete += 1
        self.unfinished.add(batch)
        self.open[key] = batch
        return batch

    def seal(self, batch: ProducerBatch) -> None:
        """Close an open batch to appends and queue it (caller holds the lock)."""
        if batch.sealed:
            return
        batch.sealed = True
        key = batch.key
        if self.open.get(key) is batch:
            del self.open[key]
        if self.sticky.get(batch.topic) is batch:
            del self.sticky[batch.topic]
        if batch.count == 0:
            self._release(batch)  # never got a record (open raced with close): drop it
            batch.result.complete(-1)
            return
        q = self.queues.get(key)
        if q is None:
            q = self.queues[key] = deque()
        q.append(batch)
        self.ready[key] = None
        # The caller wakes the sender once it has released the lock (see Producer.send).

    # ------------------------------------------------------------------ sender thread
    def seal_due(self, now: float) -> None:
        """Seal open batches whose linger.ms has passed (all of them while flushing)."""
        with self.lock:
            if not self.open:
                return
            if self.flushing or self.closed:
                for b in list(self.open.values()):
                    self.seal(b)
                return
            limit = now - self.linger
            while self.open:
                b = next(iter(self.open.values()))
                if b.created > limit:
                    break
                self.seal(b)

    def next_linger_deadline(self) -> float | None:
        with self.lock:
            if not self.open:
                return None
            return next(iter(self.open.values())).created + self.linger

    def requeue(self, batches: list[ProducerBatch], retry_at: float) -> None:
        """Put batches back at the head of their queues (in order) for a retry."""
        with self.lock:
            for b in reversed(batches):
                b.retry_at = retry_at
                q = self.queues.get(b.key)
                if q is None:
                    q = self.queues[b.key] = deque()
                q.appendleft(b)
                self.ready[b.key] = None

    def complete(self, batch: ProducerBatch, base_offset: int, log_append_time: int = -1,
                 error: BaseException | None = None) -> None:
        """Resolve a batch's futures and give its memory back."""
        with self.lock:
            self._release(batch)
        batch.result.complete(base_offset, log_append_time, error)

    def _release(self, batch: ProducerBatch) -> None:
        if batch.reserved:
            self.buffered -= batch.reserved
            batch.reserved = 0
            self.memory_freed.notify_all()
        if batch.counted:
            batch.counted = False
            self.unfinished.discard(batch)
            self.incomplete -= 1
            if self.incomplete == 0:
                self.all_done.notify_all()

    def replace(self, batch: ProducerBatch, parts: list[ProducerBatch], retry_at: float) -> None:
        """Retry `batch` as the smaller `parts` (a batch the node found too large)."""
        with self.lock:
            self.incomplete += len(parts)
            self._release(batch)
        self.requeue(parts, retry_at)

    def pending(self) -> bool:
        return self.incomplete > 0

    def drain_all_queued(self) -> list[ProducerBatch]:
        """Take every sealed and open batch (close with a timeout: they will be failed)."""
        with self.lock:
            for b in list(self.open.values()):
                self.seal(b)
            out = [b for q in self.queues.values() for b in q]
            self.queues.clear()
            self.ready.clear()
            return out

    def stats(self) -> dict[str, Any]:
        return {"buffered": self.buffered, "incomplete": self.incomplete,
                "open": len(self.open), "ready": len(self.ready)}

"""The producer's record accumulator: per-partition batches between `send()` and the sender.

Application threads append records to the partition's open batch (encoded once, in
`send()`, by `record_writer`); a batch is sealed when it reaches `batch.size`, when
`linger.ms` has passed since it was opened, or on `flush()`. Sealed batches wait in their
partition's queue until the sender thread drains them into Produce requests.

Two rules keep batching efficient with many partitions (a keyed producer writing to 1,000
partitions has 1,000 open batches at once):
- `buffer.memory` bounds the bytes held in batches not yet acknowledged, counted as they
  grow: a batch opens with a small reservation and doubles it (up to `batch.size`) when a
  record does not fit, waiting (up to `max.block.ms`) while the pool is exhausted, as
  opening a batch does. Reserving the whole `batch.size` up front would let 128 open
  batches of 256 KiB exhaust 32 MiB.
- A batch past `linger.ms` is not sealed while an earlier batch of its partition is not
  yet acknowledged (with `linger.ms` 0, latency first: while one still waits in the queue):
  it stays open and keeps growing until then. Sealing on time regardless sends, with many
  partitions, a tiny batch per partition every `linger.ms`, and the node's cost is per
  batch; held batches grow with the round trip, so the batching adapts to the load.

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
_INITIAL_RESERVE = 4096  # a new batch's first reservation; it doubles up to batch.size


class ProducerBatch:
    """One batch of one partition: encoded record parts while open, its bytes once built."""

    __slots__ = ("topic", "partition", "key", "parts", "count", "base_ts", "max_ts", "result",
                 "size", "created", "deadline", "sealed", "attempts", "retry_at", "data",
                 "record_count", "reserved", "counted", "base_sequence", "sent_at", "solo",
                 "cap", "unacked")

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
        self.reserved = reserved  # bytes of buffer.memory held, given back on completion
        self.cap = reserved  # an open batch may grow to this size without asking for more
        self.unacked = False  # counted in Accumulator.unacked (sealed, not yet completed)
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
        # what a new batch reserves before its records show how fast it fills
        self.initial_reserve = min(batch_size, _INITIAL_RESERVE)
        self.linger = linger_ms / 1000.0
        self.buffer_memory = buffer_memory
        self.max_block = max_block_ms / 1000.0
        self.delivery_timeout = delivery_timeout_ms / 1000.0
        self.wake = wake
        self.lock = threading.Lock()
        self.memory_freed = threading.Condition(self.lock)
        self.open: dict[PartitionKey, ProducerBatch] = {}  # the open batch of each partition
        # Open batches not yet past linger.ms, in creation order: the first is the next due.
        self.lingering: dict[PartitionKey, ProducerBatch] = {}
        # Open batches past linger.ms held open while their partition's queue is not empty
        # (with linger.ms > 0: while an earlier batch of the partition is not acknowledged).
        self.held: dict[PartitionKey, ProducerBatch] = {}
        self.unacked: dict[PartitionKey, int] = {}  # sealed batches not yet completed
        self.hold_in_flight = linger_ms > 0
        self.sticky: dict[str, ProducerBatch] = {}  # topic → open batch of keyless records
        self.queues: dict[PartitionKey, deque[ProducerBatch]] = {}
        self.ready: dict[PartitionKey, None] = {}  # partitions with sealed batches (ordered)
        self.buffered = 0
        self.batches = 0  # batches ever opened (records per batch = records sent / this)
        self.incomplete = 0  # batches created and not yet completed (close waits on it)
        self.unfinished: set[ProducerBatch] = set()  # the same batches: what flush() waits for
        self.all_done = threading.Condition(self.lock)
        self.flushing = 0
        self.closed = False
        self.sender_waiting = False

    # ------------------------------------------------------------------ app threads
    def new_batch(self, topic: str, partition: int, need: int) -> ProducerBatch:
        """Open a batch for a partition (caller holds the lock); blocks on buffer.memory."""
        reserve = max(self.initial_reserve, need)
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
        self.batches += 1
        self.incomplete += 1
        self.unfinished.add(batch)
        self.open[key] = batch
        self.lingering[key] = batch
        return batch

    def grow(self, batch: ProducerBatch, need: int, block: bool = False) -> bool:
        """Let an open batch reach `need` bytes (caller holds the lock): double its
        reservation, up to batch.size. With `block`, wait (up to max.block.ms) for the pool
        rather than give up: a batch sealed small under memory pressure means more, smaller
        requests exactly when the node is behind. False: the caller seals it / opens another
        (past batch.size, past buffer.memory itself, or sealed meanwhile by the sender)."""
        new = min(self.batch_size, max(2 * batch.cap, need))
        if new < need or new > self.buffer_memory:
            return False
        if self.buffered + new - batch.reserved > self.buffer_memory:
            if not block:
                return False
            deadline = time.monotonic() + self.max_block
            while self.buffered + new - batch.reserved > self.buffer_memory:
                left = deadline - time.monotonic()
                if batch.sealed:
                    return False
                if left <= 0 or self.closed:
                    raise RequestTimeoutError(
                        f"buffer.memory ({self.buffer_memory} bytes) still full after "
                        f"max.block.ms ({self.max_block * 1000:.0f} ms)")
                self.memory_freed.wait(left)
            if batch.sealed:
                return False
        self.buffered += new - batch.reserved
        batch.reserved = batch.cap = new
        return True

    def seal(self, batch: ProducerBatch) -> None:
        """Close an open batch to appends and queue it (caller holds the lock)."""
        if batch.sealed:
            return
        batch.sealed = True
        key = batch.key
        if self.open.get(key) is batch:
            del self.open[key]
            if self.lingering.get(key) is batch:
                del self.lingering[key]
            elif self.held.get(key) is batch:
                del self.held[key]
        if self.sticky.get(batch.topic) is batch:
            del self.sticky[batch.topic]
        if batch.reserved > batch.size and batch.count:
            # give back what the batch reserved and did not fill
            self.buffered -= batch.reserved - batch.size
            batch.reserved = batch.size
            self.memory_freed.notify_all()
        if batch.count == 0:
            self._release(batch)  # never got a record (open raced with close): drop it
            batch.result.complete(-1)
            return
        q = self.queues.get(key)
        if q is None:
            q = self.queues[key] = deque()
        q.append(batch)
        self.ready[key] = None
        batch.unacked = True
        self.unacked[key] = self.unacked.get(key, 0) + 1
        # The caller wakes the sender once it has released the lock (see Producer.send).

    # ------------------------------------------------------------------ sender thread
    def seal_due(self, now: float) -> None:
        """Seal open batches whose linger.ms has passed (all of them while flushing), except
        those whose partition still has a sealed batch waiting: they stay open and grow."""
        with self.lock:
            if not self.open:
                return
            if self.flushing or self.closed:
                for b in list(self.open.values()):
                    self.seal(b)
                return
            # With linger.ms > 0 a batch waits while an earlier one of its partition is not
            # acknowledged (`_release` lets it go); with linger.ms = 0 (latency first) only
            # while one is still queued. `ready` holds the partitions whose queue is not empty
            # (the sender drops a key once it drained its queue).
            waiting = self.unacked if self.hold_in_flight else self.ready
            if self.held and not self.hold_in_flight:
                for key in self.held.keys() - waiting.keys():
                    self.seal(self.held[key])
            limit = now - self.linger
            lingering = self.lingering
            while lingering:
                b = next(iter(lingering.values()))
                if b.created > limit:
                    break
                if b.key in waiting:
                    del lingering[b.key]
                    self.held[b.key] = b
                else:
                    self.seal(b)

    def next_linger_deadline(self) -> float | None:
        """When the oldest lingering batch is due (held batches wait for the sender's
        next drain, which an answer or the retry backoff wakes it for)."""
        with self.lock:
            if not self.lingering:
                return None
            return next(iter(self.lingering.values())).created + self.linger

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
        if batch.unacked:
            batch.unacked = False
            key = batch.key
            n = self.unacked[key] - 1
            if n:
                self.unacked[key] = n
            else:
                del self.unacked[key]
                held = self.held.get(key)
                if held is not None and self.hold_in_flight:
                    self.seal(held)  # the sender's loop sends it right after this answer
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
            for b in parts:
                b.unacked = True
            self.unacked[batch.key] = self.unacked.get(batch.key, 0) + len(parts)
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
        return {"buffered": self.buffered, "batches": self.batches, "incomplete": self.incomplete,
                "open": len(self.open), "held": len(self.held), "ready": len(self.ready),
                "unacked_partitions": len(self.unacked)}

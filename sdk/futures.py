"""Futures of produced records, resolved lazily from their batch's result.

One record's future is three slots (its batch, its index in it, its timestamp): `send()`
must stay cheap at a million records a second, so nothing per record is computed until
someone asks. The batch (`BatchResult`) is completed once by the sender thread with a base
offset or an error; each record's offset is then `base_offset + index`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from qnode.sdk.errors import QnodeError, RequestTimeoutError
from qnode.sdk.types import RecordMetadata

log = logging.getLogger(__name__)


class BatchResult:
    """The outcome of one produced batch, shared by the futures of its records."""

    __slots__ = ("topic", "partition", "base_offset", "log_append_time", "error", "done",
                 "_event", "_callbacks", "_lock", "children", "_parent", "_waiting_children")

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        self.base_offset = -1
        self.log_append_time = -1
        self.error: BaseException | None = None
        self.done = False
        self._event: threading.Event | None = None
        self._callbacks: list[tuple[RecordFuture, Callable[[RecordFuture], Any]]] | None = None
        self._lock = threading.Lock()
        # After a split (the node refused the batch as too large), record i's fate is that
        # of children[i], a one-record batch; this result completes when they all have.
        self.children: list[BatchResult] | None = None
        self._parent: BatchResult | None = None
        self._waiting_children = 0

    def complete(self, base_offset: int, log_append_time: int = -1,
                 error: BaseException | None = None) -> None:
        """Resolve every record of the batch; runs the callbacks (on the sender thread, or
        on send()'s when its own pass at linger.ms=0 failed the batch at once)."""
        with self._lock:
            if self.done:
                return
            self.base_offset = base_offset
            self.log_append_time = log_append_time
            self.error = error
            self.done = True
            event, callbacks = self._event, self._callbacks
            self._callbacks = None
        if event is not None:
            event.set()
        if callbacks:
            for fut, fn in callbacks:
                try:
                    fn(fut)
                except Exception:  # a user callback must not kill the sender thread
                    log.exception("producer callback raised")
        if self._parent is not None:
            self._parent._child_done()

    def split(self, children: list[BatchResult]) -> None:
        """Record i now lives in `children[i]` (sender thread, before any child completes)."""
        self._waiting_children = len(children)
        for c in children:
            c._parent = self
        self.children = children

    def _child_done(self) -> None:
        with self._lock:
            self._waiting_children -= 1
            last = self._waiting_children == 0
        if last:
            self.complete(-1)

    def outcome(self, index: int) -> tuple[int, int, BaseException | None]:
        """(offset, log append time, error) of record `index`."""
        if self.children is not None:
            c = self.children[index]
            return (c.base_offset if c.base_offset >= 0 else -1), c.log_append_time, c.error
        offset = self.base_offset + index if self.base_offset >= 0 else -1
        return offset, self.log_append_time, self.error

    def wait(self, timeout: float | None) -> bool:
        if self.done:
            return True
        with self._lock:
            if self.done:
                return True
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        return event.wait(timeout)

    def add_callback(self, fut: RecordFuture, fn: Callable[[RecordFuture], Any]) -> bool:
        """Queue `fn(fut)` for completion; False if already done (caller runs it)."""
        with self._lock:
            if self.done:
                return False
            if self._callbacks is None:
                self._callbacks = []
            self._callbacks.append((fut, fn))
            return True


class RecordFuture:
    """The future result of one `Producer.send()`: `result()` → RecordMetadata."""

    __slots__ = ("_batch", "_index", "_timestamp")

    def __init__(self, batch: BatchResult, index: int, timestamp: int = -1) -> None:
        self._batch = batch
        self._index = index
        self._timestamp = timestamp

    def done(self) -> bool:
        return self._batch.done

    def succeeded(self) -> bool:
        return self._batch.done and self._batch.outcome(self._index)[2] is None

    def failed(self) -> bool:
        return self._batch.done and self._batch.outcome(self._index)[2] is not None

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not self._batch.wait(timeout):
            raise RequestTimeoutError(f"record not acknowledged within {timeout} s")
        return self._batch.outcome(self._index)[2]

    def result(self, timeout: float | None = None) -> RecordMetadata:
        """Wait for the record's fate: its metadata, or the error that failed its batch."""
        b = self._batch
        if not b.done and not b.wait(timeout):
            raise RequestTimeoutError(f"record not acknowledged within {timeout} s")
        if b.error is not None or b.children is not None:
            error = b.outcome(self._index)[2]
            if error is not None:
                raise error
        return self._metadata()

    get = result

    def _metadata(self) -> RecordMetadata:
        b = self._batch
        offset, log_append_time, _ = b.outcome(self._index)
        ts = log_append_time if log_append_time >= 0 else self._timestamp
        return RecordMetadata(b.topic, b.partition, offset, ts)

    def add_done_callback(self, fn: Callable[[RecordFuture], Any]) -> RecordFuture:
        """`fn(future)` once the record is acknowledged or failed (on the sender thread)."""
        if not self._batch.add_callback(self, fn):
            fn(self)
        return self

    def add_callback(self, fn: Callable[[RecordMetadata], Any]) -> RecordFuture:
        """`fn(metadata)` on success only."""
        def on_done(fut: RecordFuture) -> None:
            if fut._batch.outcome(fut._index)[2] is None:
                fn(fut._metadata())
        return self.add_done_callback(on_done)

    def add_errback(self, fn: Callable[[BaseException], Any]) -> RecordFuture:
        """`fn(exception)` on failure only."""
        def on_done(fut: RecordFuture) -> None:
            error = fut._batch.outcome(fut._index)[2]
            if error is not None:
                fn(error)
        return self.add_done_callback(on_done)

    def __repr__(self) -> str:
        b = self._batch
        state = "pending" if not b.done else ("error" if self.failed() else "done")
        return f"<RecordFuture {b.topic}-{b.partition}#{self._index} {state}>"


def failed_future(topic: str, partition: int, error: QnodeError) -> RecordFuture:
    """A future already failed with `error` (for records refused before they were queued)."""
    b = BatchResult(topic, partition)
    b.complete(-1, -1, error)
    return RecordFuture(b, 0)

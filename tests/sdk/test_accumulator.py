"""The accumulator: linger sealing, buffer.memory back-pressure, requeue order."""

from __future__ import annotations

import threading
import time

import pytest

from qnode.sdk.accumulator import Accumulator
from qnode.sdk.errors import RequestTimeoutError


def make(**kw: float) -> tuple[Accumulator, list[int]]:
    wakes: list[int] = []
    args = {"batch_size": 1000, "linger_ms": 20, "buffer_memory": 3000, "max_block_ms": 100,
            "delivery_timeout_ms": 10000}
    args.update(kw)
    return Accumulator(wake=lambda: wakes.append(1), **args), wakes  # type: ignore[arg-type]


def add_record(acc: Accumulator, topic: str, partition: int) -> None:
    with acc.lock:
        b = acc.open.get((topic, partition)) or acc.new_batch(topic, partition, 100)
        b.parts.append(b"r")
        b.count += 1


def test_linger_seals_oldest_first_and_flush_seals_all() -> None:
    acc, _ = make()
    add_record(acc, "t", 0)
    time.sleep(0.03)
    add_record(acc, "t", 1)
    acc.seal_due(time.monotonic())
    assert list(acc.ready) == [("t", 0)] and ("t", 1) in acc.open
    acc.flushing = 1
    acc.seal_due(time.monotonic())
    assert list(acc.ready) == [("t", 0), ("t", 1)] and not acc.open


def test_buffer_memory_blocks_then_times_out() -> None:
    acc, _ = make()
    for p in range(3):
        add_record(acc, "t", p)  # 3 x 1000 reserved = buffer.memory
    t = time.monotonic()
    with pytest.raises(RequestTimeoutError, match="buffer.memory"):
        add_record(acc, "t", 3)
    assert 0.09 < time.monotonic() - t < 2


def test_buffer_memory_is_released_on_completion() -> None:
    acc, _ = make(max_block_ms=5000)
    for p in range(3):
        add_record(acc, "t", p)
    acc.seal_due(time.monotonic() + 1)
    first = acc.queues[("t", 0)].popleft()
    threading.Timer(0.05, acc.complete, args=(first, 0)).start()
    t = time.monotonic()
    add_record(acc, "t", 3)  # waits for the completion above, then fits
    assert time.monotonic() - t < 2
    assert first.result.done and acc.buffered == 3000


def test_requeue_puts_batches_back_in_order() -> None:
    acc, _ = make(batch_size=1, buffer_memory=10**6)
    add_record(acc, "t", 0)
    a = acc.open[("t", 0)]
    with acc.lock:
        acc.seal(a)
    add_record(acc, "t", 0)
    b = acc.open[("t", 0)]
    with acc.lock:
        acc.seal(b)
    q = acc.queues[("t", 0)]
    taken = [q.popleft(), q.popleft()]
    add_record(acc, "t", 0)
    c = acc.open[("t", 0)]
    with acc.lock:
        acc.seal(c)
    acc.requeue(taken, retry_at=5.0)
    assert list(acc.queues[("t", 0)]) == [a, b, c]
    assert a.retry_at == b.retry_at == 5.0 and c.retry_at == 0.0

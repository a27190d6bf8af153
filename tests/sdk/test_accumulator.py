"""The accumulator: linger sealing (and holding), buffer.memory back-pressure and growth,
requeue order."""

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


def add_record(acc: Accumulator, topic: str, partition: int, size: int = 1000) -> None:
    """One record that brings its batch to `size` bytes (default: a full batch)."""
    with acc.lock:
        b = acc.open.get((topic, partition)) or acc.new_batch(topic, partition, size)
        b.parts.append(b"r")
        b.count += 1
        b.size = max(b.size, size)


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


def test_reservation_starts_small_and_doubles_up_to_batch_size() -> None:
    acc, _ = make(batch_size=100_000, buffer_memory=1_000_000)
    assert acc.initial_reserve == 4096
    with acc.lock:
        b = acc.new_batch("t", 0, 200)
        assert b.cap == b.reserved == 4096 and acc.buffered == 4096
        assert acc.grow(b, 5000)
        assert b.cap == 8192 and acc.buffered == 8192
        assert acc.grow(b, 90_000)  # more than double: straight to what is needed
        assert b.cap == 90_000
        assert acc.grow(b, 95_000) and b.cap == 100_000  # capped at batch.size
        assert not acc.grow(b, 100_001)  # past batch.size: the caller seals it
        assert acc.buffered == 100_000
        b.count, b.size = 1, 40_000
        acc.seal(b)
    assert b.reserved == 40_000 and acc.buffered == 40_000  # the unfilled part given back
    acc.complete(b, 0)
    assert acc.buffered == 0


def test_grow_refuses_past_buffer_memory_and_new_batch_still_blocks() -> None:
    acc, _ = make(batch_size=100_000, buffer_memory=10_000, max_block_ms=100)
    with acc.lock:
        a = acc.new_batch("t", 0, 200)  # 4096
        b = acc.new_batch("t", 1, 200)  # 4096
        assert acc.grow(a, 5000) is False  # 4096 more would pass 10,000
        assert a.cap == 4096 and acc.buffered == 8192
    t = time.monotonic()
    with pytest.raises(RequestTimeoutError, match="buffer.memory"):
        with acc.lock:
            acc.new_batch("t", 2, 200)
    assert time.monotonic() - t >= 0.09
    assert not b.sealed


def test_many_open_partitions_fit_in_the_pool() -> None:
    # 1,000 partitions with 256 KiB batches: reserving batch.size up front would block at 128
    acc, _ = make(batch_size=262144, buffer_memory=32 << 20, max_block_ms=100)
    for p in range(1000):
        add_record(acc, "t", p, size=200)
    assert len(acc.open) == 1000 and acc.buffered == 1000 * 4096


def test_linger_zero_holds_a_batch_only_while_its_partition_has_one_queued() -> None:
    acc, _ = make(linger_ms=0, batch_size=10_000, buffer_memory=10**6)
    assert not acc.hold_in_flight
    add_record(acc, "t", 0, size=100)
    add_record(acc, "t", 1, size=100)
    acc.seal_due(time.monotonic() + 1)
    first0 = acc.queues[("t", 0)][0]
    assert list(acc.ready) == [("t", 0), ("t", 1)]
    acc.queues[("t", 1)].popleft()  # the sender drained partition 1 (and drops its key)
    del acc.ready[("t", 1)]
    add_record(acc, "t", 0, size=100)  # partition 0's first batch still waits
    add_record(acc, "t", 1, size=100)
    b0, b1 = acc.open[("t", 0)], acc.open[("t", 1)]
    acc.seal_due(time.monotonic() + 1)
    assert b1.sealed and not b0.sealed  # held open: it keeps taking records
    assert acc.held == {("t", 0): b0} and acc.next_linger_deadline() is None
    add_record(acc, "t", 0, size=300)
    assert acc.open[("t", 0)] is b0 and b0.count == 2
    acc.seal_due(time.monotonic() + 1)
    assert not b0.sealed  # queue still not drained
    acc.queues[("t", 0)].popleft()
    del acc.ready[("t", 0)]
    assert first0.sealed
    acc.seal_due(time.monotonic())
    assert b0.sealed and not acc.held and list(acc.queues[("t", 0)]) == [b0]


def test_linger_holds_a_batch_until_its_partition_earlier_batch_is_acknowledged() -> None:
    acc, _ = make(linger_ms=10, batch_size=10_000, buffer_memory=10**6)
    add_record(acc, "t", 0, size=100)
    add_record(acc, "t", 1, size=100)
    acc.seal_due(time.monotonic() + 1)
    first0 = acc.queues[("t", 0)].popleft()  # both drained into a request: in flight
    first1 = acc.queues[("t", 1)].popleft()
    acc.ready.clear()
    assert acc.unacked == {("t", 0): 1, ("t", 1): 1}
    acc.complete(first1, 0)  # partition 1 answered, partition 0 not yet
    add_record(acc, "t", 0, size=100)
    add_record(acc, "t", 1, size=100)
    b0, b1 = acc.open[("t", 0)], acc.open[("t", 1)]
    acc.seal_due(time.monotonic() + 1)
    assert b1.sealed and not b0.sealed and acc.held == {("t", 0): b0}
    add_record(acc, "t", 0, size=300)  # it keeps growing while the first is in flight
    assert b0.count == 2
    acc.complete(first0, 0)  # the answer lets it go at once, in the sender's thread
    assert b0.sealed and not acc.held and list(acc.queues[("t", 0)]) == [b0]
    assert acc.unacked == {("t", 0): 1, ("t", 1): 1}
    acc.complete(b0, 2)
    acc.complete(b1, 1)
    assert acc.unacked == {} and acc.buffered == 0


def test_flush_seals_held_batches() -> None:
    acc, _ = make(linger_ms=1, batch_size=10_000, buffer_memory=10**6)
    add_record(acc, "t", 0, size=100)
    acc.seal_due(time.monotonic() + 1)
    add_record(acc, "t", 0, size=100)
    acc.seal_due(time.monotonic() + 1)
    held = acc.held[("t", 0)]
    acc.flushing = 1
    acc.seal_due(time.monotonic())
    assert held.sealed and not acc.held and not acc.open and len(acc.queues[("t", 0)]) == 2


def test_blocking_grow_waits_for_memory_then_grows() -> None:
    acc, _ = make(batch_size=100_000, buffer_memory=12_288, max_block_ms=5000)
    with acc.lock:
        a = acc.new_batch("t", 0, 200)
        other = acc.new_batch("t", 1, 200)
        other.count, other.size = 1, 4096
        acc.seal(other)
        acc.new_batch("t", 2, 200)
    threading.Timer(0.05, acc.complete, args=(other, 0)).start()
    t = time.monotonic()
    with acc.lock:
        assert acc.grow(a, 5000, block=True)  # waits for `other` to be acknowledged
    assert 0.04 < time.monotonic() - t < 3
    assert a.cap == 8192 and acc.buffered == 12_288


def test_blocking_grow_gives_up_when_the_batch_is_sealed_meanwhile() -> None:
    acc, _ = make(batch_size=100_000, buffer_memory=8192, max_block_ms=5000)
    with acc.lock:
        a = acc.new_batch("t", 0, 200)
        acc.new_batch("t", 1, 200)
        a.count = 1

    def seal_a() -> None:
        with acc.lock:
            acc.seal(a)  # the sender: linger passed (this also gives back a's unused part)

    threading.Timer(0.05, seal_a).start()
    with acc.lock:
        assert acc.grow(a, 5000, block=True) is False
    assert a.sealed


def test_blocking_grow_times_out_and_never_waits_for_the_impossible() -> None:
    acc, _ = make(batch_size=100_000, buffer_memory=8192, max_block_ms=100)
    with acc.lock:
        a = acc.new_batch("t", 0, 200)
        acc.new_batch("t", 1, 200)
        t = time.monotonic()
        assert acc.grow(a, 20_000, block=True) is False  # more than buffer.memory: never
        assert time.monotonic() - t < 0.05
        with pytest.raises(RequestTimeoutError, match="buffer.memory"):
            acc.grow(a, 5000, block=True)

"""Record futures resolve lazily from their batch: offsets, timestamps, errors, callbacks."""

from __future__ import annotations

import threading

import pytest

from qnode.sdk.errors import NotLeaderError, RequestTimeoutError
from qnode.sdk.futures import BatchResult, RecordFuture, failed_future


def test_offsets_are_base_plus_index() -> None:
    b = BatchResult("t", 3)
    futs = [RecordFuture(b, i, 1000 + i) for i in range(5)]
    assert not any(f.done() for f in futs)
    b.complete(40)
    md = [f.result(0) for f in futs]
    assert [m.offset for m in md] == [40, 41, 42, 43, 44]
    assert [m.timestamp for m in md] == [1000, 1001, 1002, 1003, 1004]
    assert all(m.topic == "t" and m.partition == 3 for m in md)
    assert all(f.succeeded() and not f.failed() for f in futs)


def test_log_append_time_replaces_timestamps() -> None:
    b = BatchResult("t", 0)
    f = RecordFuture(b, 1, 5)
    b.complete(10, log_append_time=777)
    assert f.result().timestamp == 777


def test_error_fails_every_record() -> None:
    b = BatchResult("t", 0)
    futs = [RecordFuture(b, i) for i in range(3)]
    b.complete(-1, error=NotLeaderError("moved"))
    for f in futs:
        assert f.failed()
        with pytest.raises(NotLeaderError):
            f.result()
        assert isinstance(f.exception(), NotLeaderError)


def test_result_waits_across_threads_and_times_out() -> None:
    b = BatchResult("t", 0)
    f = RecordFuture(b, 2)
    with pytest.raises(RequestTimeoutError):
        f.result(0.01)
    threading.Timer(0.05, b.complete, args=(100,)).start()
    assert f.result(5).offset == 102


def test_callbacks_run_once_in_order_and_errors_in_them_are_contained() -> None:
    b = BatchResult("t", 0)
    seen: list[object] = []
    f0, f1 = RecordFuture(b, 0), RecordFuture(b, 1)
    f0.add_done_callback(lambda f: seen.append(("done", f.result().offset)))
    f1.add_callback(lambda md: seen.append(("ok", md.offset)))
    f1.add_errback(lambda exc: seen.append(("err", exc)))
    f0.add_done_callback(lambda f: 1 / 0)  # must not break completion
    b.complete(7)
    b.complete(99)  # second completion ignored
    assert seen == [("done", 7), ("ok", 8)]
    late: list[int] = []
    f0.add_callback(lambda md: late.append(md.offset))  # already done: runs at once
    assert late == [7]


def test_failed_future() -> None:
    f = failed_future("t", 0, NotLeaderError("x"))
    assert f.done() and f.failed()
    errs: list[BaseException] = []
    f.add_errback(errs.append)
    assert isinstance(errs[0], NotLeaderError)


def test_split_batch_resolves_each_record_from_its_part() -> None:
    parent = BatchResult("t", 0)
    futs = [RecordFuture(parent, i, 10 + i) for i in range(3)]
    seen: list[object] = []
    futs[1].add_errback(seen.append)
    parts = [BatchResult("t", 0) for _ in range(3)]
    parent.split(parts)
    parts[0].complete(5)
    parts[2].complete(6)
    assert not parent.done  # waits for every part
    parts[1].complete(-1, error=NotLeaderError("too big"))
    assert parent.done
    assert futs[0].result().offset == 5 and futs[2].result().offset == 6
    assert futs[1].failed() and isinstance(seen[0], NotLeaderError)
    with pytest.raises(NotLeaderError):
        futs[1].result()

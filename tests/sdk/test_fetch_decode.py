"""Turning fetched batches into records: positions, skips, control and aborted batches."""

from __future__ import annotations

from fetch_helpers import TP, state

from qnode.sdk.fetcher import CompletedFetch
from qnode.sdk.record_writer import build_batch, encode_record
from qnode.storage.batch_builder import ControlType, build_control_batch
from qnode.storage.record_batch import stamp


def batch(base: int, n: int, pid: int = -1, transactional: bool = False) -> bytes:
    parts = [encode_record(i, i, None, b"v%d" % (base + i)) for i in range(n)]
    data = bytearray(build_batch(parts, n, 1000, 1000 + n - 1, 0, pid, 0 if pid >= 0 else -1,
                                 0 if pid >= 0 else -1, transactional))
    stamp(data, 0, base, 0)
    return bytes(data)


def control(base: int, pid: int, kind: ControlType) -> bytes:
    data = bytearray(build_control_batch(kind, pid, 0, 0, timestamp_ms=5))
    stamp(data, 0, base, 0)
    return bytes(data)


def test_records_below_position_are_skipped_and_position_advances() -> None:
    data = batch(0, 5) + batch(5, 5)
    subs = state(3)
    st = subs.assignment[TP]
    cf = CompletedFetch(TP, st.fetch_epoch, data, None, True)
    out: list = []
    cf.take(out, 4, st)
    assert [r.offset for r in out] == [3, 4, 5, 6]
    assert [r.value for r in out] == [b"v3", b"v4", b"v5", b"v6"]
    assert st.position == 7 and not cf.done
    out2: list = []
    cf.take(out2, 100, st)
    assert [r.offset for r in out2] == [7, 8, 9]
    assert st.position == 10 and cf.done
    assert out[0].topic == "t" and out[0].partition == 0 and out[0].timestamp == 1003


def test_torn_tail_is_ignored() -> None:
    data = batch(0, 3) + batch(3, 3)[:-5]
    subs = state(0)
    st = subs.assignment[TP]
    out: list = []
    CompletedFetch(TP, st.fetch_epoch, data, None, True).take(out, 100, st)
    assert [r.offset for r in out] == [0, 1, 2] and st.position == 3


def test_control_batches_are_never_returned() -> None:
    data = batch(0, 2, pid=9, transactional=True) + control(2, 9, ControlType.COMMIT) \
        + batch(3, 2)
    subs = state(0)
    st = subs.assignment[TP]
    out: list = []
    CompletedFetch(TP, st.fetch_epoch, data, None, True).take(out, 100, st)
    assert [r.offset for r in out] == [0, 1, 3, 4] and st.position == 5


def test_read_committed_drops_aborted_transactions() -> None:
    data = (batch(0, 2, pid=7, transactional=True)      # aborted below
            + batch(2, 2, pid=8, transactional=True)    # committed
            + control(4, 7, ControlType.ABORT)
            + control(5, 8, ControlType.COMMIT)
            + batch(6, 1, pid=7, transactional=True))   # a later, committed txn of pid 7
    subs = state(0)
    st = subs.assignment[TP]
    out: list = []
    CompletedFetch(TP, st.fetch_epoch, data, [[7, 0]], True).take(out, 100, st)
    assert [r.offset for r in out] == [2, 3, 6]
    assert st.position == 7


def test_corrupt_batch_raises_a_clear_error_and_keeps_the_position() -> None:
    good = batch(0, 2)
    bad = bytearray(batch(2, 2))
    bad[-1] ^= 0xFF
    subs = state(0)
    st = subs.assignment[TP]
    cf = CompletedFetch(TP, st.fetch_epoch, good + bytes(bad), None, True)
    out: list = []
    try:
        cf.take(out, 100, st)
        raise AssertionError("corruption not detected")
    except Exception as exc:
        assert "CORRUPT_MESSAGE" in str(exc)
    assert [r.offset for r in out] == [0, 1] and st.position == 2


def test_seek_changes_the_fetch_epoch() -> None:
    subs = state(0)
    e1 = subs.assignment[TP].fetch_epoch
    subs.seek(TP, 10)
    assert subs.assignment[TP].fetch_epoch != e1
    subs.pause([TP])
    assert subs.fetchable() == [] and subs.paused() == {TP}
    subs.resume([TP])
    assert subs.fetchable() == [TP]

"""Transaction markers under compaction: kept while their transaction has data in the log,
removed once it has none and they are past delete.retention.ms (Kafka's rule)."""

from __future__ import annotations

import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qnode.storage.batch_builder import BatchBuilder, ControlType, build_control_batch
from qnode.storage.batch_reader import iter_records, read_batches
from qnode.storage.cleaner import Cleaner
from qnode.storage.cleaner_scope import scan_transactions
from qnode.storage.log import Log
from qnode.storage.log_config import LogConfig
from qnode.storage.producer_state import BatchMeta, ProducerStateManager
from qnode.storage.record_batch import validate_batches

TS = 1000
HORIZON_MS = 1000
NOW = 10_000_000  # far past the delete horizon of everything written at TS


@pytest.fixture
def log(tmp_path):
    cfg = LogConfig.from_topic_config({
        "cleanup.policy": "compact", "segment.bytes": "1048576", "index.interval.bytes": "256",
        "delete.retention.ms": str(HORIZON_MS), "segment.index.bytes": "4096"})
    lg = Log.open(tmp_path / "t-0", cfg)
    yield lg
    lg.close()


def plain(log: Log, *records: tuple[bytes, bytes], ts: int = TS) -> int:
    b = BatchBuilder()
    for key, value in records:
        b.append(key, value, timestamp_ms=ts)
    return log.append(b.build(), 0).base_offset


def txn(log: Log, pid: int, *records: tuple[bytes, bytes]) -> int:
    b = BatchBuilder(producer_id=pid, producer_epoch=0, base_sequence=0, transactional=True)
    for key, value in records:
        b.append(key, value, timestamp_ms=TS)
    return log.append(b.build(), 0).base_offset


def marker(log: Log, pid: int, kind: ControlType, ts: int = TS) -> int:
    return log.append(build_control_batch(kind, pid, 0, 1, timestamp_ms=ts), 0).base_offset


def seal(log: Log) -> None:
    log.roll()
    log.high_watermark = log.log_end_offset


def batches(log: Log):
    data = b"".join(bytes(s) for s in log.read(log.log_start_offset, 1 << 30).slices)
    if not data:
        return []
    validate_batches(data, producer_batches=False)
    return read_batches(data)


def markers(log: Log) -> list[int]:
    return [b.base_offset for b in batches(log) if b.is_control]


def values(log: Log) -> dict[bytes, bytes]:
    data = b"".join(bytes(s) for s in log.read(log.log_start_offset, 1 << 30).slices)
    return {r.key: r.value for r in iter_records(data)}


def clean_again(log: Log, now: int = NOW):
    """A later clean: it only runs with new dirty data, as on a live node."""
    plain(log, (b"filler", b"%d" % log.log_end_offset))
    seal(log)
    return Cleaner().clean(log, now)


def test_abort_marker_goes_one_clean_after_its_data(log):
    plain(log, (b"k", b"v0"))
    txn(log, 6, (b"k", b"aborted"), (b"z", b"aborted"))
    abort = marker(log, 6, ControlType.ABORT)
    seal(log)
    first = Cleaner().clean(log, NOW)
    assert first.aborted_records_dropped == 2 and first.markers_dropped == 0
    assert markers(log) == [abort]  # the data was still there when the clean began
    second = clean_again(log)
    assert second.markers_dropped == 1
    assert markers(log) == []
    assert values(log)[b"k"] == b"v0"  # no aborted value can surface without its marker


def test_commit_marker_goes_once_its_data_is_superseded(log):
    txn(log, 5, (b"a", b"committed"))
    commit = marker(log, 5, ControlType.COMMIT)
    plain(log, (b"a", b"newer"))
    seal(log)
    first = Cleaner().clean(log, NOW)
    assert first.records_superseded == 1 and markers(log) == [commit]
    assert clean_again(log).markers_dropped == 1
    assert markers(log) == [] and values(log)[b"a"] == b"newer"


def test_marker_stays_while_its_transaction_has_data(log):
    txn(log, 5, (b"a", b"committed"))  # the latest value of "a": it stays
    commit = marker(log, 5, ControlType.COMMIT)
    seal(log)
    Cleaner().clean(log, NOW)
    clean_again(log)
    clean_again(log)
    assert markers(log) == [commit]
    assert values(log)[b"a"] == b"committed"


def test_idle_marker_stays_until_the_delete_horizon(log):
    young = NOW - HORIZON_MS // 2
    abort = marker(log, 8, ControlType.ABORT, ts=young)  # no data in this partition
    plain(log, (b"x", b"1"), ts=young)
    seal(log)
    assert Cleaner().clean(log, NOW).markers_dropped == 0
    assert markers(log) == [abort]
    plain(log, (b"y", b"1"))
    seal(log)
    assert Cleaner().clean(log, young + HORIZON_MS).markers_dropped == 1
    assert markers(log) == []


def test_marker_of_a_live_producer_is_kept(log):
    abort = marker(log, 9, ControlType.ABORT)
    plain(log, (b"x", b"1"))
    seal(log)
    stats = Cleaner().clean(log, NOW, active_producers={9: abort})
    assert stats.markers_dropped == 0 and markers(log) == [abort]
    assert Cleaner().clean(log, NOW, active_producers={}).markers_dropped == 0  # nothing dirty
    assert clean_again(log).markers_dropped == 1


def test_removed_marker_at_a_segment_end_leaves_a_placeholder(log, tmp_path):
    plain(log, (b"a", b"1"))
    abort = marker(log, 6, ControlType.ABORT)  # the last batch of the cleaned group
    seal(log)
    plain(log, (b"b", b"1"))  # in the active segment
    stats = Cleaner().clean(log, NOW)
    assert stats.markers_dropped == 1
    (holder,) = [b for b in batches(log) if b.base_offset == abort]
    h = holder.header
    assert (h.record_count, h.producer_id, h.is_control, h.is_transactional) == (0, -1, False,
                                                                                  False)
    end = log.log_end_offset
    directory = log.directory
    log.close()
    reopened = Log.open(directory, log.config, recovery_point=0)  # full recovery scan
    try:
        assert not reopened.recovery_report.truncated
        assert reopened.log_end_offset == end
        assert values(reopened) == {b"a": b"1", b"b": b"1"}
    finally:
        reopened.close()


def test_producer_state_rebuilt_after_marker_removal_has_no_open_transaction(log, tmp_path):
    txn(log, 6, (b"k", b"aborted"))
    marker(log, 6, ControlType.ABORT)
    txn(log, 7, (b"m", b"committed"))
    commit = marker(log, 7, ControlType.COMMIT)
    seal(log)
    Cleaner().clean(log, NOW)
    clean_again(log)
    assert markers(log) == [commit]  # 7's data is still the latest "m"
    data = b"".join(bytes(s) for s in log.read(0, 1 << 30).slices)
    psm = ProducerStateManager(tmp_path / "replay")
    for b in read_batches(data):
        psm.update_from_batch(BatchMeta.from_header(b.header, data))
    assert psm.first_unstable_offset() is None
    assert values(log)[b"m"] == b"committed" and b"k" not in values(log)


ops_st = st.lists(
    st.one_of(
        st.tuples(st.just("plain"), st.just(0), st.sampled_from([b"a", b"b", b"c", b"d"])),
        st.tuples(st.just("txn"), st.integers(1, 3), st.sampled_from([b"a", b"b", b"c", b"d"])),
        st.tuples(st.sampled_from(["commit", "abort"]), st.integers(1, 3), st.just(b"")),
    ),
    min_size=1, max_size=40,
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops_st, segment_bytes=st.sampled_from([400, 100_000]))
def test_markers_outlive_their_data_and_committed_view_is_kept(ops, segment_bytes):
    """Any mix of plain writes and transactions, cleaned three times: every transactional
    batch left still ends the way it did (its marker was not removed before it), no aborted
    record is left (an emptied batch may stay to end a cleaned segment), and the
    read_committed latest value of every key is unchanged."""
    cfg = LogConfig.from_topic_config({
        "cleanup.policy": "compact", "segment.bytes": str(segment_bytes),
        "index.interval.bytes": "128", "segment.index.bytes": "4096",
        "delete.retention.ms": str(HORIZON_MS)})
    with tempfile.TemporaryDirectory() as tmp:
        log = Log.open(f"{tmp}/t-0", cfg)
        try:
            open_txn: set[int] = set()
            for i, (kind, pid, key) in enumerate(ops):
                if kind == "plain":
                    plain(log, (key, b"%d" % i))
                elif kind == "txn":
                    txn(log, pid, (key, b"%d" % i))
                    open_txn.add(pid)
                elif pid in open_txn:  # a marker ends an open transaction
                    marker(log, pid, ControlType.COMMIT if kind == "commit" else ControlType.ABORT)
                    open_txn.discard(pid)
            seal(log)
            before = outcomes(log)
            latest = committed_latest(log, before)
            Cleaner().clean(log, NOW)
            clean_again(log)
            clean_again(log)
            after = outcomes(log)
            assert not aborted_records(log, after)
            assert all(before[base] == o for base, o in after.items())
            got = committed_latest(log, after)
            assert {k: v for k, v in got.items() if k != b"filler"} == latest
        finally:
            log.close()


def outcomes(log: Log) -> dict[int, str]:
    """How each transactional data batch ended, by base offset: committed, aborted, open."""
    txns = scan_transactions(log.segments)
    out = {}
    for b in batches(log):
        if b.is_transactional and not b.is_control:
            base = b.base_offset
            out[base] = "committed" if base in txns.committed else \
                "aborted" if base in txns.aborted else "open"
    return out


def committed_latest(log: Log, ends: dict[int, str]) -> dict[bytes, bytes]:
    """The latest value of each key a read_committed reader sees (open data not yet)."""
    seen: dict[bytes, bytes] = {}
    for b in batches(log):
        if b.is_control or (b.is_transactional and ends[b.base_offset] != "committed"):
            continue
        for r in b.records():
            seen[r.key] = r.value
    return seen


def aborted_records(log: Log, ends: dict[int, str]) -> int:
    return sum(b.header.record_count for b in batches(log)
               if not b.is_control and ends.get(b.base_offset) == "aborted")

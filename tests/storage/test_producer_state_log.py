"""Producer state wired to a real Log: dedupe across restarts, snapshots, truncation, markers."""

from __future__ import annotations

import pytest

from qnode.storage.batch_builder import BatchBuilder, ControlType, build_control_batch
from qnode.storage.log import Log
from qnode.storage.log_config import LogConfig
from qnode.storage.producer_state import (
    DuplicateBatch,
    InvalidProducerEpochError,
    OutOfOrderSequenceError,
    attach,
    list_snapshots,
)
from qnode.storage.record_batch import iter_batches

CFG = LogConfig.from_topic_config({"segment.bytes": "1024", "segment.index.bytes": "4096"})


def pbatch(seq: int, n: int = 2, pid: int = 7, epoch: int = 0, txn: bool = False) -> bytes:
    b = BatchBuilder(producer_id=pid, producer_epoch=epoch, base_sequence=seq, transactional=txn)
    for i in range(n):
        b.append(b"k", b"v%d-%d" % (seq, i), timestamp_ms=1000)
    return b.build()


def produce(log: Log, data: bytes) -> int:
    """The leader's path: check, then append; returns the base offset (original if a retry)."""
    dup = log.producer_state.check_batches(iter_batches(data))
    if dup is not None:
        return dup.first_offset
    return log.append(data, leader_epoch=0).base_offset


@pytest.fixture
def path(tmp_path):
    return tmp_path / "t-0"


def test_retries_answered_with_original_offsets_across_a_restart(path):
    log = Log.open(path, CFG)
    attach(log)
    offsets = [produce(log, pbatch(seq)) for seq in range(0, 40, 2)]
    assert offsets == list(range(0, 40, 2))
    assert produce(log, pbatch(36)) == 36 and log.log_end_offset == 40
    assert list_snapshots(path), "a roll writes a snapshot"
    log.close()

    log = Log.open(path, CFG)
    psm = attach(log)
    try:
        assert psm.last_load.snapshot_offset is not None
        assert psm.get(7).last_seq == 39
        assert produce(log, pbatch(38)) == 38  # still a known retry after the restart
        with pytest.raises(OutOfOrderSequenceError):
            produce(log, pbatch(44))
        assert produce(log, pbatch(40)) == 40
    finally:
        log.close()


def test_clean_close_snapshots_at_the_log_end_so_reopen_replays_nothing(path):
    log = Log.open(path, LogConfig())  # one segment: no roll wrote a snapshot
    attach(log)
    for seq in range(0, 20, 2):
        produce(log, pbatch(seq))
    assert not list_snapshots(path)
    log.close()
    assert [off for off, _ in list_snapshots(path)] == [20]
    log = Log.open(path, LogConfig())
    psm = attach(log)
    try:
        assert psm.last_load.snapshot_offset == 20
        assert psm.get(7).last_seq == 19
        assert produce(log, pbatch(18)) == 18  # a retry, known without any replay
    finally:
        log.close()


def test_corrupt_snapshots_are_rebuilt_from_the_log(path):
    log = Log.open(path, CFG)
    attach(log)
    for seq in range(0, 40, 2):
        produce(log, pbatch(seq))
    log.close()
    for _, snap in list_snapshots(path):
        snap.write_bytes(b"\x00\x01garbage")
    log = Log.open(path, CFG)
    psm = attach(log)
    try:
        assert psm.last_load.snapshot_offset is None and psm.last_load.discarded
        assert psm.get(7).last_seq == 39 and psm.get(7).last_offset == 39
        assert produce(log, pbatch(38)) == 38
    finally:
        log.close()


def test_truncation_reloads_state_to_the_new_end(path):
    log = Log.open(path, CFG)
    psm = attach(log)
    try:
        for seq in range(0, 40, 2):
            produce(log, pbatch(seq))
        log.truncate_to(30)
        assert psm.get(7).last_seq == 29 and psm.map_end_offset == 30
        assert produce(log, pbatch(30)) == 30
    finally:
        log.close()


def test_fencing_and_several_batches_in_one_request(path):
    log = Log.open(path, CFG)
    psm = attach(log)
    try:
        produce(log, pbatch(0, epoch=1))
        with pytest.raises(InvalidProducerEpochError):
            produce(log, pbatch(2, epoch=0))
        two = pbatch(2, epoch=1) + pbatch(4, epoch=1)
        assert produce(log, two) == 2
        assert psm.get(7).last_seq == 5
        with pytest.raises(OutOfOrderSequenceError):
            produce(log, pbatch(6, epoch=1) + pbatch(9, epoch=1))
        with pytest.raises(OutOfOrderSequenceError):
            produce(log, pbatch(4, epoch=1) + pbatch(6, epoch=1))  # a retry mixed with news
        assert psm.check_batches(iter_batches(pbatch(4, epoch=1))) == DuplicateBatch(4, 5, 1000)
    finally:
        log.close()


def test_transaction_markers_close_transactions(path):
    log = Log.open(path, CFG)
    psm = attach(log)
    try:
        produce(log, pbatch(0, txn=True))
        produce(log, pbatch(0, pid=8, txn=True))
        assert psm.first_unstable_offset() == 0
        log.append(build_control_batch(ControlType.COMMIT, 7, 0, 3, timestamp_ms=1), 0)
        assert psm.first_unstable_offset() == 2
        log.append(build_control_batch(ControlType.ABORT, 8, 0, 3, timestamp_ms=1), 0)
        assert psm.first_unstable_offset() is None
        assert psm.get(7).coordinator_epoch == 3 and psm.get(7).current_txn_first_offset == -1
    finally:
        log.close()

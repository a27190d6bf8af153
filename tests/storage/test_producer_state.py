"""Producer state: dedupe window, gaps, fencing, sequence wrap, transactions, snapshots."""

from __future__ import annotations

import pytest

from qnode.storage.producer_state import (
    CONTROL_ABORT,
    CONTROL_COMMIT,
    INT32_MAX,
    BatchMeta,
    CompletedTxn,
    CorruptSnapshotError,
    DuplicateBatch,
    InvalidProducerEpochError,
    OutOfOrderSequenceError,
    ProducerStateManager,
    decode_snapshot,
    encode_snapshot,
    list_snapshots,
)

PID = 1000


class Writer:
    """Appends batches of one producer at consecutive offsets, as the leader would."""

    def __init__(self, psm: ProducerStateManager, pid: int = PID, epoch: int = 0) -> None:
        self.psm, self.pid, self.epoch = psm, pid, epoch
        self.next_offset = psm.map_end_offset

    def batch(self, seq: int, count: int = 1, ts: int = 1000, txn: bool = False,
              epoch: int | None = None) -> BatchMeta:
        return BatchMeta(self.pid, self.epoch if epoch is None else epoch, seq,
                         self.next_offset, self.next_offset + count - 1, ts, txn)

    def send(self, seq: int, count: int = 1, **kw) -> DuplicateBatch | None:
        meta = self.batch(seq, count, **kw)
        dup = self.psm.check_and_update(meta)
        if dup is None:
            self.next_offset += count
        return dup


def test_unknown_producer_accepts_any_first_sequence_then_demands_order(tmp_path):
    w = Writer(ProducerStateManager(tmp_path))
    assert w.send(17, 3) is None
    assert w.psm.get(PID).last_seq == 19
    assert w.send(20, 2) is None
    with pytest.raises(OutOfOrderSequenceError, match="23 does not follow 21"):
        w.send(23)
    assert w.psm.get(PID).last_seq == 21
    assert w.psm.map_end_offset == 5


def test_dedupe_window_holds_last_five_batches(tmp_path):
    w = Writer(ProducerStateManager(tmp_path))
    originals = []
    for i in range(6):
        originals.append((w.next_offset, w.next_offset + 1))
        assert w.send(2 * i, 2, ts=100 + i) is None
    for i in range(1, 6):
        dup = w.send(2 * i, 2)
        assert dup == DuplicateBatch(originals[i][0], originals[i][1], 100 + i)
    assert w.next_offset == 12  # nothing appended for the retries
    with pytest.raises(OutOfOrderSequenceError):
        w.send(0, 2)  # fell out of the window: neither a known retry nor in sequence


def test_check_does_not_change_state(tmp_path):
    psm = ProducerStateManager(tmp_path)
    w = Writer(psm)
    w.send(0)
    assert psm.check(w.batch(1)) is None
    assert psm.check(w.batch(1)) is None
    assert psm.get(PID).last_seq == 0
    assert psm.map_end_offset == 1


def test_fencing_and_epoch_bump(tmp_path):
    w = Writer(ProducerStateManager(tmp_path), epoch=3)
    w.send(0, 5)
    with pytest.raises(InvalidProducerEpochError, match="epoch 2 is older than .* 3"):
        w.send(5, epoch=2)
    with pytest.raises(OutOfOrderSequenceError, match="restart at sequence 0"):
        w.send(5, epoch=4)
    assert w.send(0, epoch=4) is None
    entry = w.psm.get(PID)
    assert (entry.epoch, entry.last_seq, len(entry.batches)) == (4, 0, 1)
    with pytest.raises(InvalidProducerEpochError):
        w.send(1, epoch=3)


def test_sequence_wraps_at_int32_max(tmp_path):
    w = Writer(ProducerStateManager(tmp_path))
    w.send(INT32_MAX - 2, 2)
    assert w.psm.get(PID).last_seq == INT32_MAX - 1
    w.send(INT32_MAX - 0, 3)  # spans the wrap: INT32_MAX, 0, 1
    assert w.psm.get(PID).last_seq == 1
    assert w.send(INT32_MAX, 3) == DuplicateBatch(2, 4, 1000)
    assert w.send(2) is None
    w2 = Writer(ProducerStateManager(tmp_path), pid=7)
    w2.send(INT32_MAX)
    assert w2.send(0) is None


def test_non_idempotent_batches_only_advance_map_end(tmp_path):
    psm = ProducerStateManager(tmp_path)
    assert psm.check_and_update(BatchMeta(-1, -1, -1, 0, 9, 5)) is None
    assert psm.producers == {}
    assert psm.map_end_offset == 10


def test_transaction_first_offset_and_markers(tmp_path):
    psm = ProducerStateManager(tmp_path)
    w = Writer(psm)
    w.send(0, 2, txn=True)
    w.send(2, 2, txn=True)
    other = Writer(psm, pid=2)
    other.next_offset = w.next_offset
    other.send(0, 1, txn=True)
    assert psm.first_unstable_offset() == 0
    done = psm.update(BatchMeta(PID, 0, -1, 5, 5, 2000, True, CONTROL_COMMIT, 7))
    assert done == CompletedTxn(PID, 0, 5, is_aborted=False)
    assert psm.first_unstable_offset() == 4
    done = psm.update(BatchMeta(2, 0, -1, 6, 6, 2000, True, CONTROL_ABORT, 7))
    assert done == CompletedTxn(2, 4, 6, is_aborted=True)
    assert psm.first_unstable_offset() is None
    assert psm.get(PID).coordinator_epoch == 7


def test_marker_with_bumped_epoch_restarts_sequences(tmp_path):
    psm = ProducerStateManager(tmp_path)
    w = Writer(psm)
    w.send(0, 3, txn=True)
    psm.update(BatchMeta(PID, 1, -1, 3, 3, 0, True, CONTROL_ABORT))
    w.next_offset = 4
    with pytest.raises(OutOfOrderSequenceError):
        w.send(3, epoch=1)
    assert w.send(0, epoch=1) is None


def test_expiry_keeps_open_transactions(tmp_path):
    psm = ProducerStateManager(tmp_path, producer_id_expiration_ms=1000)
    Writer(psm, pid=1).send(0, ts=100)
    w2 = Writer(psm, pid=2)
    w2.next_offset = 1
    w2.send(0, ts=100, txn=True)
    w3 = Writer(psm, pid=3)
    w3.next_offset = 2
    w3.send(0, ts=900)
    assert psm.remove_expired_producers(1500) == [1]
    assert sorted(psm.producers) == [2, 3]


def test_snapshot_round_trip(tmp_path):
    psm = ProducerStateManager(tmp_path)
    w = Writer(psm, epoch=2)
    for i in range(7):
        w.send(i * 3, 3, ts=50 + i)
    t = Writer(psm, pid=9)
    t.next_offset = w.next_offset
    t.send(0, 1, txn=True)
    path = psm.take_snapshot()
    assert path.name == "00000000000000000022.snapshot"
    assert not list(tmp_path.glob("*.tmp"))
    again = ProducerStateManager(tmp_path)
    report = again.load(0, 22)
    assert report.snapshot_offset == 22 and report.discarded == ()
    assert again.map_end_offset == 22
    assert again.producers == psm.producers
    assert again.first_unstable_offset() == 21
    # The restored window still recognises the last five batches as retries.
    w.psm = again
    assert w.send(18, 3) == DuplicateBatch(18, 20, 56)
    with pytest.raises(OutOfOrderSequenceError):
        w.send(22)


def test_corrupt_snapshot_is_discarded_and_state_rebuilt_by_replay(tmp_path):
    psm = ProducerStateManager(tmp_path)
    w = Writer(psm)
    log = []  # what the log holds, replayed by its owner on load
    for i in range(4):
        log.append(w.batch(i))
        w.send(i)
    psm.take_snapshot()  # at 4
    for i in range(4, 8):
        log.append(w.batch(i))
        w.send(i)
    newest = psm.take_snapshot()  # at 8
    data = bytearray(newest.read_bytes())
    data[-3] ^= 0x40
    newest.write_bytes(bytes(data))

    again = ProducerStateManager(tmp_path)
    report = again.load(0, 8)
    assert report.snapshot_offset == 4
    assert len(report.discarded) == 1 and "CRC" in report.discarded[0]
    assert not newest.exists()
    for meta in log:
        if meta.first_offset >= again.map_end_offset:
            again.update_from_batch(meta)
    assert again.producers == psm.producers
    assert again.map_end_offset == 8


@pytest.mark.parametrize("damage", ["truncate", "version", "trailing", "empty"])
def test_decode_snapshot_rejects_damage(damage):
    from qnode.storage.producer_state import ProducerEntry
    entry = ProducerEntry(5, 1)
    data = encode_snapshot(10, [entry])
    assert decode_snapshot(data)[0] == 10
    bad = {"truncate": data[:-4], "version": b"\x00\x09" + data[2:],
           "trailing": data + b"\x00", "empty": b""}[damage]
    with pytest.raises(CorruptSnapshotError):
        decode_snapshot(bad)


def test_load_drops_snapshots_past_log_end_and_truncate_head(tmp_path):
    psm = ProducerStateManager(tmp_path)
    a = Writer(psm, pid=1)
    a.send(0, 5)
    psm.take_snapshot()  # 5
    b = Writer(psm, pid=2)
    b.next_offset = 5
    b.send(0, 5)
    psm.take_snapshot()  # 10
    again = ProducerStateManager(tmp_path)
    assert again.load(0, 7).snapshot_offset == 5  # log truncated to 7
    assert [o for o, _ in list_snapshots(tmp_path)] == [5]
    assert sorted(again.producers) == [1]
    again.update_from_batch(b.batch(0, 2, epoch=0))
    again.truncate_head(6)  # pid 1's last batch (offsets 0-4) is gone
    assert sorted(again.producers) == [2]
    assert list_snapshots(tmp_path) == []


def test_from_header_reads_fields_of_a_real_batch():
    from qnode.storage import record_batch as rb
    hdr = rb.BatchHeader(0, 100, 40, 3, 2, 0, rb.TRANSACTIONAL_MASK, 4, 10, 20, 77, 2, 8, 5)
    meta = BatchMeta.from_header(hdr)
    assert (meta.producer_id, meta.producer_epoch, meta.base_sequence) == (77, 2, 8)
    assert (meta.first_offset, meta.last_offset, meta.last_sequence) == (40, 44, 12)
    assert meta.is_transactional and meta.control_type is None
    with pytest.raises(ValueError):
        BatchMeta.from_header(rb.BatchHeader(0, 100, 40, 3, 2, 0, rb.CONTROL_MASK,
                                             0, 10, 20, 77, 2, -1, 1))


def test_from_header_reads_marker_type_of_a_control_batch():
    from qnode.storage.batch_builder import ControlType, build_control_batch
    from qnode.storage.record_batch import iter_batches
    for ctype, expected in ((ControlType.COMMIT, CONTROL_COMMIT), (ControlType.ABORT,
                                                                     CONTROL_ABORT)):
        buf = build_control_batch(ctype, 77, 3, 9, timestamp_ms=5)
        hdr = next(iter_batches(buf))
        meta = BatchMeta.from_header(hdr, buf, coordinator_epoch=9)
        assert meta.control_type == expected and meta.producer_id == 77

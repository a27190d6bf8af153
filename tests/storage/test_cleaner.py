"""Log compaction on real partition logs: latest per key, offsets kept, tombstones, rounds."""

from __future__ import annotations

import pytest

from qnode.storage.batch_builder import BatchBuilder, ControlType, build_control_batch
from qnode.storage.batch_reader import iter_records, read_batches
from qnode.storage.cleaner import Cleaner, CleanerConfig, CleanerError
from qnode.storage.cleaner_scope import CHECKPOINT_NAME, read_first_dirty
from qnode.storage.errors import CorruptRecordError
from qnode.storage.log import Log
from qnode.storage.log_config import LogConfig
from qnode.storage.offset_map import SLOT_BYTES
from qnode.storage.producer_state import BatchMeta, ProducerStateManager
from qnode.storage.record_batch import validate_batches

NOW = 10_000_000


def config(**extra: str) -> LogConfig:
    base = {"cleanup.policy": "compact", "segment.bytes": "2048",
            "index.interval.bytes": "256", "delete.retention.ms": "1000",
            "segment.index.bytes": "4096"}
    base.update(extra)
    return LogConfig.from_topic_config(base)


def batch(records, ts: int = 1000, codec: str = "none", **producer) -> bytes:
    b = BatchBuilder(codec, **producer)
    for key, value in records:
        b.append(key, value, timestamp_ms=ts)
    return b.build()


def write(log: Log, records, per_batch: int = 3, ts: int = 1000, codec: str = "none") -> None:
    for i in range(0, len(records), per_batch):
        log.append(batch(records[i:i + per_batch], ts, codec), leader_epoch=0)
    log.high_watermark = log.log_end_offset


def read_all(log: Log) -> list:
    data = b"".join(bytes(s) for s in log.read(log.log_start_offset, 1 << 30).slices)
    if data:
        validate_batches(data, producer_batches=False)  # whole, CRC-valid, ordered batches
    return [(r.offset, r.key, r.value) for r in iter_records(data)]


def kv(i: int, keys: int) -> tuple[bytes, bytes]:
    return b"key-%d" % (i % keys), b"value-%d" % i


@pytest.fixture
def log(tmp_path):
    lg = Log.open(tmp_path / "t-0", config())
    yield lg
    lg.close()


def test_keeps_latest_per_key_with_original_offsets(log, tmp_path):
    records = [kv(i, 7) for i in range(120)]
    write(log, records)
    log.roll()
    before = len(log.segments)
    stats = Cleaner().clean(log, NOW)
    after = read_all(log)
    expected = {}
    for off, (k, v) in enumerate(records):
        expected[k] = (off, k, v)
    assert sorted(after) == sorted(expected.values())
    assert stats.records_kept == 7 and stats.records_superseded == 113
    assert stats.rounds == 1 and stats.segments_written < before
    assert stats.bytes_written < stats.bytes_read
    assert log.log_end_offset == 120
    assert read_first_dirty(log.directory) == 120
    # appends continue at the same offsets, and a reopen sees the same log
    write(log, [(b"key-0", b"new")])
    assert log.log_end_offset == 121
    directory = log.directory
    log.close()
    again = Log.open(directory, config())
    try:
        assert read_all(again)[-1] == (120, b"key-0", b"new")
        assert again.log_end_offset == 121
        assert not again.recovery_report.truncated
    finally:
        again.close()


def test_active_segment_is_never_touched(log):
    write(log, [kv(i, 3) for i in range(30)])
    active_base = log.active_segment.base_offset
    active_size = log.active_segment.size
    Cleaner().clean(log, NOW)
    assert log.active_segment.base_offset == active_base
    assert log.active_segment.size == active_size
    tail = [r for r in read_all(log) if r[0] >= active_base]
    assert len(tail) == 30 - active_base


def test_null_keys_are_dropped_and_counted(log):
    write(log, [(None, b"x"), (b"a", b"1"), (None, b"y"), (b"a", b"2")], per_batch=2)
    log.roll()
    stats = Cleaner().clean(log, NOW)
    assert stats.null_keys_dropped == 2
    assert read_all(log) == [(3, b"a", b"2")]


def test_tombstones_dropped_only_after_delete_retention(log):
    write(log, [(b"a", b"1"), (b"b", b"1"), (b"a", None)], ts=5000)
    log.roll()
    Cleaner().clean(log, now_ms=5500)  # 500 ms old < delete.retention.ms 1000
    assert read_all(log) == [(1, b"b", b"1"), (2, b"a", None)]
    write(log, [(b"c", b"1")], ts=5600)
    log.roll()
    stats = Cleaner().clean(log, now_ms=6100)  # the tombstone's segment is now 1100 ms old
    assert stats.tombstones_dropped == 1
    assert read_all(log) == [(1, b"b", b"1"), (3, b"c", b"1")]


def test_min_compaction_lag_keeps_young_segments_dirty(tmp_path):
    lg = Log.open(tmp_path / "t-0", config(**{"min.compaction.lag.ms": "60000"}))
    try:
        write(lg, [kv(i, 2) for i in range(20)], ts=NOW - 1000)
        lg.roll()
        stats = Cleaner().clean(lg, NOW)
        assert stats.rounds == 0 and len(read_all(lg)) == 20
        stats = Cleaner().clean(lg, NOW + 60_000)
        assert stats.rounds == 1 and len(read_all(lg)) == 2
    finally:
        lg.close()


def test_nothing_above_the_high_watermark_is_cleaned(log):
    write(log, [kv(i, 2) for i in range(200)])
    log.roll()
    log.high_watermark = 100
    Cleaner().clean(log, NOW)
    # The segment holding the HW and all after it are untouched; below it, compacted.
    bound = next(s.base_offset for s in log.segments if s.next_offset > 100)
    got = read_all(log)
    assert 0 < bound <= 100
    assert [o for o, _, _ in got if o >= bound] == list(range(bound, 200))
    # below it only the latest of each key within the cleaned range stays
    assert [o for o, _, _ in got if o < bound] == [bound - 2, bound - 1]


def test_small_dedupe_buffer_cleans_in_rounds_to_the_same_result(tmp_path):
    records = [kv(i * 7919 % 1000, 50) for i in range(600)]
    results = []
    for name, buffer in (("big", 1 << 20), ("small", SLOT_BYTES * 24)):
        lg = Log.open(tmp_path / name, config())
        try:
            write(lg, records)
            lg.roll()
            stats = Cleaner(CleanerConfig(dedupe_buffer_size=buffer)).clean(lg, NOW)
            results.append((read_all(lg), stats))
        finally:
            lg.close()
    (big, big_stats), (small, small_stats) = results
    assert big_stats.rounds == 1 and small_stats.rounds > 3
    assert small == big and len(big) == 50
    assert small_stats.map_entries <= int(24 * 0.9)


def test_dedupe_buffer_too_small_for_one_batch_is_a_clear_error(log):
    write(log, [kv(i, 100) for i in range(40)], per_batch=20)
    log.roll()
    with pytest.raises(CleanerError, match="dedupe.buffer.size"):
        Cleaner(CleanerConfig(dedupe_buffer_size=SLOT_BYTES * 8)).clean(log, NOW)
    assert len(read_all(log)) == 40


@pytest.mark.parametrize("codec", ["gzip", "lz4", "zstd"])
def test_compressed_batches_are_rebuilt_with_their_codec(log, codec):
    write(log, [kv(i, 4) for i in range(24)], per_batch=6, codec=codec)
    log.roll()
    Cleaner().clean(log, NOW)
    data = b"".join(bytes(s) for s in log.read(0, 1 << 30).slices)
    codecs = {b.compression for b in read_batches(data) if b.record_count}
    assert codecs == {{"gzip": 1, "lz4": 3, "zstd": 4}[codec]}
    assert sorted(r[1] for r in read_all(log)) == [b"key-0", b"key-1", b"key-2", b"key-3"]


def test_producer_fields_and_sequences_survive_and_rebuild_producer_state(log, tmp_path):
    psm = ProducerStateManager(tmp_path / "t-0")
    log.producer_state = psm
    seq = 0
    for i in range(10):  # producer 9 rewrites the same two keys: all but the last go
        data = batch([(b"a", b"%d" % i), (b"b", b"%d" % i)], producer_id=9, producer_epoch=1,
                     base_sequence=seq)
        res = log.append(data, leader_epoch=0)
        psm.update(BatchMeta(9, 1, seq, res.base_offset, res.last_offset, 1000))
        seq += 2
    log.append(batch([(b"a", b"final")]), leader_epoch=0)  # supersedes producer 9's last "a"
    log.append(batch([(b"b", b"final")]), leader_epoch=0)
    log.high_watermark = log.log_end_offset
    log.roll()
    stats = Cleaner().clean(log, NOW)
    assert stats.empty_batches_kept >= 1
    data = b"".join(bytes(s) for s in log.read(0, 1 << 30).slices)
    replay = ProducerStateManager(tmp_path / "replay")
    for b in read_batches(data):
        replay.update_from_batch(BatchMeta.from_header(b.header, data))
    assert replay.get(9).last_seq == 19 and replay.get(9).last_offset == 19
    assert replay.get(9).epoch == 1
    assert [r[1:] for r in read_all(log)] == [(b"a", b"final"), (b"b", b"final")]


def txn_batch(pid: int, records, seq: int = 0) -> bytes:
    return batch(records, producer_id=pid, producer_epoch=0, base_sequence=seq,
                 transactional=True)


def marker(pid: int, kind: ControlType) -> bytes:
    return build_control_batch(kind, pid, 0, 1, timestamp_ms=1000)


def test_transactions_settled_by_markers(log):
    log.append(batch([(b"a", b"plain-1"), (b"b", b"plain-1"), (b"c", b"plain-1")]), 0)  # 0-2
    log.append(txn_batch(5, [(b"a", b"committed")]), 0)  # 3, committed below
    log.append(txn_batch(6, [(b"b", b"aborted"), (b"z", b"aborted")]), 0)  # 4-5, aborted
    log.append(marker(5, ControlType.COMMIT), 0)  # 6
    log.append(marker(6, ControlType.ABORT), 0)  # 7
    log.append(txn_batch(7, [(b"c", b"open")]), 0)  # 8: no marker yet
    log.append(batch([(b"d", b"plain")]), 0)  # 9
    log.high_watermark = log.log_end_offset
    log.roll()
    stats = Cleaner().clean(log, NOW)
    assert stats.aborted_records_dropped == 2
    got = read_all(log)
    assert (3, b"a", b"committed") in got and (0, b"a", b"plain-1") not in got  # superseded
    assert (1, b"b", b"plain-1") in got  # an aborted write hides nothing
    assert not [r for r in got if r[2] == b"aborted"]
    assert (2, b"c", b"plain-1") in got and (8, b"c", b"open") in got  # open: kept, hides none
    data = b"".join(bytes(s) for s in log.read(0, 1 << 30).slices)
    controls = [b.base_offset for b in read_batches(data) if b.is_control]
    assert controls == [6, 7]  # markers stay


def test_corrupt_batch_in_closed_segment_aborts_without_changing_the_log(log):
    write(log, [kv(i, 3) for i in range(30)])
    log.roll()
    seg = log.segments[0]
    with open(seg.log_path, "r+b") as f:
        f.seek(70)
        byte = f.read(1)
        f.seek(70)
        f.write(bytes([byte[0] ^ 0xFF]))
    sizes = [s.size for s in log.segments]
    with pytest.raises(CorruptRecordError):
        Cleaner().clean(log, NOW)
    assert [s.size for s in log.segments] == sizes
    assert not [p for p in (tmp for tmp in __import__("os").listdir(log.directory))
                if p.endswith(".cleaned")]


def test_needs_cleaning_follows_dirty_ratio(tmp_path):
    lg = Log.open(tmp_path / "t-0", config(**{"min.cleanable.dirty.ratio": "0.5"}))
    try:
        cleaner = Cleaner()
        assert not cleaner.needs_cleaning(lg, NOW)
        write(lg, [kv(i, 5) for i in range(60)])
        lg.roll()
        assert cleaner.needs_cleaning(lg, NOW)
        cleaner.clean(lg, NOW)
        assert not cleaner.needs_cleaning(lg, NOW)
        assert (tmp_path / "t-0" / CHECKPOINT_NAME).exists()
    finally:
        lg.close()
    plain = Log.open(tmp_path / "d-0", LogConfig())
    try:
        write(plain, [kv(i, 5) for i in range(10)])
        plain.roll()
        assert not Cleaner().needs_cleaning(plain, NOW)
    finally:
        plain.close()


def test_log_manager_hook_cleans_dirty_logs_and_skips_uncleanable_ones(tmp_path):
    from qnode.storage.log_manager import LogManager

    manager = LogManager(tmp_path, "w0", cleaner_backoff_ms=0)
    cleaner = Cleaner(CleanerConfig(dedupe_buffer_size=SLOT_BYTES * 16))
    manager.cleaners.append(cleaner)
    try:
        good = manager.open_log("good", 0, config())
        bad = manager.open_log("bad", 0, config())
        write(good, [kv(i, 5) for i in range(80)])
        write(bad, [kv(i, 50) for i in range(80)], per_batch=20)  # 20 keys > 14 map entries
        good.roll()
        bad.roll()
        report = manager.tick(NOW)
        assert report.cleaned == [("good", 0)] and not report.errors
        assert len(read_all(good)) == 5
        assert cleaner.last_stats[good.directory].records_kept == 5
        assert "dedupe.buffer.size" in cleaner.uncleanable[bad.directory]
        assert len(read_all(bad)) == 80 and not bad.closed  # still online, untouched
        assert manager.tick(NOW + 1).cleaned == []
    finally:
        manager.close()


def test_max_compaction_lag_forces_a_clean_below_the_dirty_ratio(tmp_path):
    lg = Log.open(tmp_path / "t-0", config(**{"min.cleanable.dirty.ratio": "0.99",
                                               "max.compaction.lag.ms": "60000"}))
    try:
        write(lg, [kv(i, 50) for i in range(200)], ts=NOW)
        lg.roll()
        Cleaner().clean(lg, NOW)  # all clean now
        write(lg, [kv(i, 50) for i in range(3)], ts=NOW)  # a little dirt: ratio far below 0.99
        lg.roll()
        cleaner = Cleaner()
        assert not cleaner.needs_cleaning(lg, NOW + 59_000)
        assert cleaner.needs_cleaning(lg, NOW + 60_000)
        assert cleaner(lg, NOW + 60_000) is True
        assert len(read_all(lg)) == 50
    finally:
        lg.close()


def test_slices_handed_out_before_a_clean_stay_readable_after_it(log):
    write(log, [kv(i, 3) for i in range(300)])
    log.roll()
    before = log.read(0, 1 << 30)
    copy = [bytes(s) for s in before.slices]
    stats = Cleaner().clean(log, NOW)
    assert stats.segments_written > 0
    # a fetch response still being sent (zmq copy=False) reads the old mapping intact
    assert [bytes(s) for s in before.slices] == copy
    assert len(read_all(log)) == 3

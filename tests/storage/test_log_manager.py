"""LogManager: checkpoints, create/delete, retention and flush on tick; checkpoint format."""

from __future__ import annotations

import os

import pytest
from storage_log_helpers import make_batch, read_all

from qnode.storage import LogConfig
from qnode.storage.batch_builder import BatchBuilder
from qnode.storage.checkpoint import CorruptCheckpointError, read_checkpoint, write_checkpoint
from qnode.storage.cleaner import Cleaner
from qnode.storage.log_manager import (
    HIGH_WATERMARK_CHECKPOINT,
    LOG_START_CHECKPOINT,
    RECOVERY_POINT_CHECKPOINT,
    LogManager,
    parse_log_dir_name,
)
from qnode.storage.retention import apply_retention


def test_checkpoint_round_trip_and_format(tmp_path):
    path = str(tmp_path / "cp")
    write_checkpoint(path, {("orders", 1): 877, ("orders", 0): 1200})
    assert open(path).read() == "0\n2\norders 0 1200\norders 1 877\n"
    assert read_checkpoint(path) == {("orders", 0): 1200, ("orders", 1): 877}
    assert read_checkpoint(str(tmp_path / "missing")) == {}
    with open(path, "w") as f:
        f.write("0\n3\norders 0 1200\n")
    with pytest.raises(CorruptCheckpointError, match="3 entries"):
        read_checkpoint(path)


def test_parse_log_dir_name():
    assert parse_log_dir_name("my-topic-12") == ("my-topic", 12)
    assert parse_log_dir_name("__cluster_metadata-0") == ("__cluster_metadata", 0)
    assert parse_log_dir_name("x-1.abc.deleted") is None
    assert parse_log_dir_name("nodash") is None


def test_manager_checkpoints_offsets_and_reopens(tmp_path):
    mgr = LogManager(tmp_path, "w0")
    log = mgr.open_log("orders", 0)
    for _ in range(5):
        log.append(make_batch(4), 0)
    log.high_watermark = 12
    log.flush()
    mgr.checkpoint()
    assert read_checkpoint(mgr.checkpoint_path(RECOVERY_POINT_CHECKPOINT)) == {("orders", 0): 20}
    assert read_checkpoint(mgr.checkpoint_path(HIGH_WATERMARK_CHECKPOINT)) == {("orders", 0): 12}
    assert read_checkpoint(mgr.checkpoint_path(LOG_START_CHECKPOINT)) == {("orders", 0): 0}
    assert os.path.basename(mgr.checkpoint_path(RECOVERY_POINT_CHECKPOINT)).endswith(".w0")
    mgr.close()
    mgr = LogManager(tmp_path, "w0")
    assert mgr.checkpointed_partitions() == [("orders", 0)]
    log = mgr.open_log("orders", 0)
    assert (log.log_end_offset, log.high_watermark) == (20, 12)
    assert read_all(log) == list(range(20))
    mgr.close()


def test_manager_delete_log_removes_directory(tmp_path):
    mgr = LogManager(tmp_path, "w1")
    log = mgr.open_log("gone", 3)
    log.append(make_batch(), 0)
    assert mgr.delete_log("gone", 3)
    assert not any(n.startswith("gone-3") for n in os.listdir(tmp_path))
    assert mgr.get("gone", 3) is None
    # a leftover of a crashed delete is removed by the next manager
    os.makedirs(tmp_path / "old-0.1234.deleted")
    LogManager(tmp_path, "w1")
    assert not (tmp_path / "old-0.1234.deleted").exists()
    mgr.close()


def test_retention_by_bytes_time_and_log_start(tmp_path):
    cfg = LogConfig.from_topic_config({"segment.bytes": "3000", "retention.bytes": "6000",
                                       "retention.ms": "100000"})
    mgr = LogManager(tmp_path, "w2", retention_check_interval_ms=0)
    log = mgr.open_log("r", 0, cfg)
    for i in range(40):
        log.append(make_batch(5, ts=1_000_000 + i), 0)
    log.high_watermark = log.log_end_offset
    before = len(log.segments)
    report = mgr.tick(1_000_050)
    assert report.deleted_segments[("r", 0)] > 0
    assert log.size_bytes - log.closed_segments()[0].size < 6000 <= log.size_bytes
    assert log.log_start_offset == log.segments[0].base_offset > 0
    assert len(log.segments) < before
    assert read_all(log, log.log_start_offset)[-1] == 199
    # time: everything closed is older than retention.ms at a later now; active stays
    res = apply_retention(log, 1_000_000 + 200_000)
    assert res.deleted_segments > 0 and len(log.segments) == 1
    mgr.close()


def test_retention_never_passes_high_watermark(tmp_path):
    cfg = LogConfig.from_topic_config({"segment.bytes": "3000", "retention.bytes": "0"})
    mgr = LogManager(tmp_path, "w3", retention_check_interval_ms=0)
    log = mgr.open_log("r", 0, cfg)
    for _ in range(20):
        log.append(make_batch(5), 0)
    log.high_watermark = 0
    assert apply_retention(log, 0).deleted_segments == 0
    log.high_watermark = log.segments[2].base_offset
    assert apply_retention(log, 0).deleted_segments == 2
    mgr.close()


def test_delete_records_before_advances_log_start(tmp_path):
    cfg = LogConfig.from_topic_config({"segment.bytes": "3000"})
    mgr = LogManager(tmp_path, "w4")
    log = mgr.open_log("d", 0, cfg)
    for _ in range(20):
        log.append(make_batch(5), 0)
    log.high_watermark = 100
    target = log.segments[2].base_offset + 3
    gen = log.segment_generation
    assert log.delete_records_before(target) == target
    assert log.segments[0].base_offset == target - 3
    assert log.segment_generation > gen
    assert read_all(log, target)[0] == target
    mgr.close()
    mgr = LogManager(tmp_path, "w4")
    log = mgr.open_log("d", 0, cfg)
    assert log.log_start_offset == target
    mgr.close()


def test_flush_ms_flushes_on_tick(tmp_path):
    cfg = LogConfig.from_topic_config({"flush.ms": "1000"})
    mgr = LogManager(tmp_path, "w5")
    log = mgr.open_log("f", 0, cfg)
    log.append(make_batch(), 0)
    assert log.recovery_point == 0
    now = log._last_flush_ms  # noqa: SLF001 - the log's own clock
    assert ("f", 0) not in mgr.tick(now + 10).flushed
    assert ("f", 0) in mgr.tick(now + 2000).flushed
    mgr.wait_for_flushes()
    assert log.recovery_point == 10
    mgr.close()


def test_rolled_segment_is_flushed_in_background_so_recovery_scans_little(tmp_path):
    cfg = LogConfig.from_topic_config({"segment.bytes": "3000"})
    mgr = LogManager(tmp_path, "w6", checkpoint_interval_ms=0)
    log = mgr.open_log("g", 0, cfg)
    for _ in range(20):
        log.append(make_batch(5), 0)
    assert log.recovery_point == 0 and log.unflushed_rolled
    report = mgr.tick(1)
    assert ("g", 0) in report.flushed
    mgr.wait_for_flushes()
    assert log.recovery_point == log.active_segment_base > 0
    mgr.checkpoint()
    tail = log.log_end_offset - log.active_segment_base
    log.close_without_flush()  # as kill -9 would leave it
    mgr2 = LogManager(tmp_path, "w6")
    log = mgr2.open_log("g", 0, cfg)
    rep = log.recovery_report
    assert rep.validated_segments == 1 and rep.validated_batches == tail // 5
    assert read_all(log) == list(range(100))
    mgr2.close()


def test_cleaner_looks_at_a_compacted_log_again_once_it_rolled(tmp_path):
    cfg = LogConfig.from_topic_config({"cleanup.policy": "compact", "segment.bytes": "2048",
                                       "segment.index.bytes": "4096"})
    mgr = LogManager(tmp_path, "w5", cleaner_backoff_ms=3_600_000, background_flush=False)
    mgr.cleaners.append(Cleaner())
    log = mgr.open_log("c", 0, cfg)
    assert mgr.tick(1000).cleaned == []  # nothing closed yet; the backoff starts
    for i in range(60):
        b = BatchBuilder()
        b.append(b"k%d" % (i % 3), b"v" * 100, timestamp_ms=1000)
        log.append(b.build(), 0)
    log.high_watermark = log.log_end_offset
    assert len(log.segments) > 2
    report = mgr.tick(2000)  # long before the backoff ends: the rolls bring it forward
    assert report.cleaned == [("c", 0)]
    assert mgr.tick(3000).cleaned == []  # nothing new: no clean, and no repeat
    mgr.close()


def test_tick_in_slices_visits_every_log_once_per_sweep(tmp_path):
    cfg = LogConfig.from_topic_config({"flush.ms": "1000", "retention.bytes": "1"})
    mgr = LogManager(tmp_path, "w6")
    logs = [mgr.open_log("s", p, cfg) for p in range(5)]
    for log in logs:
        log.append(make_batch(), 0)
    assert mgr.sweep_slices(2) == 3
    now = max(log._last_flush_ms for log in logs) + 2000  # noqa: SLF001 - the log's clock
    seen = []
    for _ in range(3):  # one sweep: 2 + 2 + 1 logs
        seen.append(sorted(p for _, p in mgr.tick(now, max_logs=2).flushed))
    assert seen == [[0, 1], [2, 3], [4]]
    assert sorted(sum(seen, [])) == list(range(5))
    mgr.wait_for_flushes()
    assert all(log.recovery_point == 10 for log in logs)
    for log in logs:  # retention is decided per sweep: the next sweep deletes what rolled
        log.append(make_batch(), 0)
        log.roll()
        log.high_watermark = log.log_end_offset  # retention never passes the HW
    deleted: set[int] = set()
    for _ in range(3):
        deleted |= {p for _, p in mgr.tick(now + 400_000, max_logs=2).deleted_segments}
    assert deleted == set(range(5))
    assert all(log.log_start_offset > 0 for log in logs)
    mgr.close()

"""Rolls: on segment.bytes, segment.ms (timestamps), a full index, and relative-offset overflow;
segment_generation follows every change of the segment list."""

from __future__ import annotations

from storage_log_helpers import make_batch, read_all

from qnode.storage import Log, LogConfig


def test_roll_on_segment_ms_by_batch_timestamps(tmp_path):
    cfg = LogConfig.from_topic_config({"segment.ms": "1000"})
    log = Log.open(tmp_path / "t-0", cfg)
    for ts in (10_000, 10_500, 10_999, 11_001, 11_500, 12_002):
        log.append(make_batch(2, ts=ts), 0)
    # 11_001 - 10_000 > 1000 rolls; 12_002 - 11_001 > 1000 rolls again
    assert [s.base_offset for s in log.segments] == [0, 6, 10]
    log.close()


def test_roll_on_full_index(tmp_path):
    cfg = LogConfig.from_topic_config({"segment.index.bytes": "64", "index.interval.bytes": "1"})
    log = Log.open(tmp_path / "t-0", cfg)
    for _ in range(30):
        log.append(make_batch(1, size=10), 0)
    assert len(log.segments) > 3
    assert all(s.index.entries <= 8 for s in log.segments)
    assert read_all(log) == list(range(30))
    for off in range(30):
        assert read_all(log, off)[0] == off
    log.close()


def test_roll_on_relative_offset_overflow(tmp_path):
    log = Log.open(tmp_path / "t-0", LogConfig())
    log.append(make_batch(3, base_offset=0), 0, assign_offsets=False)
    far = 2**32 + 10  # a follower append whose offsets cannot be relative to base 0
    log.append(make_batch(3, base_offset=far), 0, assign_offsets=False)
    assert [s.base_offset for s in log.segments] == [0, far]
    assert log.log_end_offset == far + 3
    assert read_all(log, far) == [far, far + 1, far + 2]
    assert read_all(log, 1)[:2] == [1, 2]  # the gap is skipped, then the far batch
    log.close()
    log = Log.open(tmp_path / "t-0", LogConfig())
    assert log.log_end_offset == far + 3 and (3, far) in log.recovery_report.gaps
    log.close()


def test_segment_generation_and_explicit_roll(tmp_path):
    log = Log.open(tmp_path / "t-0", LogConfig())
    g0 = log.segment_generation
    assert log.roll() is log.active_segment and log.segment_generation == g0  # empty: no-op
    log.append(make_batch(2), 0)
    log.roll()
    assert log.active_segment_base == 2 and log.segment_generation == g0 + 1
    log.truncate_to(1)
    assert log.segment_generation == g0 + 2 and log.log_end_offset == 0
    log.close()

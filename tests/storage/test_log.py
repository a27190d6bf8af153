"""Log: append with offset assignment, zero-copy reads of whole batches, rolls, reopen."""

from __future__ import annotations

import os

import pytest
from storage_log_helpers import make_batch, read_all

from qnode.storage import (
    InvalidRecordError,
    Log,
    LogClosedError,
    LogConfig,
    OffsetOutOfRangeError,
    RecordTooLargeError,
)
from qnode.storage.batch_reader import iter_records, read_batches


@pytest.fixture
def small_config() -> LogConfig:
    return LogConfig.from_topic_config({"segment.bytes": "8000", "index.interval.bytes": "512"})


def test_append_assigns_dense_offsets_and_reads_back(tmp_path, small_config):
    log = Log.open(tmp_path / "t-0", small_config)
    for i in range(40):
        r = log.append(make_batch(5, ts=10 + i), leader_epoch=7)
        assert (r.base_offset, r.last_offset) == (5 * i, 5 * i + 4)
    assert log.log_end_offset == 200
    assert len(log.segments) > 3  # rolled on segment.bytes
    assert read_all(log) == list(range(200))
    assert read_all(log, 123) == list(range(123, 200))
    fetch = log.read(0, 1 << 20)
    assert all(isinstance(s, memoryview) for s in fetch.slices)
    log.close()


def test_read_returns_whole_batches_first_one_even_if_larger(tmp_path, small_config):
    log = Log.open(tmp_path / "t-0", small_config)
    sizes = [log.append(make_batch(5), 0).size for _ in range(4)]
    fetch = log.read(0, 10)  # smaller than one batch: KIP-74, the first batch still comes
    assert fetch.size == sizes[0]
    fetch = log.read(0, sizes[0] + sizes[1] + 1)
    assert fetch.size == sizes[0] + sizes[1]
    fetch = log.read(7, 1 << 20, max_offset=15)  # stops before the batch holding 15
    offsets = [r.offset for r in iter_records(b"".join(bytes(s) for s in fetch.slices))]
    assert offsets == list(range(5, 15))
    with pytest.raises(OffsetOutOfRangeError):
        log.read(21, 100)
    assert log.read(20, 100).slices == []
    log.close()


def test_reopen_after_clean_close_keeps_everything(tmp_path, small_config):
    log = Log.open(tmp_path / "t-0", small_config)
    for _ in range(30):
        log.append(make_batch(3), 1)
    log.close()
    with pytest.raises(LogClosedError):
        log.append(make_batch(), 1)
    log = Log.open(tmp_path / "t-0", small_config)
    assert log.recovery_report.clean_shutdown
    assert log.recovery_report.validated_batches == 0
    assert log.log_end_offset == 90
    log.append(make_batch(3), 1)
    assert read_all(log) == list(range(93))
    log.close()


def test_follower_append_keeps_offsets_and_refuses_going_backwards(tmp_path, small_config):
    log = Log.open(tmp_path / "t-0", small_config)
    log.append(make_batch(5, base_offset=0, leader_epoch=2), 0, assign_offsets=False)
    log.append(make_batch(5, base_offset=5, leader_epoch=2), 0, assign_offsets=False)
    with pytest.raises(InvalidRecordError):
        log.append(make_batch(5, base_offset=7), 0, assign_offsets=False)
    assert log.log_end_offset == 10
    assert read_all(log) == list(range(10))
    log.close()


def test_batch_over_max_message_bytes_is_refused(tmp_path):
    cfg = LogConfig.from_topic_config({"max.message.bytes": "500"})
    log = Log.open(tmp_path / "t-0", cfg)
    with pytest.raises(RecordTooLargeError):
        log.append(make_batch(10, size=100), 0)
    assert log.log_end_offset == 0 and log.size_bytes == 0
    log.close()


def test_truncate_to_and_offset_for_timestamp(tmp_path, small_config):
    log = Log.open(tmp_path / "t-0", small_config)
    for i in range(30):
        log.append(make_batch(4, ts=1000 + 10 * i), 0)
    hit = log.offset_for_timestamp(1055)
    assert hit is not None and hit.offset == 24 and hit.timestamp == 1060
    assert log.offset_for_timestamp(10**12) is None
    assert log.offset_for_timestamp(-2).offset == 0
    assert log.offset_for_timestamp(-1).offset == 120
    gen = log.segment_generation
    assert log.truncate_to(50) == 48  # the batch holding 50 goes whole
    assert log.segment_generation > gen
    assert read_all(log) == list(range(48))
    log.append(make_batch(4), 0)
    assert read_all(log)[-1] == 51
    log.close()
    log = Log.open(tmp_path / "t-0", small_config)
    assert log.log_end_offset == 52
    log.close()


def test_directory_layout(tmp_path, small_config):
    log = Log.open(tmp_path / "t-0", small_config)
    for _ in range(20):
        log.append(make_batch(5), 0)
    log.close()
    names = sorted(os.listdir(tmp_path / "t-0"))
    logs = [n for n in names if n.endswith(".log")]
    assert logs[0] == "00000000000000000000.log"
    for n in logs:
        stem = n[:-4]
        assert stem + ".index" in names and stem + ".timeindex" in names


def test_append_many_is_one_write_with_per_item_errors(tmp_path, small_config):
    log = Log.open(tmp_path / "t-0", small_config)
    good = make_batch(3)
    bad = good[:-1]
    results = log.append_many([(good, 1), (bad, 1), (good, 2)])
    assert [type(r).__name__ for r in results] == ["AppendResult", "CorruptRecordError",
                                                   "AppendResult"]
    assert (results[0].base_offset, results[2].base_offset) == (0, 3)
    assert read_all(log) == list(range(6))
    # leader epochs stamped per item; the caller's buffers are left as they were
    epochs = [b.header.leader_epoch for b in read_batches(
        b"".join(bytes(s) for s in log.read(0, 1 << 20).slices))]
    assert epochs == [1, 2]
    assert good == make_batch(3)
    log.close()


def test_log_append_time_stamps_and_reseals(tmp_path):
    cfg = LogConfig.from_topic_config({"message.timestamp.type": "LogAppendTime"})
    log = Log.open(tmp_path / "t-0", cfg)
    r = log.append(make_batch(3, ts=5), 0, now_ms=123456)
    assert r.log_append_time == 123456 and r.max_timestamp == 123456
    batch = next(read_batches(bytes(log.read(0, 1 << 20).slices[0])))
    batch.verify()  # CRC recomputed
    assert [rec.timestamp for rec in batch.records()] == [123456] * 3
    log.close()


def test_append_many_runs_the_hooks_per_item_as_append_does(tmp_path, small_config):
    log = Log.open(tmp_path / "t-0", small_config)
    seen_before: list[tuple[int, int]] = []
    told: list[tuple[int, int, int]] = []

    def check(info, data):  # refuse the second item, as a producer-state check would
        seen_before.append((info.record_count, info.batches[0].size))
        if len(seen_before) == 2:
            raise InvalidRecordError("refused by the hook")

    log.hooks.before_append.append(check)
    log.hooks.on_append.append(lambda res, info, epoch: told.append(
        (res.base_offset, info.record_count, epoch)))
    a, b, c = make_batch(2), make_batch(3), make_batch(4)
    results = log.append_many([(a, 5), (b, 5), (c, 6)])
    assert [type(r).__name__ for r in results] == ["AppendResult", "InvalidRecordError",
                                                   "AppendResult"]
    assert seen_before == [(2, len(a)), (3, len(b)), (4, len(c))]
    assert told == [(0, 2, 5), (2, 4, 6)]  # after the write, only for what was written
    assert read_all(log) == list(range(6))
    log.close()

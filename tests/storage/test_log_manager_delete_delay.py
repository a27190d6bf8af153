"""file.delete.delay.ms: removed segments are renamed `.deleted`, unlinked after the delay on
the LogManager tick, removed by recovery after a crash, and never break a reader's slices."""

from __future__ import annotations

import os

import pytest
from storage_log_helpers import make_batch, read_all

from qnode.storage import LogConfig
from qnode.storage.batch_builder import BatchBuilder
from qnode.storage.batch_reader import iter_records
from qnode.storage.cleaner import Cleaner
from qnode.storage.log_manager import LogManager
from qnode.storage.segment import Segment
from qnode.storage.segment_deleter import SegmentDeleter

NOW = 10_000_000
DELAY = 5_000


def deleted_files(directory: str) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".deleted"))


def segment_logs(directory: str) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".log"))


def retention_log(mgr: LogManager, delay_ms: int = DELAY, retention_bytes: int = 6000):
    cfg = LogConfig.from_topic_config({"segment.bytes": "3000",
                                       "retention.bytes": str(retention_bytes),
                                       "file.delete.delay.ms": str(delay_ms)})
    log = mgr.open_log("r", 0, cfg)
    for i in range(40):
        log.append(make_batch(5, ts=NOW + i), 0)
    log.high_watermark = log.log_end_offset
    return log


@pytest.fixture
def mgr(tmp_path):
    """A manager that checks retention on every tick; closed at teardown."""
    m = LogManager(tmp_path, "w0", retention_check_interval_ms=0, background_flush=False)
    yield m
    m.close()


def test_retention_renames_then_unlinks_after_the_delay(mgr):
    log = retention_log(mgr)
    first_base = log.segments[0].base_offset
    report = mgr.tick(NOW)
    gone = report.deleted_segments[("r", 0)]
    assert gone > 0 and report.removed_files == 0
    renamed = deleted_files(log.directory)
    assert len(renamed) == 3 * gone  # .log, .index, .timeindex of each removed segment
    assert f"{first_base:020d}.log.deleted" in renamed
    assert f"{first_base:020d}.log" not in segment_logs(log.directory)
    assert read_all(log, log.log_start_offset)[-1] == 199  # the log itself moved on
    assert mgr.tick(NOW + DELAY - 1).removed_files == 0
    assert deleted_files(log.directory) == renamed
    assert mgr.tick(NOW + DELAY).removed_files == len(renamed)
    assert deleted_files(log.directory) == []


def test_zero_delay_deletes_at_once(mgr):
    log = retention_log(mgr, delay_ms=0)
    assert mgr.tick(NOW).deleted_segments[("r", 0)] > 0
    assert deleted_files(log.directory) == []


def test_reader_slices_survive_rename_and_unlink(mgr):
    log = retention_log(mgr)
    held = log.read(0, 1 << 20).slices  # a fetch still being sent when retention runs
    copy = b"".join(bytes(s) for s in held)
    mgr.tick(NOW)
    assert log.log_start_offset > 0
    assert b"".join(bytes(s) for s in held) == copy
    mgr.tick(NOW + DELAY)
    assert deleted_files(log.directory) == []
    data = b"".join(bytes(s) for s in held)
    assert data == copy
    assert [r.offset for r in iter_records(data)][:3] == [0, 1, 2]  # CRCs checked


def test_delete_records_is_delayed_too(tmp_path):
    mgr = LogManager(tmp_path, "w0", background_flush=False)
    log = retention_log(mgr, retention_bytes=-1)
    target = log.segments[2].base_offset
    log.delete_records_before(target)
    assert len(deleted_files(log.directory)) == 6
    mgr.tick(NOW)
    assert len(deleted_files(log.directory)) == 6
    mgr.tick(NOW + DELAY)
    assert deleted_files(log.directory) == []
    assert read_all(log, target)[0] == target
    mgr.close()


def test_cleaner_swap_is_delayed_and_log_reads_back(tmp_path):
    cfg = LogConfig.from_topic_config({
        "cleanup.policy": "compact", "segment.bytes": "2048", "index.interval.bytes": "256",
        "segment.index.bytes": "4096", "file.delete.delay.ms": str(DELAY)})
    mgr = LogManager(tmp_path, "w0", cleaner_backoff_ms=0, background_flush=False)
    mgr.cleaners.append(Cleaner())
    log = mgr.open_log("c", 0, cfg)
    for i in range(0, 120, 3):
        b = BatchBuilder()
        for j in range(i, i + 3):
            b.append(b"key-%d" % (j % 7), b"value-%d" % j, timestamp_ms=1000)
        log.append(b.build(), 0)
    log.roll()
    log.high_watermark = log.log_end_offset
    report = mgr.tick(NOW)
    assert report.cleaned == [("c", 0)]
    renamed = deleted_files(log.directory)
    assert renamed and all(n.split(".")[1] in ("log", "index", "timeindex") for n in renamed)
    data = b"".join(bytes(s) for s in log.read(0, 1 << 20).slices)
    latest = {r.key: r.offset for r in iter_records(data)}
    assert sorted(latest.values()) == list(range(113, 120))
    assert mgr.tick(NOW + DELAY).removed_files == len(renamed)
    assert deleted_files(log.directory) == []
    mgr.close()


def test_crash_leftovers_are_removed_on_open(mgr, tmp_path):
    log = retention_log(mgr)
    mgr.tick(NOW)
    start = log.log_start_offset
    log.flush()
    mgr.checkpoint()
    leftovers = deleted_files(log.directory)
    assert leftovers
    log.close_without_flush()  # kill -9: the delayed unlinks never run
    mgr2 = LogManager(tmp_path, "w0", background_flush=False)
    log2 = mgr2.open_log("r", 0)
    assert deleted_files(log2.directory) == []
    assert set(leftovers) <= set(log2.recovery_report.removed_files)
    assert log2.log_start_offset == start
    assert read_all(log2, start)[-1] == 199
    mgr2.close()


def test_close_unlinks_what_is_pending(mgr):
    log = retention_log(mgr)
    mgr.tick(NOW)
    assert deleted_files(log.directory)
    mgr.close()
    assert deleted_files(log.directory) == []


def test_reused_name_is_not_unlinked_early(tmp_path):
    """A same-base segment removed later reuses the `.deleted` name: the earlier entry must
    not cut the later file's delay short."""
    deleter = SegmentDeleter()

    def segment() -> Segment:
        return Segment.create(str(tmp_path), 0, index_interval_bytes=4096, index_max_bytes=4096)

    deleter.remove(segment(), 1000)
    assert deleter.run(0) == 0  # stamped: due at 1000
    deleter.remove(segment(), 1000)  # renamed over the first one's name
    assert deleter.run(500) == 0  # stamped: due at 1500
    assert deleter.run(1000) == 0  # the first's name now holds the second file: kept
    assert len(deleted_files(str(tmp_path))) == 3
    assert deleter.run(1500) == 3
    assert deleted_files(str(tmp_path)) == []

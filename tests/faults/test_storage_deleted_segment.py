"""A segment file deleted under a running log: reads of what is mapped keep working, the next
flush or tick says so clearly (SegmentMissingError, the log goes offline), and a reopen gives
a valid log that reports the hole."""

from __future__ import annotations

import os

import pytest

from qnode.storage import Log, LogConfig, SegmentMissingError
from qnode.storage.batch_builder import BatchBuilder
from qnode.storage.batch_reader import iter_records
from qnode.storage.log_manager import LogManager

CFG = LogConfig.from_topic_config({"segment.bytes": "5000"})


def batch(n: int = 5) -> bytes:
    b = BatchBuilder()
    for i in range(n):
        b.append(None, bytes([i]) * 100, timestamp_ms=1000)
    return b.build()


def offsets(log: Log, start: int = 0) -> list[int]:
    data = b"".join(bytes(s) for s in log.read(start, 1 << 30).slices)
    return [r.offset for r in iter_records(data)]


def test_closed_segment_deleted(tmp_path):
    mgr = LogManager(tmp_path, "w")
    log = mgr.open_log("t", 0, CFG)
    for _ in range(30):
        log.append(batch(), 0)
    log.high_watermark = log.log_end_offset
    victim = log.segments[1]
    lost = range(victim.base_offset, victim.next_offset)
    os.unlink(victim.log_path)
    assert offsets(log) == list(range(150))  # the open file still serves reads
    with pytest.raises(SegmentMissingError, match="deleted under the running log"):
        log.flush()
    report = mgr.tick(10**13)
    assert isinstance(report.errors[("t", 0)], SegmentMissingError)
    assert ("t", 0) in mgr.offline() and mgr.get("t", 0) is None
    log = mgr.open_log("t", 0, CFG)
    assert (lost.start, lost.stop) in log.recovery_report.gaps
    assert offsets(log) == [o for o in range(150) if o not in lost]
    mgr.close()


def test_active_segment_deleted(tmp_path):
    log = Log.open(tmp_path / "t-0", CFG)
    for _ in range(12):
        log.append(batch(), 0)
    log.flush()
    active = log.active_segment
    kept_end = active.base_offset
    os.unlink(active.log_path)
    log.append(batch(), 0)  # lands in the unlinked inode: not durable...
    with pytest.raises(SegmentMissingError):
        log.flush()  # ...and the flush says so instead of acknowledging durability
    log.close_without_flush()
    log = Log.open(tmp_path / "t-0", CFG)
    assert log.log_end_offset == kept_end
    assert offsets(log) == list(range(kept_end))
    log.append(batch(), 0)
    assert offsets(log)[-1] == kept_end + 4
    log.close()

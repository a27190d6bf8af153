"""Disk full while appending and while rolling: DiskFullError, the log stays valid and
appendable once space returns. A tiny tmpfs gives a real ENOSPC (needs root to mount);
RLIMIT_FSIZE gives EFBIG for the same code path everywhere."""

from __future__ import annotations

import os
import resource
import signal

import pytest
from conftest import fill_fs

from qnode.storage import DiskFullError, Log, LogConfig
from qnode.storage.batch_builder import BatchBuilder
from qnode.storage.batch_reader import iter_records


def batch(n: int = 10, size: int = 100) -> bytes:
    b = BatchBuilder()
    for i in range(n):
        b.append(None, bytes([i]) * size, timestamp_ms=1000)
    return b.build()


def offsets(log: Log) -> list[int]:
    data = b"".join(bytes(s) for s in log.read(log.log_start_offset, 1 << 30).slices)
    return [r.offset for r in iter_records(data)]


@pytest.fixture
def tiny_fs(tmpfs):
    return tmpfs("256k")


def no_partial_bytes(log: Log) -> bool:
    """Past the active segment's data its file holds nothing but the zeros reserved ahead."""
    seg = log.active_segment
    with open(seg.log_path, "rb") as f:
        f.seek(seg.size)
        return not f.read().strip(b"\0")


def test_enospc_on_append_keeps_log_valid(tiny_fs):
    cfg = LogConfig.from_topic_config({"segment.index.bytes": "4096"})
    log = Log.open(tiny_fs / "t-0", cfg)
    fill_fs(tiny_fs, 40_000)
    acked = 0
    with pytest.raises(DiskFullError, match="disk full"):
        for _ in range(1000):
            acked = log.append(batch(), 0).last_offset + 1
    assert acked > 0 and log.log_end_offset == acked
    assert no_partial_bytes(log)
    assert offsets(log) == list(range(acked))
    os.unlink(tiny_fs / "filler")  # space comes back
    assert log.append(batch(), 0).base_offset == acked
    log.close()
    log = Log.open(tiny_fs / "t-0", cfg)
    assert offsets(log) == list(range(acked + 10))
    assert not log.recovery_report.truncated
    log.close()


def test_enospc_on_roll_keeps_active_segment(tiny_fs):
    cfg = LogConfig.from_topic_config({"segment.bytes": "6000", "segment.index.bytes": "32768"})
    log = Log.open(tiny_fs / "t-0", cfg)
    log.append(batch(), 0)
    fill_fs(tiny_fs, 30_000)  # room for log bytes, not for the next segment's preallocated indexes
    acked = log.log_end_offset
    with pytest.raises(DiskFullError):
        for _ in range(100):
            acked = log.append(batch(), 0).last_offset + 1
    assert len(log.segments) == 1
    assert sorted(os.listdir(tiny_fs / "t-0")) == [
        "00000000000000000000.index",
        "00000000000000000000.log",
        "00000000000000000000.timeindex",
    ]
    assert offsets(log) == list(range(acked))
    os.unlink(tiny_fs / "filler")
    assert log.append(batch(), 0).base_offset == acked
    assert len(log.segments) == 2
    log.close()


def test_file_size_limit_on_roll_is_disk_full(tmp_path):
    # An active segment's file is as long as segment.bytes from its creation (sparse, blocks
    # allocated as data comes), so RLIMIT_FSIZE (EFBIG) bites when a segment is made.
    cfg = LogConfig.from_topic_config({"segment.index.bytes": "4096",
                                       "segment.bytes": str(1 << 20)})
    log = Log.open(tmp_path / "t-0", cfg)
    log.append(batch(), 0)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 19, hard))
        with pytest.raises(DiskFullError):
            log.roll()
        assert len(log.segments) == 1
        assert len(os.listdir(tmp_path / "t-0")) == 3  # no file of the refused segment left
        log.append(batch(), 0)  # the active segment takes appends still
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    leo = log.log_end_offset
    assert no_partial_bytes(log)
    assert offsets(log) == list(range(leo))
    log.roll()
    assert len(log.segments) == 2
    log.close()

"""Disk full while the cleaner writes its output: the log is untouched and stays online,
the hook skips the round, and the clean succeeds once space returns. A tiny tmpfs gives a
real ENOSPC (needs root to mount; skipped otherwise)."""

from __future__ import annotations

import os

import pytest
from conftest import fill_fs

from qnode.storage.batch_builder import BatchBuilder
from qnode.storage.batch_reader import iter_records
from qnode.storage.cleaner import Cleaner, CleanerConfig
from qnode.storage.errors import DiskFullError
from qnode.storage.log import Log
from qnode.storage.log_config import LogConfig
from qnode.storage.offset_map import SLOT_BYTES

CFG = LogConfig.from_topic_config({"cleanup.policy": "compact", "segment.bytes": "8192",
                                   "segment.index.bytes": "4096"})
NOW = 10_000_000


@pytest.fixture
def tiny_fs(tmpfs):
    return tmpfs("512k")


def records(log: Log) -> list:
    data = b"".join(bytes(s) for s in log.read(log.log_start_offset, 1 << 30).slices)
    return [(r.offset, r.key, r.value) for r in iter_records(data)]


def test_enospc_mid_clean_leaves_the_log_as_it_was(tiny_fs):
    log = Log.open(tiny_fs / "t-0", CFG)
    for i in range(60):
        b = BatchBuilder()
        for j in range(10):
            b.append(b"k%d" % ((i * 10 + j) % 7), b"v" * 100, timestamp_ms=1000)
        log.append(b.build(), 0)
    log.roll()
    log.high_watermark = log.log_end_offset
    before = records(log)
    fill_fs(tiny_fs, 2048)  # room for less than one segment
    cleaner = Cleaner(CleanerConfig(dedupe_buffer_size=SLOT_BYTES * 1024))
    with pytest.raises(DiskFullError):
        cleaner.clean(log, NOW)
    assert records(log) == before
    assert not [n for n in os.listdir(log.directory) if n.endswith((".cleaned", ".swap"))]
    assert cleaner(log, NOW) is False and log.directory not in cleaner.uncleanable
    assert not log.closed
    os.unlink(tiny_fs / "filler")  # space comes back
    assert log.append(_one(b"k0", b"late"), 0).base_offset == 600
    log.high_watermark = log.log_end_offset
    assert cleaner(log, NOW) is True
    got = records(log)
    assert len(got) == 8 and got[-1] == (600, b"k0", b"late")
    log.close()
    log = Log.open(tiny_fs / "t-0", CFG)
    try:
        assert records(log) == got
    finally:
        log.close()


def _one(key: bytes, value: bytes) -> bytes:
    b = BatchBuilder()
    b.append(key, value, timestamp_ms=1000)
    return b.build()

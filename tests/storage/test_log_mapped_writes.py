"""The active segment written through its mapping: the file's reserved zero tail (trimmed on
roll, close and open after a crash), and truncation under slices still held by a reader (no
SIGBUS: the bytes read as zeros or new data, and the file never shrinks under them)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from storage_log_helpers import make_batch, read_all

from qnode.storage import Log, LogConfig

CFG = LogConfig.from_topic_config({"segment.bytes": str(1 << 20),
                                   "index.interval.bytes": "4096"})


def test_file_is_sparse_to_segment_bytes_while_active_and_trimmed_on_roll_and_close(tmp_path):
    log = Log.open(tmp_path / "t-0", CFG)
    for _ in range(5):
        log.append(make_batch(10), 0)
    seg = log.active_segment
    assert os.path.getsize(seg.log_path) == 1 << 20  # the mapping's length, sparse
    with open(seg.log_path, "rb") as f:
        f.seek(seg.size)
        assert not f.read().strip(b"\0")
    first = seg.log_path
    log.roll()
    assert os.path.getsize(first) == seg.size  # sealed: trimmed to its data
    log.append(make_batch(10), 0)
    log.close()
    last = log.segments[-1]
    assert os.path.getsize(last.log_path) == last.size
    log = Log.open(tmp_path / "t-0", CFG)
    assert read_all(log) == list(range(60))
    assert not log.recovery_report.truncated
    log.close()


def test_crash_leaves_a_zero_tail_that_opening_cuts_without_calling_it_damage(tmp_path):
    log = Log.open(tmp_path / "t-0", CFG)
    for _ in range(20):
        log.append(make_batch(10), 0)
    data_end = log.active_segment.size
    path = log.active_segment.log_path
    log.close_without_flush()  # as kill -9 leaves it: sparse file, no clean-shutdown mark
    assert os.path.getsize(path) > data_end
    log = Log.open(tmp_path / "t-0", CFG)
    rep = log.recovery_report
    assert log.log_end_offset == 200 and read_all(log) == list(range(200))
    assert not rep.truncated and rep.truncation_reason is None
    assert log.active_segment.size == data_end
    log.append(make_batch(10), 0)  # the next append lands right after the data
    log.close()
    log = Log.open(tmp_path / "t-0", CFG)
    assert read_all(log) == list(range(210))
    log.close()


TRUNCATE_UNDER_VIEWS = textwrap.dedent("""
    import os, sys
    from qnode.storage import Log, LogConfig
    from qnode.storage.batch_builder import BatchBuilder

    def batch(fill):
        b = BatchBuilder(batch_size=1 << 20)
        for i in range(160):  # ~16 KiB: a slice spans several pages
            b.append(None, bytes([fill]) * 100, timestamp_ms=1000)
        return b.build()

    cfg = LogConfig.from_topic_config({"segment.bytes": str(1 << 20)})
    log = Log.open(sys.argv[1], cfg)
    for i in range(8):
        log.append(batch(i + 1), 0)
    held = log.read(4 * 160, 1 << 20).slices[0]  # batches 4..7, as a send in flight holds them
    assert log.truncate_to(4 * 160) == 4 * 160
    assert not any(bytes(held))  # zeros now, and no fault
    log.append(batch(0xAA), 0)  # new data where the cut batches were
    bytes(held)
    log.roll()  # sealing trims the file, but not under the live slice
    bytes(held)
    log.append(batch(0xBB), 0)
    seg0 = log.segments[0]
    assert os.path.getsize(seg0.log_path) >= 8 * len(batch(1)), "shrunk under a live slice"
    del held
    log.close()  # the slice is gone: the sealed segment is trimmed to its data now
    assert os.path.getsize(seg0.log_path) == seg0.size, (os.path.getsize(seg0.log_path), seg0.size)
    log = Log.open(sys.argv[1], cfg)
    assert log.log_end_offset == 6 * 160, log.log_end_offset
    assert not log.recovery_report.truncated
    log.close()
    print("ok")
""")


def test_truncation_under_live_slices_never_faults(tmp_path):
    # in a child: a regression would kill the process with SIGBUS, not fail an assert
    proc = subprocess.run([sys.executable, "-c", TRUNCATE_UNDER_VIEWS, str(tmp_path / "t-0")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])
    assert proc.stdout.strip() == "ok"


def test_segment_stamps_headers_in_both_write_modes_never_in_the_callers_buffer(tmp_path):
    from qnode.storage.record_batch import read_header
    from qnode.storage.segment import Segment

    a, b = make_batch(3), make_batch(4)
    data = [a, memoryview(b)]
    metas = [(0, len(a), 100, 102, 1000), (len(a), len(b), 103, 106, 1000)]
    stamps = [(0, 100, len(a) - 12, 9), (len(a), 103, len(b) - 12, 9)]
    for capacity in (0, 1 << 20):  # positional writes, then the write mapping
        d = tmp_path / f"cap{capacity}"
        d.mkdir()
        seg = Segment.create(str(d), 100, index_interval_bytes=4096, index_max_bytes=4096,
                             capacity=capacity)
        seg.append(data, metas, len(a) + len(b), stamps)
        stored = bytes(seg.view(0, seg.size))
        h1, h2 = read_header(stored, 0), read_header(stored, len(a))
        assert (h1.base_offset, h1.leader_epoch, h2.base_offset, h2.leader_epoch) == \
            (100, 9, 103, 9)
        assert stored[16:len(a)] == a[16:] and stored[len(a) + 16:] == b[16:]
        assert read_header(a, 0).base_offset == 0 and read_header(b, 0).leader_epoch == -1
        assert seg.next_offset == 107
        seg.close()

"""The tick looks for segment files deleted under running logs a slice of logs at a time
(round robin), and still finds every one within a round; a replaced file counts as gone."""

from __future__ import annotations

import os

from storage_log_helpers import make_batch

from qnode.storage import Log, LogConfig, SegmentMissingError
from qnode.storage.log_manager import LogManager

CFG = LogConfig.from_topic_config({"segment.bytes": "3000"})


def _logs_with_closed_segments(mgr: LogManager, n: int) -> list[Log]:
    """Partitions 0..n-1 of topic t, each with rolled (closed) segments, flushed."""
    logs = [mgr.open_log("t", p, CFG) for p in range(n)]
    for log in logs:
        for _ in range(8):
            log.append(make_batch(10), 0)
        log.flush()
    return logs


def test_deleted_segment_found_within_one_round_of_ticks(tmp_path):
    mgr = LogManager(tmp_path, "w", file_checks_per_tick=2, background_flush=False)
    logs = _logs_with_closed_segments(mgr, 5)
    now = 10**13
    mgr.tick(now)  # nothing missing: nothing offline
    assert not mgr.offline()
    victim = logs[3].closed_segments()[0]
    os.unlink(victim.log_path)
    found_at = None
    for i in range(3):  # ceil(5 / 2) ticks cover every log
        report = mgr.tick(now)
        if ("t", 3) in report.errors:
            found_at = i
            break
    assert found_at is not None
    assert isinstance(mgr.offline()[("t", 3)], SegmentMissingError)
    assert sorted(mgr.offline()) == [("t", 3)]
    mgr.close()


def test_one_tick_checks_only_its_slice(tmp_path):
    mgr = LogManager(tmp_path, "w", file_checks_per_tick=1, background_flush=False)
    logs = _logs_with_closed_segments(mgr, 4)
    for log in logs:
        os.unlink(log.closed_segments()[0].log_path)
    seen = []
    for _ in range(4):
        seen.append(sorted(mgr.tick(10**13).errors))
    assert [len(s) for s in seen] == [1, 1, 1, 1]  # one log per tick...
    assert sorted(tp for s in seen for tp in s) == [("t", p) for p in range(4)]  # ...each once
    mgr.close()


def test_a_replaced_segment_file_is_not_the_segment(tmp_path):
    mgr = LogManager(tmp_path, "w", background_flush=False)
    log = mgr.open_log("t", 0, CFG)
    for _ in range(8):
        log.append(make_batch(10), 0)
    seg = log.closed_segments()[0]
    assert seg.exists()
    os.rename(seg.log_path, seg.log_path + ".moved")
    with open(seg.log_path, "wb") as f:  # another file under the same name
        f.write(b"\0" * 100)
    assert not seg.exists()
    assert ("t", 0) in mgr.tick(10**13).errors
    mgr.close()

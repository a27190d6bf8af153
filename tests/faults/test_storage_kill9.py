"""kill -9 of a child process appending in a loop, at random points, several rounds on the
same log: after recovery every batch acknowledged as flushed is intact and the log is valid."""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time

from qnode.storage import Log, LogConfig
from qnode.storage.batch_reader import read_batches

CONFIG = {"segment.bytes": "300000", "index.interval.bytes": "1024"}

CHILD = r"""
import sys
from qnode.storage import Log, LogConfig
from qnode.storage.batch_builder import BatchBuilder
cfg = LogConfig.from_topic_config(CONFIG_REPR)
log = Log.open(sys.argv[1], cfg, recovery_point=int(sys.argv[2]))
nxt = log.log_end_offset
print("ready", nxt, flush=True)
n = 0
while True:
    b = BatchBuilder()
    for j in range(5):
        b.append(None, str(nxt + j).encode() * 10, timestamp_ms=1000)
    nxt = log.append(b.build(), 0).last_offset + 1
    n += 1
    if n % 7 == 0:
        log.flush()
        print("flushed", log.recovery_point, flush=True)
""".replace("CONFIG_REPR", repr(CONFIG))


def run_and_kill(path: str, recovery_point: int, rnd: random.Random) -> int:
    """Run the appender, kill -9 it after a random time; the last flushed offset it printed."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, path, str(recovery_point)],
                            stdout=subprocess.PIPE, text=True)
    flushed = recovery_point
    try:
        deadline = time.monotonic() + 20
        line = proc.stdout.readline()
        assert line.startswith("ready"), line
        kill_at = time.monotonic() + rnd.uniform(0.05, 0.6)
        while time.monotonic() < kill_at:
            r, _, _ = select.select([proc.stdout], [], [], max(0.0, kill_at - time.monotonic()))
            if r:
                line = proc.stdout.readline()
                if line.startswith("flushed"):
                    flushed = int(line.split()[1])
            assert time.monotonic() < deadline
        os.kill(proc.pid, signal.SIGKILL)
        for line in proc.stdout:  # what it printed before dying was acknowledged too
            if line.startswith("flushed"):
                flushed = int(line.split()[1])
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
    return flushed


def check(log: Log, flushed: int) -> None:
    assert log.log_end_offset >= flushed
    data = b"".join(bytes(s) for s in log.read(0, 1 << 31).slices)
    nxt = 0
    for b in read_batches(data, allow_partial_tail=False):
        b.verify()
        assert b.header.base_offset == nxt
        for rec in b.records():
            assert rec.value == str(rec.offset).encode() * 10
        nxt = b.header.next_offset
    assert nxt == log.log_end_offset


def test_kill9_at_random_points(tmp_path):
    rnd = random.Random(1234)
    path = str(tmp_path / "t-0")
    cfg = LogConfig.from_topic_config(CONFIG)
    recovery_point = 0
    for _ in range(4):
        flushed = run_and_kill(path, recovery_point, rnd)
        # reopen as a checkpoint would (tail past the flushed point), then fully
        log = Log.open(path, cfg, recovery_point=flushed)
        check(log, flushed)
        leo = log.log_end_offset
        log.close_without_flush()
        log = Log.open(path, cfg, recovery_point=0)
        assert log.log_end_offset == leo and not log.recovery_report.truncated
        check(log, flushed)
        recovery_point = log.recovery_point
        log.close_without_flush()
    assert leo > 0

"""kill -9 of a process in the middle of log compaction, then reopen: the log is valid.

A child process opens a copy of a compacted-topic log and cleans it (small dedupe buffer, so
several rounds and many segment swaps). It is SIGKILLed either right after its N-th file
rename/unlink (every step of the swap protocol becomes a crash point) or after a random
delay. The parent then reopens the log and checks: whole CRC-valid batches in offset order,
the same log end, only records that were written (same offset, key, value), the latest
value of every key still there (a tombstoned key: its tombstone, or nothing at all), and no
`.cleaned`/`.swap` leftovers. A final clean in the parent then reaches "last write per key".
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from qnode.storage.batch_builder import BatchBuilder
from qnode.storage.batch_reader import iter_records
from qnode.storage.cleaner import Cleaner, CleanerConfig
from qnode.storage.log import Log
from qnode.storage.log_config import LogConfig
from qnode.storage.offset_map import SLOT_BYTES
from qnode.storage.record_batch import validate_batches

TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    "segment.bytes": "4096",
    "index.interval.bytes": "512",
    "segment.index.bytes": "4096",
    "delete.retention.ms": "1000",
}
DEDUPE_BYTES = SLOT_BYTES * 160
NOW = 10_000_000
KEYS = 300
TIMEOUT = 30

CHILD = r"""
import json, os, signal, sys
from qnode.storage.cleaner import Cleaner, CleanerConfig
from qnode.storage.log import Log
from qnode.storage.log_config import LogConfig

directory = sys.argv[1]
kill_after, dedupe, now = (int(a) for a in sys.argv[2:5])
log = Log.open(directory, LogConfig.from_topic_config(json.loads(sys.argv[5])))
log.high_watermark = log.log_end_offset
count = [0]

def crash_after(fn):
    def op(*args, **kwargs):
        result = fn(*args, **kwargs)
        count[0] += 1
        if count[0] == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    return op

os.rename, os.replace, os.unlink = (crash_after(os.rename), crash_after(os.replace),
                                    crash_after(os.unlink))
print("ready", flush=True)
stats = Cleaner(CleanerConfig(dedupe_buffer_size=dedupe)).clean(log, now)
print("done", count[0], stats.rounds, stats.segments_written, stats.duration_s, flush=True)
"""


def records_of(directory: str) -> tuple[list[tuple[int, bytes, bytes | None]], int]:
    log = Log.open(directory, LogConfig.from_topic_config(TOPIC_CONFIG))
    try:
        data = b"".join(bytes(s) for s in log.read(log.log_start_offset, 1 << 30).slices)
        validate_batches(data, producer_batches=False)
        return [(r.offset, r.key, r.value) for r in iter_records(data)], log.log_end_offset
    finally:
        log.close()


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A closed-segment log of 2000 records over 300 keys, some tombstoned, and its truth."""
    directory = str(tmp_path_factory.mktemp("template") / "compacted-0")
    log = Log.open(directory, LogConfig.from_topic_config(TOPIC_CONFIG))
    rnd = random.Random(11)
    written = []
    offset = 0
    for _ in range(400):
        b = BatchBuilder()
        batch = []
        for _ in range(5):
            key = b"key-%03d" % rnd.randrange(KEYS)
            value = None if rnd.random() < 0.05 else b"value-%d" % offset
            b.append(key, value, timestamp_ms=1000)
            batch.append((offset, key, value))
            offset += 1
        log.append(b.build(), leader_epoch=0)
        written.extend(batch)
    log.roll()
    log.close()
    latest = {}
    for rec in written:
        latest[rec[1]] = rec
    return directory, written, latest


def run_child(directory: str, kill_after: int, delay: float | None = None) -> str:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            directory,
            str(kill_after),
            str(DEDUPE_BYTES),
            str(NOW),
            json.dumps(TOPIC_CONFIG),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        if delay is not None:
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TIMEOUT)
    if kill_after > 0 and delay is None:
        assert proc.returncode == -signal.SIGKILL, (out, err)
    return out


def check_valid(directory: str, written, latest) -> list:
    leftovers = [n for n in os.listdir(directory) if n.endswith((".cleaned", ".swap"))]
    got, leo = records_of(directory)
    assert not [n for n in os.listdir(directory) if n.endswith((".cleaned", ".swap"))], leftovers
    assert leo == len(written)
    offsets = [r[0] for r in got]
    assert offsets == sorted(set(offsets))
    truth = {r[0]: r for r in written}
    assert all(truth[r[0]] == r for r in got), "a record changed or appeared"
    last_seen = {}
    for rec in got:
        last_seen[rec[1]] = rec
    for key, rec in latest.items():
        if rec[2] is None:
            assert last_seen.get(key) in (None, rec), key  # tombstone kept, or key gone whole
        else:
            assert last_seen.get(key) == rec, key
    return got


@pytest.fixture(scope="module")
def dry_run(template, tmp_path_factory):
    """An uninterrupted child clean: how many file operations a whole clean makes, how long."""
    directory = str(tmp_path_factory.mktemp("dry") / "compacted-0")
    shutil.copytree(template[0], directory)
    out = run_child(directory, 0)
    _, ops, rounds, written, elapsed = out.split()
    assert int(rounds) > 1 and int(written) > 1  # a multi-round clean with several swaps
    got = check_valid(directory, template[1], template[2])
    assert got == sorted(r for r in template[2].values() if r[2] is not None)
    print(f"uninterrupted clean: {ops} file operations, {rounds} rounds, {written} swaps, "
          f"{float(elapsed):.3f}s")
    return int(ops), float(elapsed)


def test_uninterrupted_clean_reaches_last_write_per_key(template, dry_run):
    assert dry_run[0] > 100  # enough crash points to sample from


@pytest.mark.parametrize("seed", range(10))
def test_kill_after_nth_file_operation(template, dry_run, tmp_path, seed):
    ops = dry_run[0]
    kill_after = random.Random(seed).randrange(1, ops + 1) if seed else 1
    directory = str(tmp_path / "compacted-0")
    shutil.copytree(template[0], directory)
    run_child(directory, kill_after)
    check_valid(directory, template[1], template[2])
    finish_and_check(directory, template)


@pytest.mark.parametrize("seed", range(4))
def test_kill_at_random_time(template, dry_run, tmp_path, seed):
    directory = str(tmp_path / "compacted-0")
    shutil.copytree(template[0], directory)
    run_child(directory, 0, delay=random.Random(100 + seed).uniform(0, dry_run[1]))
    check_valid(directory, template[1], template[2])
    finish_and_check(directory, template)


def finish_and_check(directory: str, template) -> None:
    """After recovery, a clean to the end leaves exactly the last write per key."""
    log = Log.open(directory, LogConfig.from_topic_config(TOPIC_CONFIG))
    try:
        log.high_watermark = log.log_end_offset
        Cleaner(CleanerConfig(dedupe_buffer_size=DEDUPE_BYTES)).clean(log, NOW)
    finally:
        log.close()
    got = check_valid(directory, template[1], template[2])
    expected = sorted(r for r in template[2].values() if r[2] is not None)
    assert got == expected

"""Random byte flips in the tail of the active segment (past the recovery point): recovery
keeps every batch before the first damaged one and leaves a log whose every batch is valid."""

from __future__ import annotations

import random

import pytest

from qnode.storage import Log, LogConfig
from qnode.storage.batch_builder import BatchBuilder
from qnode.storage.batch_reader import read_batches

CFG = LogConfig.from_topic_config({"index.interval.bytes": "256"})


def batch(i: int) -> bytes:
    b = BatchBuilder()
    for j in range(1 + i % 7):
        b.append(f"k{i}".encode(), f"value-{i}-{j}".encode() * 3, timestamp_ms=1000 + i)
    return b.build()


@pytest.mark.parametrize("seed", range(12))
def test_byte_flips_in_tail(tmp_path, seed):
    rnd = random.Random(seed)
    path = tmp_path / "t-0"
    log = Log.open(path, CFG)
    ends = []  # (end position, next offset) after each batch
    for i in range(60):
        log.append(batch(i), 0)
        ends.append((log.size_bytes, log.log_end_offset))
    flushed_batches = rnd.randrange(10, 40)
    rp_pos, rp = ends[flushed_batches - 1]
    seg_file = log.active_segment.log_path
    with open(seg_file, "rb") as f:  # the data; the file goes on with its reserved zeros
        original = f.read(log.active_segment.size)
    log.close_without_flush()
    damaged = bytearray(original)
    flips = sorted(rnd.randrange(rp_pos, len(damaged)) for _ in range(rnd.randrange(1, 4)))
    for p in flips:
        damaged[p] ^= 1 << rnd.randrange(8)
    with open(seg_file, "r+b") as f:
        f.write(damaged)
    log = Log.open(path, CFG, recovery_point=rp)
    first_bad = flips[0]
    # every batch that ends before the first flip is intact, byte for byte
    intact_end = max([e for e, _ in ends if e <= first_bad] + [rp_pos])
    data = b"".join(bytes(s) for s in log.read(0, 1 << 30).slices)
    assert data[:intact_end] == original[:intact_end]
    assert log.log_end_offset >= rp
    # and the whole log is valid: CRCs, offsets in order
    nxt = 0
    for b in read_batches(data, allow_partial_tail=False):
        b.verify()
        assert b.header.base_offset >= nxt
        nxt = b.header.next_offset
    assert nxt == log.log_end_offset
    if len(data) < len(original):
        assert log.recovery_report.truncated
    log.append(batch(99), 0)
    log.close()

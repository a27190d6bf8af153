"""Leader-epoch cache wired to a real Log: appends, follower appends, truncation, rebuild."""

from __future__ import annotations

from qnode.storage.batch_builder import BatchBuilder
from qnode.storage.leader_epoch import CHECKPOINT_NAME, EpochEntry, attach
from qnode.storage.log import Log
from qnode.storage.log_config import LogConfig

CFG = LogConfig.from_topic_config({"segment.bytes": "1024", "segment.index.bytes": "4096"})


def batch(n: int = 3, base_offset: int = 0, epoch: int = -1) -> bytes:
    b = BatchBuilder(base_offset=base_offset, partition_leader_epoch=epoch)
    for i in range(n):
        b.append(b"k", b"v%d" % i, timestamp_ms=1000)
    return b.build()


def test_leader_appends_record_epoch_starts_and_survive_reopen(tmp_path):
    log = Log.open(tmp_path / "t-0", CFG)
    cache = attach(log)
    for epoch in (0, 0, 2, 2, 5):
        log.append(batch(), leader_epoch=epoch)
    assert cache.entries == [EpochEntry(0, 0), EpochEntry(2, 6), EpochEntry(5, 12)]
    assert cache.end_offset_for(2, log.log_end_offset) == (2, 12)
    log.close()
    log = Log.open(tmp_path / "t-0", CFG)
    try:
        assert attach(log).entries == [EpochEntry(0, 0), EpochEntry(2, 6), EpochEntry(5, 12)]
        assert log.leader_epoch_cache.end_offset_for(5, 15) == (5, 15)
    finally:
        log.close()


def test_follower_appends_take_epochs_from_the_batches(tmp_path):
    log = Log.open(tmp_path / "t-0", CFG)
    cache = attach(log)
    try:
        data = batch(2, 0, epoch=1) + batch(2, 2, epoch=1) + batch(2, 4, epoch=3)
        log.append(data, leader_epoch=-1, assign_offsets=False)
        assert cache.entries == [EpochEntry(1, 0), EpochEntry(3, 4)]
    finally:
        log.close()


def test_truncation_and_log_start_moves_trim_the_cache(tmp_path):
    log = Log.open(tmp_path / "t-0", CFG)
    cache = attach(log)
    try:
        for epoch in (1, 1, 2, 3, 3):
            log.append(batch(), leader_epoch=epoch)
        log.truncate_to(9)
        assert cache.entries == [EpochEntry(1, 0), EpochEntry(2, 6)]
        log.high_watermark = log.log_end_offset
        log.delete_records_before(7)
        assert cache.entries == [EpochEntry(2, 7)]
    finally:
        log.close()


def test_missing_or_corrupt_checkpoint_is_rebuilt_from_batch_headers(tmp_path):
    log = Log.open(tmp_path / "t-0", CFG)
    attach(log)
    for epoch in (0, 4, 4, 9):
        log.append(batch(5), leader_epoch=epoch)
    log.close()
    expected = [EpochEntry(0, 0), EpochEntry(4, 5), EpochEntry(9, 15)]
    for damage in (None, b"0\n3\n0 0\n"):
        path = tmp_path / "t-0" / CHECKPOINT_NAME
        if damage is None:
            path.unlink()
        else:
            path.write_bytes(damage)
        log = Log.open(tmp_path / "t-0", CFG)
        try:
            assert attach(log).entries == expected
        finally:
            log.close()


def test_follower_truncates_by_leader_epoch_not_high_watermark(tmp_path):
    """KIP-101: a returning replica truncates its divergent tail where the new leader's
    epoch began, then replicates, and both logs end up byte-identical."""
    a = Log.open(tmp_path / "a" / "t-0", CFG)
    b = Log.open(tmp_path / "b" / "t-0", CFG)
    try:
        cache_a, cache_b = attach(a), attach(b)
        for _ in range(5):
            a.append(batch(2), leader_epoch=0)  # A leads epoch 0: offsets 0..9
        replicated = b"".join(bytes(s) for s in a.read(0, 1 << 20, max_offset=8).slices)
        b.append(replicated, leader_epoch=0, assign_offsets=False)  # B has 0..7
        # A fails; B leads epoch 1 and writes new data at 8..11.
        b.append(batch(2), leader_epoch=1)
        b.append(batch(2), leader_epoch=1)
        assert cache_b.entries == [EpochEntry(0, 0), EpochEntry(1, 8)]
        # A returns as follower: where did its latest epoch end on the leader?
        epoch, end = cache_b.end_offset_for(cache_a.latest_epoch, b.log_end_offset)
        assert (epoch, end) == (0, 8)
        a.truncate_to(end)
        fetched = b"".join(bytes(s) for s in b.read(a.log_end_offset, 1 << 20).slices)
        a.append(fetched, leader_epoch=1, assign_offsets=False)
        assert cache_a.entries == cache_b.entries
        whole = [b"".join(bytes(s) for s in lg.read(0, 1 << 20).slices) for lg in (a, b)]
        assert whole[0] == whole[1] and len(whole[0]) > 0
        assert a.log_end_offset == b.log_end_offset == 12
    finally:
        a.close()
        b.close()


def test_checkpoint_that_missed_the_newest_epoch_is_rebuilt(tmp_path):
    log = Log.open(tmp_path / "t-0", CFG)
    attach(log)
    log.append(batch(), leader_epoch=1)
    stale = (tmp_path / "t-0" / CHECKPOINT_NAME).read_bytes()
    log.append(batch(), leader_epoch=4)
    log.close()
    (tmp_path / "t-0" / CHECKPOINT_NAME).write_bytes(stale)  # as if its last write failed
    log = Log.open(tmp_path / "t-0", CFG)
    try:
        assert attach(log).entries == [EpochEntry(1, 0), EpochEntry(4, 3)]
    finally:
        log.close()

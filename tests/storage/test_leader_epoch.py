"""Leader-epoch cache: assignment rules, KIP-279 end offsets, truncation, checkpoint file."""

from __future__ import annotations

import pytest

from qnode.storage.leader_epoch import (
    CHECKPOINT_NAME,
    CorruptCheckpointError,
    EpochEntry,
    LeaderEpochCache,
    LeaderEpochError,
    read_checkpoint,
)


def make(tmp_path, *pairs):
    cache = LeaderEpochCache(tmp_path)
    for epoch, offset in pairs:
        cache.assign(epoch, offset)
    return cache


def test_assign_appends_and_ignores_repeat_of_latest(tmp_path):
    cache = make(tmp_path, (0, 0), (1, 10))
    assert cache.assign(1, 15) is False  # same epoch, later offset: first offset stays
    assert cache.entries == [EpochEntry(0, 0), EpochEntry(1, 10)]
    assert cache.latest_epoch == 1


def test_assign_rejects_backwards_epoch_or_offset(tmp_path):
    cache = make(tmp_path, (2, 100))
    with pytest.raises(LeaderEpochError):
        cache.assign(1, 200)
    with pytest.raises(LeaderEpochError):
        cache.assign(3, 50)
    with pytest.raises(LeaderEpochError):
        cache.assign(2, 99)
    with pytest.raises(LeaderEpochError):
        cache.assign(-1, 0)
    assert cache.entries == [EpochEntry(2, 100)]


def test_epoch_that_wrote_nothing_is_replaced(tmp_path):
    cache = make(tmp_path, (0, 0), (1, 10), (2, 10))
    assert cache.entries == [EpochEntry(0, 0), EpochEntry(2, 10)]


def test_end_offset_for_follows_kip_279(tmp_path):
    cache = make(tmp_path, (2, 5), (4, 20), (7, 40))
    leo = 55
    assert cache.end_offset_for(7, leo) == (7, 55)   # latest: log end
    assert cache.end_offset_for(4, leo) == (4, 40)   # start of next higher epoch
    assert cache.end_offset_for(5, leo) == (4, 40)   # unknown epoch in between: floor epoch
    assert cache.end_offset_for(1, leo) == (1, 5)    # below the earliest entry
    assert cache.end_offset_for(9, leo) == (-1, -1)  # above everything
    assert cache.end_offset_for(-1, leo) == (-1, -1)
    assert LeaderEpochCache(tmp_path / "x").end_offset_for(0, 0) == (-1, -1)


def test_epoch_for_offset(tmp_path):
    cache = make(tmp_path, (2, 5), (4, 20))
    assert [cache.epoch_for_offset(o) for o in (0, 5, 19, 20, 99)] == [-1, 2, 2, 4, 4]


def test_truncate_from_end_drops_epochs_at_or_past_offset(tmp_path):
    cache = make(tmp_path, (0, 0), (1, 10), (2, 20))
    cache.truncate_from_end(20)
    assert cache.entries == [EpochEntry(0, 0), EpochEntry(1, 10)]
    cache.truncate_from_end(11)
    assert cache.entries == [EpochEntry(0, 0), EpochEntry(1, 10)]
    cache.truncate_from_end(0)
    assert cache.entries == []
    assert read_checkpoint(tmp_path / CHECKPOINT_NAME) == []


def test_truncate_from_start_clamps_spanning_epoch(tmp_path):
    cache = make(tmp_path, (0, 0), (1, 10), (2, 20))
    cache.truncate_from_start(15)
    assert cache.entries == [EpochEntry(1, 15), EpochEntry(2, 20)]
    cache.truncate_from_start(20)
    assert cache.entries == [EpochEntry(2, 20)]
    cache.truncate_from_start(3)  # below the earliest: nothing to do
    assert cache.entries == [EpochEntry(2, 20)]
    assert LeaderEpochCache.open(tmp_path).entries == [EpochEntry(2, 20)]


def test_checkpoint_round_trip_in_kafka_text_format(tmp_path):
    make(tmp_path, (0, 0), (3, 1200))
    text = (tmp_path / CHECKPOINT_NAME).read_text()
    assert text == "0\n2\n0 0\n3 1200\n"
    assert not list(tmp_path.glob("*.tmp"))
    again = LeaderEpochCache.open(tmp_path)
    assert again.entries == [EpochEntry(0, 0), EpochEntry(3, 1200)]
    assert again.end_offset_for(0, 2000) == (0, 1200)


def test_missing_checkpoint_is_empty(tmp_path):
    assert LeaderEpochCache.open(tmp_path).entries == []


@pytest.mark.parametrize("content", [
    b"",
    b"0\n",
    b"1\n0\n",                 # unknown version
    b"0\n2\n0 0\n",            # count says 2, one line
    b"0\n1\n0 zero\n",
    b"0\n2\n3 10\n1 20\n",      # epochs backwards
    b"0\n2\n1 20\n3 10\n",      # offsets backwards
    b"0\n1\n\xff\xfe\n",
    b"0\n1\n1 2 3\n",
])
def test_corrupt_checkpoint_raises_or_rebuilds(tmp_path, content):
    (tmp_path / CHECKPOINT_NAME).write_bytes(content)
    with pytest.raises(CorruptCheckpointError, match=CHECKPOINT_NAME):
        LeaderEpochCache.open(tmp_path)
    batches = [(0, 0), (0, 5), (2, 9), (2, 12), (5, 30)]
    cache = LeaderEpochCache.open(tmp_path, rebuild=lambda: iter(batches))
    assert cache.entries == [EpochEntry(0, 0), EpochEntry(2, 9), EpochEntry(5, 30)]
    assert read_checkpoint(tmp_path / CHECKPOINT_NAME) == cache.entries


def test_stale_tmp_file_does_not_matter(tmp_path):
    (tmp_path / (CHECKPOINT_NAME + ".tmp")).write_bytes(b"garbage")
    make(tmp_path, (1, 1))
    assert LeaderEpochCache.open(tmp_path).entries == [EpochEntry(1, 1)]

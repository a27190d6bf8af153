"""The leader-epoch checkpoint is written on the append path and fsynced by the log's next
flush (not on the produce path); a checkpoint a power loss left stale or empty is
re-derived from the batch headers when the log is opened again."""

from __future__ import annotations

from storage_log_helpers import make_batch

from qnode.storage import Log, LogConfig, leader_epoch
from qnode.storage.leader_epoch import CHECKPOINT_NAME, EpochEntry, read_checkpoint

CFG = LogConfig.from_topic_config({"segment.bytes": str(1 << 20)})


def test_first_append_writes_the_checkpoint_and_the_flush_syncs_it(tmp_path):
    log = Log.open(tmp_path / "t-0", CFG)
    cache = leader_epoch.attach(log)
    assert not cache.unsynced
    log.append(make_batch(5), 3)
    path = tmp_path / "t-0" / CHECKPOINT_NAME
    assert read_checkpoint(path) == [EpochEntry(3, 0)]  # written at once...
    assert cache.unsynced  # ...its fsync left for the flush
    log.append(make_batch(5), 3)
    assert cache.unsynced
    log.flush()
    assert not cache.unsynced
    log.append(make_batch(5), 4)
    assert cache.unsynced
    log.close()  # a clean close flushes: durable
    assert not cache.unsynced
    assert read_checkpoint(path) == [EpochEntry(3, 0), EpochEntry(4, 10)]


def test_truncation_also_waits_for_the_flush(tmp_path):
    log = Log.open(tmp_path / "t-0", CFG)
    cache = leader_epoch.attach(log)
    log.append(make_batch(5), 1)
    log.append(make_batch(5), 2)
    log.flush()
    log.truncate_to(5)
    assert cache.unsynced
    assert read_checkpoint(tmp_path / "t-0" / CHECKPOINT_NAME) == [EpochEntry(1, 0)]
    log.flush()  # nothing new in the log to flush: the checkpoint still gets its fsync
    assert not cache.unsynced
    log.close()


def test_checkpoint_lost_to_a_power_loss_is_rederived(tmp_path):
    d = tmp_path / "t-0"
    log = Log.open(d, CFG)
    leader_epoch.attach(log)
    log.append(make_batch(5), 1)
    log.flush()
    log.append(make_batch(5), 2)
    log.append(make_batch(5), 5)
    log.flush()
    log.close_without_flush()
    path = d / CHECKPOINT_NAME
    for damage in (b"", b"0\n1\n1 0\n"):  # empty (rename not durable) / stale (old content)
        path.write_bytes(damage)
        log = Log.open(d, CFG)
        cache = leader_epoch.attach(log)
        assert cache.entries == [EpochEntry(1, 0), EpochEntry(2, 5), EpochEntry(5, 10)]
        assert cache.end_offset_for(2, log.log_end_offset) == (2, 10)
        log.close()
        assert read_checkpoint(path) == cache.entries

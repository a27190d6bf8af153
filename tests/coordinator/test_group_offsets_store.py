"""Offsets topic writing (one batch per partition per flush) and loading (replay, tombstones)."""

from __future__ import annotations

from qnode.coordinator import group_metadata as gm
from qnode.coordinator.group_coordinator import CommitItem, GroupConfig, GroupCoordinator
from qnode.coordinator.offsets_store import LoadProgress, OffsetsAppender, load_batches
from qnode.storage.batch_builder import build_control_batch
from qnode.storage.batch_reader import read_batches
from qnode.storage.record_batch import stamp
from qnode.transport.errors import ErrorCode as E


class Partitions:
    """Stands in for the workers: stamps offsets and keeps each partition's bytes."""

    def __init__(self) -> None:
        self.data: dict[int, bytearray] = {}
        self.next: dict[int, int] = {}
        self.sent = 0
        self.fail = E.NONE

    def send(self, partition, batch, done) -> None:
        self.sent += 1
        if self.fail:
            return done(self.fail)
        buf = bytearray(batch)
        base = self.next.get(partition, 0)
        stamp(buf, 0, base, 0)
        count = len(list(read_batches(bytes(buf)))[0])
        self.next[partition] = base + count
        self.data.setdefault(partition, bytearray()).extend(buf)
        done(E.NONE)


def coordinator(appender, now=lambda: 1000) -> GroupCoordinator:
    return GroupCoordinator(GroupConfig(num_partitions=3), appender, now)


def test_concurrent_commits_become_one_batch_per_partition():
    parts = Partitions()
    app = OffsetsAppender(parts.send)
    gc = coordinator(app)
    answers = []
    groups = [f"g{i}" for i in range(30)]
    for g in groups:
        gc.commit_offsets(g, -1, "", None, [CommitItem("t", p, 10 + p) for p in range(4)],
                          answers.append)
    assert answers == [] and app.has_pending()  # nothing acknowledged before the write
    app.flush()
    touched = {gc.partition_of(g) for g in groups}
    assert parts.sent == len(touched)
    assert len(answers) == 30 and all(e == E.NONE for a in answers for _, _, e in a)
    assert gc.fetch_offsets("g7", None)[("t", 3)].offset == 13


def test_failed_write_fails_every_commit_of_the_batch():
    parts = Partitions()
    parts.fail = E.NOT_ENOUGH_REPLICAS
    app = OffsetsAppender(parts.send)
    gc = coordinator(app)
    answers = []
    gc.commit_offsets("g", -1, "", None, [CommitItem("t", 0, 1)], answers.append)
    gc.commit_offsets("g", -1, "", None, [CommitItem("t", 1, 1)], answers.append)
    app.flush()
    assert [a[0][2] for a in answers] == [E.NOT_ENOUGH_REPLICAS] * 2
    assert gc.fetch_offsets("g", None) == {}


def test_reload_replays_latest_values_and_tombstones():
    parts = Partitions()
    app = OffsetsAppender(parts.send)
    gc = coordinator(app)
    for offset in (5, 6, 7):
        gc.commit_offsets("keep", -1, "", None, [CommitItem("t", 0, offset)], lambda _r: None)
        app.flush()
    gc.commit_offsets("gone", -1, "", None, [CommitItem("t", 0, 1)], lambda _r: None)
    app.flush()
    gc.delete_groups(["gone"], lambda _r: None)
    app.flush()
    # a transaction marker in the log must be skipped, not decoded as a group record
    p = gc.partition_of("keep")
    parts.data[p].extend(build_control_batch(True, 1, 0, 0))

    fresh = coordinator(OffsetsAppender(parts.send))
    for part, data in parts.data.items():
        progress = LoadProgress()
        load_batches(bytes(data), fresh, progress)
        fresh.finish_load(part)
        assert progress.skipped == 0
    assert fresh.fetch_offsets("keep", None)[("t", 0)].offset == 7
    assert fresh.group("gone") is None


def test_load_resumes_from_next_offset_and_skips_undecodable_records():
    parts = Partitions()
    app = OffsetsAppender(parts.send)
    app.append(0, [(gm.offset_key("g", "t", 0), gm.encode_offset_value(gm.OffsetValue(3)))],
               lambda _e: None)
    app.flush()
    app.append(0, [(b"\xc1garbage", b"x"),
                   (gm.offset_key("g", "t", 0), gm.encode_offset_value(gm.OffsetValue(4)))],
               lambda _e: None)
    app.flush()
    gc = coordinator(OffsetsAppender(parts.send))
    progress = LoadProgress()
    load_batches(bytes(parts.data[0]), gc, progress)
    assert progress.next_offset == 3 and progress.records == 2 and progress.skipped == 1
    assert gc.fetch_offsets("g", None)[("t", 0)].offset == 4
    again = LoadProgress(next_offset=3)
    load_batches(bytes(parts.data[0]), gc, again)
    assert again.records == 0

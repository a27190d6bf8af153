"""The metadata log on disk: append/read, replay, checkpoints, trimming, damaged checkpoints,
and the one-voter quorum over it (real files, no processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qnode.coordinator import records as rec
from qnode.coordinator.image import MetadataImage
from qnode.coordinator.metadata_log import MetadataLog
from qnode.coordinator.quorum import NotControllerError, Quorum
from qnode.coordinator.store import MetadataStore


def topic_records(name: str, partitions: int) -> list[dict]:
    out = [rec.topic(name, f"id-{name}", {"retention.ms": "1"})]
    out += [rec.partition(name, i, [0], [0], 0, 0, i % 2) for i in range(partitions)]
    return out


def state(image: MetadataImage) -> dict:
    """The image without its log position and controller (a restart adds a leader_change)."""
    d = image.to_dict()
    for k in ("offset", "controller_id", "controller_epoch"):
        d.pop(k)
    return d


def open_store(d: Path, checkpoint_bytes: int = 1 << 30, voters=frozenset({0})):
    mlog = MetadataLog(d, segment_bytes=1 << 20)
    quorum = Quorum(0, voters, mlog, d / "quorum-state")
    store = MetadataStore(mlog, quorum, checkpoint_bytes)
    quorum.start_election()
    return mlog, quorum, store


def test_append_read_replay(tmp_path: Path) -> None:
    mlog = MetadataLog(tmp_path)
    assert mlog.append(topic_records("a", 3), term=1) == (0, 3)
    assert mlog.append([rec.remove_topic("a")], term=2) == (4, 4)
    entries = mlog.read(0)
    assert [e.offset for e in entries] == [0, 1, 2, 3, 4]
    assert [e.term for e in entries] == [1, 1, 1, 1, 2]
    assert entries[0].wire()["offset"] == 0 and entries[0].wire()["term"] == 1
    assert [e.offset for e in mlog.read(2)] == [2, 3, 4], "a read may start inside a batch"
    mlog.close()
    again = MetadataLog(tmp_path)
    assert again.end_offset == 5 and again.last_term == 2
    image = again.load_checkpoint()
    assert image.offset == 0, "no checkpoint: the records are applied as they commit"
    again.close()


def test_bad_records_are_refused_before_writing(tmp_path: Path) -> None:
    mlog = MetadataLog(tmp_path)
    for bad in (
        {"type": "nope"},
        {"type": "topic", "name": 5},
        [1, 2],
        {
            "type": "partition",
            "topic": "t",
            "partition": True,
            "replicas": [],
            "isr": [],
            "leader": 0,
            "leader_epoch": 0,
            "worker": 0,
        },
    ):
        with pytest.raises(rec.BadRecordError):
            mlog.append([bad], term=1)  # type: ignore[list-item]
    assert mlog.end_offset == 0
    with pytest.raises(rec.BadRecordError):
        rec.decode(b"\xc1")


def test_single_voter_commits_on_append_and_persists_term(tmp_path: Path) -> None:
    mlog, quorum, store = open_store(tmp_path)
    assert quorum.is_leader and quorum.term == 1 and quorum.leader_id == 0
    seen = []
    store.on_change(seen.append)
    assert [e.record["type"] for e in mlog.read(0)] == ["leader_change"]
    assert store.image.controller_id == 0 and store.image.controller_epoch == 1
    last = store.append(topic_records("t", 2))
    assert last == 3 and store.committed_offset == 4 and seen == [4]
    assert set(store.image.topics["t"].partitions) == {0, 1}
    mlog.close()
    mlog, quorum, store = open_store(tmp_path)
    assert quorum.term == 2, "a new election bumps the persisted term"
    assert store.image.controller_epoch == 2 and set(store.image.topics["t"].partitions) == {0, 1}
    store.append([rec.config("t", {"segment.bytes": "100"})])
    assert [e.term for e in mlog.read(0)] == [1, 1, 1, 1, 2, 2]
    assert store.image.topics["t"].config_version == 1
    mlog.close()


def test_multi_voter_quorum_without_peers_does_not_lead(tmp_path: Path) -> None:
    mlog, quorum, store = open_store(tmp_path, voters=frozenset({0, 1, 2}))
    assert not quorum.is_leader and quorum.leader_id is None
    with pytest.raises(NotControllerError):
        store.append([rec.register_node(0, "tcp://x:1")])
    assert mlog.end_offset == 0
    mlog.close()


def test_majority_commit_rule(tmp_path: Path) -> None:
    """With 3 voters an append commits once a second voter holds it (median match offset)."""
    mlog, quorum, store = open_store(tmp_path, voters=frozenset({0, 1, 2}))
    quorum._become_leader()  # as if votes from a peer had arrived
    quorum.append([rec.register_node(0, "tcp://x:1")])
    assert quorum.committed_offset == 0 and store.committed_offset == 0
    quorum.record_match(2, 1)  # holds the leader_change only
    assert quorum.committed_offset == 1 and store.image.nodes == {}
    quorum.record_match(1, 2)
    assert quorum.committed_offset == 2 and store.image.nodes == {0: "tcp://x:1"}
    mlog.close()


def test_checkpoint_trim_and_replay(tmp_path: Path) -> None:
    mlog, quorum, store = open_store(tmp_path, checkpoint_bytes=1)  # checkpoint every commit
    for i in range(6):
        store.append(topic_records(f"t{i}", 2))
    cps = mlog.checkpoints()
    assert len(cps) == 2, "only the two newest checkpoints are kept"
    assert cps[-1][0] == store.committed_offset == 19
    assert mlog.start_offset > 0, "records before the older checkpoint were trimmed"
    expected = state(store.image)
    mlog.close()
    mlog, quorum, store = open_store(tmp_path, checkpoint_bytes=1 << 30)
    assert state(store.image) == expected
    mlog.close()


def test_damaged_newest_checkpoint_falls_back_to_older(tmp_path: Path) -> None:
    mlog, quorum, store = open_store(tmp_path, checkpoint_bytes=1)
    for i in range(4):
        store.append(topic_records(f"t{i}", 1))
    expected = state(store.image)
    newest = mlog.checkpoints()[-1][2]
    mlog.close()
    data = bytearray(newest.read_bytes())
    data[-1] ^= 0xFF
    newest.write_bytes(bytes(data))
    mlog2, _quorum, store2 = open_store(tmp_path)
    assert state(store2.image) == expected, "older checkpoint + the records after it"
    mlog2.close()


def test_image_round_trip_and_apply_order(tmp_path: Path) -> None:
    img = MetadataImage()
    for i, r in enumerate(
        topic_records("x", 2)
        + [rec.producer_ids(0, 1000), rec.worker(0, 1, "tcp://h:2"), rec.leader_change(0, 3, [0])]
    ):
        img.apply(r, i)
    assert img.next_producer_id == 1000 and img.workers == {(0, 1): "tcp://h:2"}
    assert (img.controller_id, img.controller_epoch) == (0, 3)
    assert MetadataImage.from_dict(img.to_dict()).to_dict() == img.to_dict()
    with pytest.raises(AssertionError):
        img.apply(rec.remove_topic("x"), 1)  # going backwards is a bug, never silent


def test_checkpoint_ahead_of_a_lost_log_tail_wins(tmp_path: Path) -> None:
    mlog, quorum, store = open_store(tmp_path, checkpoint_bytes=1)
    for i in range(3):
        store.append(topic_records(f"t{i}", 1))
    expected = state(store.image)
    end = mlog.end_offset
    mlog.close()
    for seg in tmp_path.glob("*.log"):  # the records vanish, the checkpoints stay
        seg.write_bytes(b"")
    mlog, quorum, store = open_store(tmp_path)
    assert state(store.image) == expected
    assert mlog.end_offset == end + 1, "the log continues after the checkpoint (+ leader_change)"
    store.append([rec.remove_topic("t0")])
    assert store.committed_offset == end + 2 and "t0" not in store.image.topics
    mlog.close()


def test_torn_tail_is_cut_and_committed_records_stay(tmp_path: Path) -> None:
    mlog, quorum, store = open_store(tmp_path)
    store.append(topic_records("a", 2))
    store.append(topic_records("b", 1))
    expected = state(store.image)
    end = mlog.end_offset
    mlog._log.close_without_flush()  # a crash: no clean-shutdown mark
    seg = sorted(tmp_path.glob("*.log"))[-1]
    with open(seg, "ab") as f:
        f.write(b"\x00\x00\x00\x00\x00\x00\x00\x05\x00\x00\x01\x00torn")  # half a batch
    mlog, quorum, store = open_store(tmp_path)
    assert mlog.end_offset == end + 1 and state(store.image) == expected
    store.append([rec.remove_topic("a")])
    assert [e.record["type"] for e in mlog.read(end)] == ["leader_change", "remove_topic"]
    mlog.close()

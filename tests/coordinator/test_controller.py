"""Controller rules on a real metadata store (files, no sockets): placement, ids, configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from qnode.coordinator.controller import (
    PRODUCER_ID_BLOCK,
    Controller,
    ControllerError,
    TopicSpec,
    check_topic_name,
)
from qnode.coordinator.metadata_log import MetadataLog
from qnode.coordinator.quorum import Quorum
from qnode.coordinator.store import MetadataStore
from qnode.node.config import load_config
from qnode.node.shm_table import DEFAULT_CAPACITY as SHM_TABLE_ROWS
from qnode.storage.log_manager import (
    OPEN_FILES_PER_PARTITION,
    RESERVED_FILES,
    partition_capacity,
)
from qnode.transport.errors import ErrorCode


def make_controller(d: Path, workers: int = 3, capacity: int | None = None,
                    **overrides) -> tuple[Controller, MetadataLog]:
    config = load_config(
        None, {"data.dir": str(d), "workers": workers, "listen": "tcp://127.0.0.1:1", **overrides}
    )
    mlog = MetadataLog(d / "meta")
    quorum = Quorum(0, frozenset({0}), mlog, d / "meta" / "quorum-state")
    store = MetadataStore(mlog, quorum, 1 << 30)
    quorum.start_election()
    controller = Controller(config, store, capacity)
    controller.start()
    return controller, mlog


def workers_of(c: Controller, topic: str) -> list[int]:
    return [p.worker for p in c.partitions_of(c.topic(topic))]


def test_placement_least_loaded_and_stable(tmp_path: Path) -> None:
    c, mlog = make_controller(tmp_path)
    c.create_topic(TopicSpec("a", 2))
    assert workers_of(c, "a") == [0, 1]
    c.create_topic(TopicSpec("b", 4))
    assert workers_of(c, "b") == [2, 0, 1, 2], "fills the least-loaded worker first"
    c.delete_topic("a")
    c.create_topic(TopicSpec("c", 2))
    assert workers_of(c, "c") == [0, 1], "deleted partitions free their workers"
    mlog.close()
    c2, mlog2 = make_controller(tmp_path)
    assert workers_of(c2, "b") == [2, 0, 1, 2] and workers_of(c2, "c") == [0, 1]
    assert c2.image.topics["b"].topic_id == c.image.topics["b"].topic_id
    mlog2.close()


def test_producer_id_blocks(tmp_path: Path) -> None:
    c, mlog = make_controller(tmp_path)
    ids = [c.allocate_producer_id() for _ in range(PRODUCER_ID_BLOCK + 2)]
    assert ids == list(range(PRODUCER_ID_BLOCK + 2)), "a second block follows the first"
    assert c.image.next_producer_id == 2 * PRODUCER_ID_BLOCK
    assert c.image.producer_id_blocks == {0: 2 * PRODUCER_ID_BLOCK}
    mlog.close()


def test_internal_topics(tmp_path: Path) -> None:
    c, mlog = make_controller(tmp_path, workers=2)
    c.ensure_internal_topic("__consumer_offsets", 5, {"cleanup.policy": "compact"})
    c.ensure_internal_topic("__consumer_offsets", 5, {"cleanup.policy": "compact"})  # no-op
    t = c.topic("__consumer_offsets")
    assert t.internal and len(t.partitions) == 5 and t.configs == {"cleanup.policy": "compact"}
    with pytest.raises(ControllerError) as e:
        c.delete_topic("__consumer_offsets")
    assert e.value.code == ErrorCode.INVALID_REQUEST
    mlog.close()


@pytest.mark.parametrize("name", ["ok", "a.b-c_D9", "x" * 249])
def test_legal_names(name: str) -> None:
    check_topic_name(name)


@pytest.mark.parametrize("name", ["", ".", "..", "x" * 250, "sp ace", "é", "a:b"])
def test_illegal_names(name: str) -> None:
    with pytest.raises(ControllerError) as e:
        check_topic_name(name)
    assert e.value.code == ErrorCode.INVALID_TOPIC_EXCEPTION


def test_config_changes_are_validated_and_recorded(tmp_path: Path) -> None:
    c, mlog = make_controller(tmp_path)
    c.create_topic(TopicSpec("t", 1, configs={"cleanup.policy": "delete,compact"}))
    assert c.topic("t").configs == {"cleanup.policy": "compact,delete"}, "normalized"
    end = c.store.committed_offset
    c.alter_topic_configs("t", [("cleanup.policy", "set", "compact,delete")])
    assert c.store.committed_offset == end, "no change, no record"
    with pytest.raises(ControllerError) as e:
        c.alter_topic_configs("t", [("max.message.bytes", "set", "-1")])
    assert e.value.code == ErrorCode.INVALID_CONFIG and "max.message.bytes" in e.value.message
    c.alter_topic_configs(
        "t", [("max.message.bytes", "set", "2000"), ("cleanup.policy", "delete", None)]
    )
    assert c.topic("t").configs == {"max.message.bytes": "2000"}
    sources = {k: s for k, _v, s in c.effective_configs("t")}
    assert sources["max.message.bytes"] == "topic" and sources["cleanup.policy"] == "default"
    mlog.close()


def test_a_topic_of_many_partitions_is_one_atomic_batch(tmp_path: Path) -> None:
    c, mlog = make_controller(tmp_path, workers=2)
    before = mlog.end_offset
    c.create_topic(TopicSpec("wide", 20_000))
    assert mlog.end_offset == before + 20_001
    assert len(c.topic("wide").partitions) == 20_000
    assert sorted(c.image.partition_counts(0).values()) == [10_000, 10_000]
    mlog.close()
    c2, mlog2 = make_controller(tmp_path, workers=2)
    assert len(c2.topic("wide").partitions) == 20_000
    mlog2.close()


def test_partitions_past_a_workers_open_file_capacity_are_refused(tmp_path: Path) -> None:
    """A worker keeps ~7 files open per partition: past what its open-file limit allows, the
    create is refused whole, naming the limit and the way out; nothing is written."""
    c, mlog = make_controller(tmp_path, workers=2, capacity=100)
    c.create_topic(TopicSpec("fits", 150))  # 75 per worker
    before = mlog.end_offset
    with pytest.raises(ControllerError) as err:
        c.create_topic(TopicSpec("wide", 60))  # would make 105 on each worker
    assert err.value.code == ErrorCode.INVALID_PARTITIONS
    assert "at most 100" in err.value.message and "ulimit -n" in err.value.message
    with pytest.raises(ControllerError):  # validate_only says the same
        c.create_topic(TopicSpec("wide", 60), validate_only=True)
    assert mlog.end_offset == before and "wide" not in c.image.topics
    c.create_topic(TopicSpec("rest", 50))  # exactly to the limit: 100 each
    assert sorted(c.image.partition_counts(0).values()) == [100, 100]
    mlog.close()


def test_capacity_from_the_open_file_limit() -> None:
    assert partition_capacity(20_000) == (20_000 - RESERVED_FILES) // OPEN_FILES_PER_PARTITION
    assert partition_capacity(1024) == (1024 - 256) // OPEN_FILES_PER_PARTITION  # ~100
    assert partition_capacity(0) == 0


def test_create_partitions_grows_a_topic_and_never_shrinks_it(tmp_path: Path) -> None:
    c, mlog = make_controller(tmp_path, workers=2, capacity=100)
    c.create_topic(TopicSpec("t", 3))
    first = {p.partition: p.worker for p in c.partitions_of(c.topic("t"))}
    c.create_partitions("t", 7)
    parts = c.partitions_of(c.topic("t"))
    assert [p.partition for p in parts] == list(range(7))
    assert {p.partition: p.worker for p in parts[:3]} == first  # the old ones stay put
    assert sorted(c.image.partition_counts(0).values()) == [3, 4]  # least loaded first
    assert all(p.leader == 0 and p.leader_epoch == 0 for p in parts[3:])
    before = mlog.end_offset
    for count, words in ((7, "already has 7"), (5, "can only grow"), (100_001, "allowed up to"),
                         (300, "at most 100")):
        with pytest.raises(ControllerError) as err:
            c.create_partitions("t", count)
        assert err.value.code == ErrorCode.INVALID_PARTITIONS and words in err.value.message
    with pytest.raises(ControllerError) as err:
        c.create_partitions("nosuch", 3)
    assert err.value.code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    c.ensure_internal_topic("__consumer_offsets", 2, {})
    before = mlog.end_offset
    with pytest.raises(ControllerError) as err:
        c.create_partitions("__consumer_offsets", 4)
    assert err.value.code == ErrorCode.INVALID_REQUEST
    c.create_partitions("t", 9, validate_only=True)
    assert mlog.end_offset == before and len(c.topic("t").partitions) == 7
    mlog.close()


def test_a_worker_never_gets_more_partitions_than_its_shm_table_has_rows(tmp_path: Path) -> None:
    c, mlog = make_controller(tmp_path, workers=1)  # no open-file limit given
    with pytest.raises(ControllerError) as err:
        c.create_topic(TopicSpec("huge", SHM_TABLE_ROWS + 1))
    assert err.value.code == ErrorCode.INVALID_PARTITIONS
    assert f"at most {SHM_TABLE_ROWS}" in err.value.message and "add workers" in err.value.message
    mlog.close()

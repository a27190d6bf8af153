"""ReplicaSet: logs placed on the worker are opened a slice at a time, the ones clients ask
for first; a partition not open yet says so with a retriable error (real logs, real shm)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from qnode.coordinator import records as rec
from qnode.node.metadata_follower import MetadataFollower
from qnode.node.replica_set import Replica, ReplicaSet
from qnode.node.shm_table import ShmTable
from qnode.storage.log_manager import LogManager
from qnode.transport.errors import ErrorCode


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[ReplicaSet]:
    shm = ShmTable(f"/qnode.test.{uuid.uuid4().hex[:12]}", 64)
    follower = MetadataFollower(0, 0)
    records = [rec.topic("t", uuid.uuid4().hex, {})]
    records += [rec.partition("t", p, [0], [0], 0, 0, 0) for p in range(5)]
    follower.apply_response(
        {"records": [{**r, "offset": i} for i, r in enumerate(records)], "next_offset": 6}
    )
    rs = ReplicaSet(0, LogManager(tmp_path, "worker-0"), shm, follower, {})
    yield rs
    try:
        rs.close()
    finally:
        shm.close()


def test_reconcile_queues_opens_and_asked_partitions_open_first(replicas: ReplicaSet) -> None:
    replicas.reconcile()
    assert set(replicas.pending) == {("t", p) for p in range(5)} and not replicas.replicas
    entry = replicas.lookup("t", 4)
    assert isinstance(entry, dict)
    assert entry["error"] == ErrorCode.NOT_LEADER_OR_FOLLOWER
    assert ErrorCode(entry["error"]).retriable
    assert replicas.open_pending(0.0) == 1  # a zero budget still opens one: the asked one
    assert isinstance(replicas.lookup("t", 4), Replica)
    assert replicas.open_pending(10.0, stop=lambda: True) == 0  # a stop request: no more opens
    assert len(replicas.pending) == 4
    replicas.open_all()
    assert not replicas.pending
    assert all(isinstance(replicas.lookup("t", p), Replica) for p in range(5))
    assert replicas.lookup("u", 0)["error"] == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION


def test_a_pending_log_no_longer_placed_here_is_not_opened(replicas: ReplicaSet) -> None:
    replicas.reconcile()
    replicas.lookup("t", 3)  # asked for, then the topic goes away
    replicas.follower.apply_response(
        {"records": [{**rec.remove_topic("t"), "offset": 6}], "next_offset": 7}
    )
    replicas.reconcile()
    assert not replicas.pending
    assert replicas.open_pending(1.0) == 0
    assert not replicas.replicas

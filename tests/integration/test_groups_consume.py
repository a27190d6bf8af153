"""Consumer groups against a real node: assignment, commits, resets, independence of groups,
static membership, cooperative rebalancing, max.poll.interval."""

from __future__ import annotations

import re
import time

import pytest

from qnode.sdk import Admin, Consumer, Producer, TopicPartition
from qnode.sdk.errors import NoOffsetForPartitionError

FAST = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 100}


def produce(bootstrap: str, topic: str, n: int, partitions: int, start: int = 0) -> None:
    with Admin(bootstrap=bootstrap) as admin:
        if topic not in admin.list_topics():
            admin.create_topic(topic, partitions=partitions)
    with Producer(bootstrap=bootstrap, acks="all", linger_ms=1) as p:
        for i in range(start, start + n):
            p.send(topic, value=b"%d" % i, partition=i % partitions)
        p.flush()


def drain(consumers: list[Consumer], want: int, timeout: float = 20.0,
          got: dict[str, list] | None = None) -> dict[str, list]:
    """Poll every consumer in turn until `want` records arrived in total."""
    got = got if got is not None else {c.client_id: [] for c in consumers}
    deadline = time.monotonic() + timeout
    while sum(len(v) for v in got.values()) < want:
        assert time.monotonic() < deadline, f"only {sum(map(len, got.values()))}/{want} records"
        for c in consumers:
            got[c.client_id] += c.poll(0.05)
    return got


def values(records) -> list[int]:
    return [int(r.value) for r in records]


def test_two_members_split_partitions_and_commit(node):
    produce(node.bootstrap, "orders", 200, 4)
    a = Consumer(bootstrap=node.bootstrap, group_id="g", auto_offset_reset="earliest", **FAST)
    b = Consumer(bootstrap=node.bootstrap, group_id="g", auto_offset_reset="earliest", **FAST)
    try:
        a.subscribe(["orders"])
        b.subscribe(["orders"])
        got: dict[str, list] = {a.client_id: [], b.client_id: []}
        deadline = time.monotonic() + 20
        while not (len(a.assignment()) == 2 and len(b.assignment()) == 2):
            assert time.monotonic() < deadline, (a.assignment(), b.assignment())
            got[a.client_id] += a.poll(0.05)
            got[b.client_id] += b.poll(0.05)
        assert not a.assignment() & b.assignment()
        got = drain([a, b], 200, got=got)
        everything = values(got[a.client_id]) + values(got[b.client_id])
        assert sorted(everything) == list(range(200))
        a.commit()
        b.commit()
        tps = [TopicPartition("orders", p) for p in range(4)]
        assert sum(a.committed(tps).values()) == 200
    finally:
        a.close()
        b.close()
    with Admin(bootstrap=node.bootstrap) as admin:
        d = admin.describe_group("g")
        assert d.state == "Empty" and sum(o.lag for o in d.offsets) == 0
        assert sum(o.committed for o in d.offsets) == 200


def test_restarted_member_resumes_from_commit_and_other_group_reads_all(node):
    produce(node.bootstrap, "t", 60, 2)
    with Consumer(bootstrap=node.bootstrap, group_id="g1", auto_offset_reset="earliest",
                  enable_auto_commit=False, **FAST) as c:
        c.subscribe(["t"])
        got = drain([c], 60)[c.client_id]
        # commit only the first 10 of each partition explicitly
        c.commit({TopicPartition("t", 0): 10, TopicPartition("t", 1): 10})
        assert len(got) == 60
    produce(node.bootstrap, "t", 20, 2, start=60)
    with Consumer(bootstrap=node.bootstrap, group_id="g1", auto_offset_reset="latest",
                  **FAST) as c:
        c.subscribe(["t"])
        again = values(drain([c], 60)[c.client_id])
        assert sorted(again) == list(range(20, 80))  # 10 per partition were committed
    with Consumer(bootstrap=node.bootstrap, group_id="other", auto_offset_reset="earliest",
                  **FAST) as c:
        c.subscribe(re.compile("^t$"))
        assert sorted(values(drain([c], 80)[c.client_id])) == list(range(80))


def test_auto_offset_reset_latest_and_none(node):
    produce(node.bootstrap, "r", 10, 1)
    with Consumer(bootstrap=node.bootstrap, group_id="late", auto_offset_reset="latest",
                  **FAST) as c:
        assigned = []
        c.subscribe(["r"], on_assign=assigned.append)
        deadline = time.monotonic() + 20
        while not c.assignment():
            assert time.monotonic() < deadline
            c.poll(0.05)
        assert c.position(TopicPartition("r", 0)) == 10
        assert assigned == [[TopicPartition("r", 0)]]
        produce(node.bootstrap, "r", 5, 1, start=10)
        assert values(drain([c], 5)[c.client_id]) == [10, 11, 12, 13, 14]
    with Consumer(bootstrap=node.bootstrap, group_id="strict", auto_offset_reset="none",
                  **FAST) as c:
        c.subscribe(["r"])
        with pytest.raises(NoOffsetForPartitionError):
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                c.poll(0.05)


def test_static_member_restart_keeps_assignment_without_rebalance(node):
    produce(node.bootstrap, "s", 4, 4)
    kw = dict(bootstrap=node.bootstrap, group_id="static", auto_offset_reset="earliest",
              session_timeout_ms=5000, heartbeat_interval_ms=100)
    a = Consumer(group_instance_id="inst-a", **kw)
    b = Consumer(group_instance_id="inst-b", **kw)
    try:
        a.subscribe(["s"])
        b.subscribe(["s"])
        deadline = time.monotonic() + 20
        # both members hold partitions: `a` alone holding all 4 is the state before b joined
        while len(a.assignment()) + len(b.assignment()) != 4 or not a.assignment() \
                or not b.assignment():
            assert time.monotonic() < deadline
            a.poll(0.05)
            b.poll(0.05)
        before = b.assignment()
        with Admin(bootstrap=node.bootstrap) as admin:
            generation_before = admin.describe_group("static")
        b.close()  # a static member does not leave: its slot waits a session timeout
        b = Consumer(group_instance_id="inst-b", **kw)
        b.subscribe(["s"])
        deadline = time.monotonic() + 10
        while b.assignment() != before:
            assert time.monotonic() < deadline
            b.poll(0.05)
            a.poll(0.05)
        with Admin(bootstrap=node.bootstrap) as admin:
            after = admin.describe_group("static")
        assert after.state == "Stable"
        assert {m.group_instance_id for m in after.members} == {"inst-a", "inst-b"}
        assert a.group_metadata()["generation_id"] == b.group_metadata()["generation_id"]
        assert len(generation_before.members) == 2
    finally:
        a.close()
        b.close()


def test_cooperative_member_keeps_partitions_when_another_joins(node):
    produce(node.bootstrap, "coop", 6, 6)
    kw = dict(bootstrap=node.bootstrap, group_id="coop", auto_offset_reset="earliest",
              partition_assignment_strategy="cooperative-sticky", **FAST)
    revoked: list[list[TopicPartition]] = []
    a = Consumer(**kw)
    b = Consumer(**kw)
    try:
        a.subscribe(["coop"], on_revoke=revoked.append)
        deadline = time.monotonic() + 20
        while len(a.assignment()) != 6:
            assert time.monotonic() < deadline
            a.poll(0.05)
        b.subscribe(["coop"])
        while len(b.assignment()) != 3 or len(a.assignment()) != 3:
            assert time.monotonic() < deadline, (a.assignment(), b.assignment())
            a.poll(0.05)
            b.poll(0.05)
        assert not a.assignment() & b.assignment()
        # a gave up exactly what b took, once, and never the partitions it kept
        assert len(revoked) == 1 and set(revoked[0]) == b.assignment()
    finally:
        a.close()
        b.close()


def test_member_that_stops_polling_loses_its_partitions(node):
    produce(node.bootstrap, "slow", 2, 2)
    kw = dict(bootstrap=node.bootstrap, group_id="slow", auto_offset_reset="earliest",
              max_poll_interval_ms=1500, **FAST)
    a = Consumer(**kw)
    b = Consumer(**kw)
    try:
        a.subscribe(["slow"])
        b.subscribe(["slow"])
        deadline = time.monotonic() + 20
        while len(a.assignment()) != 1 or len(b.assignment()) != 1:
            assert time.monotonic() < deadline
            a.poll(0.05)
            b.poll(0.05)
        # a stops polling; within max.poll.interval (+ a rebalance) b owns both partitions
        deadline = time.monotonic() + 15
        while len(b.assignment()) != 2:
            assert time.monotonic() < deadline, b.assignment()
            b.poll(0.05)
        lost = []
        a._coordinator._on_lost = lost.append
        a.poll(0.05)  # a learns it was dropped
        assert lost and not a.assignment() & b.assignment()
    finally:
        a.close()
        b.close()


def test_grown_topic_new_partitions_serve_and_reach_the_group(node):
    """Admin.create_partitions: the new partitions take records at once, and a subscribed
    group picks them up at its next metadata refresh (a rebalance, as in Kafka)."""
    produce(node.bootstrap, "growing", 20, 2)
    c = Consumer(bootstrap=node.bootstrap, group_id="grow", auto_offset_reset="earliest",
                 metadata_max_age_ms=300, **FAST)
    try:
        c.subscribe(["growing"])
        got = drain([c], 20)[c.client_id]
        with Admin(bootstrap=node.bootstrap) as admin:
            admin.create_partitions("growing", 5)
            assert len(admin.describe_topic("growing").partitions) == 5
        with Producer(bootstrap=node.bootstrap, acks="all") as p:
            for i in range(20, 35):
                p.send("growing", value=b"%d" % i, partition=2 + i % 3)
            p.flush()
        got = drain([c], 35, got={c.client_id: got})[c.client_id]
        assert sorted(values(got)) == list(range(35))
        assert c.assignment() == {TopicPartition("growing", p) for p in range(5)}
    finally:
        c.close()

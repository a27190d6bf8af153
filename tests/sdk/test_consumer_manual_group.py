"""A consumer with a group_id and assign() (Kafka's "simple consumer group") against a real
node: it resumes from the group's committed offsets, commits without joining the group
(generation -1, no member id), and falls back to auto_offset_reset only with no commit."""

from __future__ import annotations

import time

from qnode.sdk import Admin, Consumer, Producer, TopicPartition

TOPIC = "manual"
TP0, TP1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)


def _drain(c: Consumer, want: int, timeout: float = 20.0) -> list[tuple[int, int, bytes]]:
    got: list[tuple[int, int, bytes]] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got += [(r.partition, r.offset, r.value) for r in c.poll(0.5)]
    return got


def test_assign_resumes_from_the_commit_and_resets_where_there_is_none(node) -> None:
    with Admin(bootstrap=node.bootstrap) as admin:
        admin.create_topic(TOPIC, partitions=2)
    with Producer(bootstrap=node.bootstrap, linger_ms=0) as p:
        for i in range(10):
            for part in (0, 1):
                p.send(TOPIC, value=b"%d-%d" % (part, i), partition=part)
        p.flush(30)

    with Consumer(bootstrap=node.bootstrap, group_id="g1", auto_offset_reset="earliest",
                  enable_auto_commit=False) as first:
        first.assign([TP0])
        assert [o for _, o, _ in _drain(first, 10)] == list(range(10))
        first.commit({TP0: 7})  # no join: a simple-group commit
        assert first.committed(TP0) == 7
        assert first.group_metadata()["generation_id"] == -1

    # TP0 resumes at the commit; TP1 has none and follows auto_offset_reset.
    with Consumer(bootstrap=node.bootstrap, group_id="g1", auto_offset_reset="latest",
                  enable_auto_commit=False) as second:
        second.assign([TP0, TP1])
        assert second.position(TP0) == 7
        assert second.position(TP1) == 10
        got = _drain(second, 3)
        assert got == [(0, 7, b"0-7"), (0, 8, b"0-8"), (0, 9, b"0-9")]

    # earliest with no commit at all (another group): from the log start.
    with Consumer(bootstrap=node.bootstrap, group_id="g2", auto_offset_reset="earliest",
                  enable_auto_commit=False) as third:
        third.assign([TP1])
        got = _drain(third, 10)
        assert [o for _, o, _ in got] == list(range(10)) and got[0][2] == b"1-0"
        # An explicit seek_to_end is not overridden by a commit lookup.
        third.commit({TP1: 3})
        third.seek_to_end([TP1])
        assert third.position(TP1) == 10


def test_manual_consumer_auto_commits_its_positions(node) -> None:
    with Admin(bootstrap=node.bootstrap) as admin:
        admin.create_topic(TOPIC, partitions=2)
    with Producer(bootstrap=node.bootstrap, linger_ms=0) as p:
        for i in range(5):
            p.send(TOPIC, value=b"v%d" % i, partition=0)
        p.flush(30)
    with Consumer(bootstrap=node.bootstrap, group_id="g3", auto_offset_reset="earliest",
                  auto_commit_interval_ms=100) as c:
        c.assign([TP0])
        assert len(_drain(c, 5)) == 5
        deadline = time.monotonic() + 10
        while c.committed(TP0) != 5 and time.monotonic() < deadline:
            c.poll(0.2)  # periodic asynchronous auto-commit
        assert c.committed(TP0) == 5
        c.seek(TP0, 2)
    # close() commits the position it had (2) synchronously.
    with Consumer(bootstrap=node.bootstrap, group_id="g3", auto_offset_reset="latest",
                  enable_auto_commit=False) as again:
        again.assign([TP0])
        assert again.position(TP0) == 2

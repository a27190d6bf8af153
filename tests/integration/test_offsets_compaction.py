"""__consumer_offsets is a compacted topic, and a running node compacts it: after many commits
for one group and partition, older segments are cleaned (far fewer offset-commit records on
disk than commits) while the latest commit is what a consumer gets, before and after a
restart of the node."""

from __future__ import annotations

import os
import time
from pathlib import Path

import msgpack
from conftest import NodeProcess, wait_for

from qnode.sdk import Admin, Consumer, Producer, TopicPartition
from qnode.storage.batch_reader import iter_records
from qnode.storage.record_batch import valid_prefix

OFFSETS_DIR = "__consumer_offsets-0"
COMMITS = 400
RECORDS = 20
GROUP = "compacted-group"
TP = TopicPartition("orders", 0)


def commit_records_on_disk(data_dir: Path) -> list[int]:
    """Committed offsets of GROUP/TP in every segment file of the offsets partition, in log
    order (each file's batches, CRC-checked; the active file may end in reserved zeros)."""
    directory = data_dir / OFFSETS_DIR
    found = []
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".log"):
            continue
        data = (directory / name).read_bytes()
        end, _ = valid_prefix(data)
        for rec in iter_records(data[:end]):
            key = msgpack.unpackb(rec.key, raw=False)
            if key == [1, GROUP, TP.topic, TP.partition] and rec.value is not None:
                found.append(msgpack.unpackb(rec.value, raw=False)["offset"])
    return found


def first_record_offset(bootstrap: str) -> int:
    """Where a member of GROUP starts reading TP once the group assigns it: the committed
    offset (asserted to be what OffsetFetch answers, too)."""
    with Consumer(bootstrap=bootstrap, group_id=GROUP, enable_auto_commit=False,
                  auto_offset_reset="earliest", session_timeout_ms=2000,
                  heartbeat_interval_ms=100) as c:
        assert c.committed(TP) == last_commit()
        c.subscribe([TP.topic])
        deadline = time.monotonic() + 15
        while True:
            got = c.poll(0.2)
            if got:
                return got[0].offset
            assert time.monotonic() < deadline, "no record fetched"


def last_commit() -> int:
    return (COMMITS - 1) % RECORDS


def test_offsets_topic_is_compacted_on_a_live_node_and_keeps_the_latest(node_factory):
    node: NodeProcess = node_factory(workers=1, config={"offsets.topic.num.partitions": 1})
    with Admin(bootstrap=node.bootstrap) as admin, \
            Producer(bootstrap=node.bootstrap, acks="all") as p:
        admin.create_topic(TP.topic, partitions=1)
        for i in range(RECORDS):
            p.send(TP.topic, value=b"%d" % i, partition=0)
        p.flush()
        with Consumer(bootstrap=node.bootstrap, group_id=GROUP, enable_auto_commit=False) as c:
            c.commit({TP: 0})  # creates __consumer_offsets (FindCoordinator)
            # No node.toml key sets the offsets topic's segment size (Kafka:
            # offsets.topic.segment.bytes): alter the topic, as an operator would.
            admin.alter_topic_config("__consumer_offsets", {"segment.bytes": "4096"})
            for i in range(COMMITS):
                c.commit({TP: i % RECORDS})
        written = admin.describe_topic("__consumer_offsets").partitions[0].high_watermark
    assert written >= COMMITS + 1  # every commit is a record of the offsets log
    data_dir = node.data_dir

    def compacted() -> list[int] | None:
        try:
            found = commit_records_on_disk(data_dir)
        except FileNotFoundError:  # a cleaner swap renamed a file under the listing
            return None
        return found if len(found) < COMMITS // 4 else None

    found = wait_for(compacted, 30, "the offsets partition to be compacted", interval=0.2)
    assert found[-1] == last_commit()
    assert first_record_offset(node.bootstrap) == last_commit()

    node.stop()
    node.restart()
    assert first_record_offset(node.bootstrap) == last_commit()
    after = commit_records_on_disk(data_dir)
    assert len(after) < COMMITS // 4 and after[-1] == last_commit(), (written, len(after))

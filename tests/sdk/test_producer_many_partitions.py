"""Producer against a real node with many partitions and a tight buffer.memory: batches
that grow their reservation, wait for memory and are held past linger.ms lose nothing and
keep every partition's order."""

from __future__ import annotations

from collections import defaultdict

from conftest import NodeProcess

from qnode.sdk import Admin, Consumer, Producer, TopicPartition
from qnode.sdk.partitioner import partition_for_key

PARTITIONS = 60
RECORDS = 6000


def test_keyed_records_over_many_partitions_with_little_memory(node: NodeProcess) -> None:
    with Admin(node.bootstrap) as admin:
        admin.create_topic("many", PARTITIONS, timeout=60)
    # 60 open batches of 4 KiB already take 240 KiB of the 256 KiB pool: grows must wait
    # for answers, and batch.size reservations (64 KiB each) would have allowed only 4
    with Producer(node.bootstrap, acks=1, linger_ms=2, batch_size=65536,
                  buffer_memory=256 * 1024, max_block_ms=30000) as p:
        futures = []
        for i in range(RECORDS):
            key = b"k%d" % (i % 500)
            futures.append((key, i, p.send("many", b"v%07d" % i + b"x" * 100, key=key)))
        p.flush(60)
        metrics = p.metrics()
    placed = {}
    for key, i, fut in futures:
        md = fut.result(0)
        assert md.partition == partition_for_key(key, PARTITIONS)
        placed[i] = (md.partition, md.offset)
    assert metrics["buffered"] == 0 and metrics["incomplete"] == 0
    assert metrics["batches"] < RECORDS  # records did share batches

    with Consumer(bootstrap=node.bootstrap, auto_offset_reset="earliest") as c:
        c.assign([TopicPartition("many", q) for q in range(PARTITIONS)])
        got: dict[int, list[int]] = defaultdict(list)
        seen = 0
        for _ in range(200):
            for r in c.poll(1.0, max_records=5000):
                got[r.partition].append(int(r.value[1:8]))
                assert placed[int(r.value[1:8])] == (r.partition, r.offset)
                seen += 1
            if seen >= RECORDS:
                break
    assert seen == RECORDS
    for q, ids in got.items():
        assert ids == sorted(ids), f"partition {q} out of send order"


def test_keyless_sticky_over_many_partitions_fills_batches(node: NodeProcess) -> None:
    with Admin(node.bootstrap) as admin:
        admin.create_topic("sticky", 200, timeout=60)
    with Producer(node.bootstrap, acks=1, linger_ms=50, batch_size=16384) as p:
        futs = [p.send("sticky", b"x" * 100) for _ in range(20000)]
        p.flush(60)
        batches = p.metrics()["batches"]
    assert all(f.result(0).offset >= 0 for f in futs)
    # ~140 records of 112 B fill a 16 KiB batch; the first holds the warm-up only
    assert batches <= 20000 // 100

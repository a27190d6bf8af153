"""file.delete.delay.ms on a live node: segments that DeleteRecords removes are renamed
`.deleted` at once (out of the log, reads go on from the new log start) and unlinked by the
worker once the topic's delay has passed."""

from __future__ import annotations

import os
import time

from conftest import NodeProcess, wait_for

from qnode.sdk import Admin, Consumer, Producer, TopicPartition

DELAY_MS = 3000
TP = TopicPartition("delayed", 0)


def names(node: NodeProcess) -> list[str]:
    return sorted(os.listdir(node.data_dir / f"{TP.topic}-{TP.partition}"))


def test_delete_records_renames_then_unlinks_after_the_delay(node_factory):
    node: NodeProcess = node_factory(workers=1)
    with Admin(bootstrap=node.bootstrap) as admin:
        admin.create_topic(TP.topic, partitions=1, config={
            "segment.bytes": "1024", "file.delete.delay.ms": str(DELAY_MS)})
        with Producer(bootstrap=node.bootstrap, acks="all", linger_ms=0) as p:
            for i in range(40):
                p.send(TP.topic, value=b"%03d" % i + b"x" * 100, partition=0).result()
        before = [n for n in names(node) if n.endswith(".log")]
        assert len(before) > 4
        assert admin.delete_records({TP: 30}) == {TP: 30}
        removed_at = time.monotonic()
        after = names(node)
    renamed = [n for n in after if n.endswith(".log.deleted")]
    assert renamed, after  # renamed at once, not unlinked
    assert not {n.removesuffix(".deleted") for n in renamed} & set(after)
    with Consumer(bootstrap=node.bootstrap, auto_offset_reset="earliest") as c:
        c.assign([TP])
        deadline = time.monotonic() + 15
        got: list = []
        while len(got) < 10:
            got += c.poll(0.2)
            assert time.monotonic() < deadline, f"only {len(got)} records"
    assert [r.offset for r in got][:10] == list(range(30, 40))
    time.sleep(max(0.0, removed_at + 1.0 - time.monotonic()))
    assert set(renamed) <= set(names(node))  # a second in: still there (delay 3 s)
    wait_for(lambda: not [n for n in names(node) if n.endswith(".deleted")], 15,
             "the delayed unlink of the removed segments")

"""kill -9 of the worker that holds a group's `__consumer_offsets` partition: a commit made
right after completes once the worker is back — the coordinator fails the Produce the dead
worker took with it at once (socket monitor / re-registration), it does not wait out
offsets.commit.timeout.ms — and the value committed is the one read back."""

from __future__ import annotations

import re
import time

import pytest
from conftest import free_port

from qnode.loadtest.proc_monitor import offsets_endpoint
from qnode.sdk import Admin, Consumer, TopicPartition

GROUP = "g-kill9"
TP = TopicPartition("t", 0)
# Well under offsets.commit.timeout.ms (5 s) + 1 s, what a lost commit used to wait: a commit
# stuck behind the dead worker cannot succeed within it.
CLIENT_TIMEOUT_MS = 4000


def _worker_of(node, endpoint: str) -> int:
    """The worker id serving on `endpoint`, from the node log's "serving on" lines."""
    found = re.findall(r"worker (\d+) of node \d+ serving on (\S+)", node.log_path.read_text())
    ids = {ep: int(w) for w, ep in found}
    assert endpoint in ids, f"{endpoint} not in {ids}"
    return ids[endpoint]


def _wait_endpoint(admin: Admin, not_this: str | None = None) -> str:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ep = offsets_endpoint(admin, GROUP)
        if ep and ep != not_this:
            return ep
        time.sleep(0.05)
    pytest.fail("no endpoint for the group's offsets partition")


@pytest.mark.parametrize("port_base", [False, True], ids=["new-port", "same-port"])
def test_commit_after_offsets_worker_kill9(node_factory, port_base: bool) -> None:
    config = {"offsets.topic.num.partitions": 2}
    if port_base:
        config["worker.port.base"] = free_port()  # the restarted worker binds the same port
    node = node_factory(workers=2, config=config)
    with Admin(bootstrap=node.bootstrap) as admin, \
            Consumer(bootstrap=node.bootstrap, group_id=GROUP, enable_auto_commit=False,
                     request_timeout_ms=CLIENT_TIMEOUT_MS, retry_backoff_ms=50) as consumer:
        admin.create_topic("t", partitions=1)
        consumer.assign([TP])
        consumer.commit({TP: 5})  # the offsets topic exists and its partition is loaded
        assert consumer.committed(TP) == 5
        endpoint = _wait_endpoint(admin)
        worker = _worker_of(node, endpoint)

        killed = node.kill_child("worker", worker)
        consumer.commit({TP: 7})  # raises when it cannot complete within CLIENT_TIMEOUT_MS

        assert consumer.committed(TP) == 7
        with Consumer(bootstrap=node.bootstrap, group_id=GROUP) as fresh:
            assert fresh.committed(TP) == 7
        # the commit was stored by the restarted worker, not the one killed before it
        assert node.child_pids().get(f"worker {worker}") not in (None, killed)

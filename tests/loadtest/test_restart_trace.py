"""restart_trace.py: the node-log timeline of a killed worker is read from the real formats."""

from __future__ import annotations

from datetime import datetime

from qnode.loadtest.restart_trace import NODE_EVENTS, node_events

LOG = """\
2026-12-01 03:18:04,100 coordinator INFO qnode.coordinator.worker_api: worker 0 applied the metadata log up to 61
2026-12-01 03:18:05,537 supervisor WARNING qnode.node.supervisor: worker 1 (pid 19362) exited with signal SIGKILL after 59.1 s; restarting in 200 ms (restart #1)
2026-12-01 03:18:05,738 supervisor INFO qnode.node.supervisor: started worker 1 (pid 20075)
2026-12-01 03:18:06,159 worker-1 INFO qnode.node.worker: worker 1 of node 0 serving on tcp://127.0.0.1:46089
2026-12-01 03:18:06,172 coordinator INFO qnode.coordinator.worker_api: worker 1 (pid 20075) serves on tcp://127.0.0.1:46089
2026-12-01 03:18:06,300 coordinator INFO qnode.coordinator.worker_api: worker 0 applied the metadata log up to 62
2026-12-01 03:18:06,581 coordinator INFO qnode.coordinator.worker_api: worker 1 applied the metadata log up to 62
"""  # noqa: E501 - the node's lines as they are


def test_timeline_of_the_killed_worker() -> None:
    kill = datetime(2026, 12, 1, 3, 18, 5, 530000).timestamp()
    ev = node_events(LOG, 1, kill)
    assert list(ev) == [label for label, _ in NODE_EVENTS]
    assert ev == {"supervisor saw the exit": 0.007, "worker restarted": 0.208,
                  "worker serving": 0.629, "coordinator registered it": 0.642,
                  "worker applied metadata": 1.051}  # worker 1's line, not worker 0's


def test_a_line_that_is_not_there_is_not_guessed() -> None:
    kill = datetime(2026, 12, 1, 3, 18, 5, 530000).timestamp()
    assert all(v is None for v in node_events(LOG, 2, kill).values())
    # Lines from before the kill do not count.
    assert node_events(LOG, 1, kill + 10)["worker restarted"] is None

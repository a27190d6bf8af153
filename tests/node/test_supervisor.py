"""The supervisor through `qnode start`: ready line, lock refusal, restarts, clean stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess

from conftest import free_port, process_alive, wait_for

from qnode.transport.api import ApiKey
from qnode.transport.errors import ErrorCode


def test_start_prints_ready_and_sigterm_exits_zero(node_factory) -> None:
    n = node_factory(workers=2)
    assert any(
        f"qnode node 0 ready on {n.bootstrap} (2 workers)" in line for line in n.stdout_lines
    )
    children = n.child_pids()
    assert set(children) == {"coordinator", "worker 0", "worker 1"}
    assert n.shm_names(), "workers publish their shm tables"
    assert n.stop() == 0
    assert not any(process_alive(p) for p in children.values())
    assert n.shm_names() == [], "a clean stop leaves no shm name behind"


def test_second_node_on_same_data_dir_is_refused(node_factory) -> None:
    n = node_factory(workers=1)
    other = free_port()
    cmd = [a if a != n.bootstrap else f"tcp://127.0.0.1:{other}" for a in n.command()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "in use by another qnode node" in lines[0]
    assert f"pid {n.pid}" in lines[0]
    assert n.child_pids().keys() == {"coordinator", "worker 0"}, "the first node is untouched"
    n.stop()


def test_data_dir_of_another_node_id_is_refused(node_factory) -> None:
    n = node_factory(workers=1)
    n.stop()
    cmd = n.command()
    cmd[cmd.index("--node-id") + 1] = "7"
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "belongs to node 0, not node 7" in r.stderr


def test_killed_worker_is_restarted_and_reregisters(node, raw_client_factory) -> None:
    client = raw_client_factory(node.bootstrap)
    created = client.call(
        ApiKey.CREATE_TOPICS,
        {"topics": [{"name": "t", "num_partitions": 2, "replication_factor": 1, "configs": {}}]},
    )
    assert created.body["topics"][0]["error"] == 0

    def endpoints() -> dict[int, str]:
        md = client.call(ApiKey.METADATA, {"topics": ["t"], "include_offsets": True}).body
        return {p["worker"]: p["endpoint"] for p in md["topics"][0]["partitions"]}

    before = endpoints()
    old = node.kill_child("worker", 1)
    new = node.wait_child_restarted("worker", old, worker_id=1)
    assert new != old
    wait_for(lambda: endpoints()[1] != before[1], 20, "worker 1's new endpoint")
    assert endpoints()[0] == before[0], "worker 0 was not touched"
    assert f"worker 1 (pid {old}) exited with signal SIGKILL" in node.log_text()
    node.stop()


def test_killed_coordinator_is_restarted_with_metadata_intact(node, raw_client_factory) -> None:
    client = raw_client_factory(node.bootstrap)
    client.call(
        ApiKey.CREATE_TOPICS,
        {
            "topics": [
                {
                    "name": "keep",
                    "num_partitions": 3,
                    "replication_factor": 1,
                    "configs": {"retention.ms": "1234"},
                }
            ]
        },
    )
    old = node.kill_child("coordinator")
    node.wait_child_restarted("coordinator", old)

    def topics() -> list[str] | None:
        resp = client.try_call(ApiKey.METADATA, {"topics": None}, timeout_ms=500)
        return None if resp is None else [t["name"] for t in resp.body["topics"]]

    assert wait_for(topics, 20, "the restarted coordinator") == ["keep"]
    desc = client.call(
        ApiKey.DESCRIBE_CONFIGS,
        {"resources": [{"type": "topic", "name": "keep", "keys": ["retention.ms"]}]},
    ).body
    assert desc["resources"][0]["configs"][0]["value"] == "1234"
    node.stop()


def test_coordinator_that_cannot_serve_stops_the_node(node_factory, tmp_path) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    try:
        n = node_factory(start=False, workers=1, port=blocker.getsockname()[1])
        proc = n.spawn()
        assert proc.wait(60) == 1
        assert "the coordinator exited" in n.log_text()
        assert n.child_pids() == {}
    finally:
        blocker.close()


def test_killed_supervisor_takes_its_children_down(node_factory) -> None:
    n = node_factory(workers=2)
    children = list(n.child_pids().values())
    os.kill(n.pid, signal.SIGKILL)
    n.proc.wait(10)
    wait_for(lambda: not any(process_alive(p) for p in children), 20, "orphans to exit")
    n.restart()  # the lock is free again once the last child is gone
    n.stop()


def test_dead_worker_is_unavailable_until_restarted_with_backoff(
    node_factory, raw_client_factory
) -> None:
    n = node_factory(workers=2, config={"supervisor.restart.backoff.ms": 1500})
    client = raw_client_factory(n.bootstrap)
    client.call(
        ApiKey.CREATE_TOPICS,
        {"topics": [{"name": "t", "num_partitions": 2, "replication_factor": 1, "configs": {}}]},
    )

    def errors() -> dict[int, int]:
        md = client.call(ApiKey.METADATA, {"topics": ["t"]}).body
        return {p["worker"]: p["error"] for p in md["topics"][0]["partitions"]}

    assert errors() == {0: 0, 1: 0}
    assert any(name.endswith(".w0") for name in n.shm_names())
    old = n.kill_child("worker", 0)
    wait_for(
        lambda: errors() == {0: ErrorCode.LEADER_NOT_AVAILABLE, 1: 0},
        1.4,
        "worker 0's partition to be reported unavailable",
    )
    assert not any(name.endswith(".w0") for name in n.shm_names()), (
        "the dead worker's shm table is unlinked before its restart"
    )
    assert any(name.endswith(".w1") for name in n.shm_names())
    new = n.wait_child_restarted("worker", old, worker_id=0)
    wait_for(lambda: errors() == {0: 0, 1: 0}, 20, "worker 0 serving again")
    n.kill_child("worker", 0)
    wait_for(lambda: f"worker 0 (pid {new}) exited" in n.log_text(), 10, "the second crash")
    assert "restarting in 1500 ms (restart #1)" in n.log_text()
    assert "restarting in 3000 ms (restart #2)" in n.log_text(), "backoff doubles in a streak"
    n.stop()  # stopping while a restart is pending is clean too


def test_sigint_stops_cleanly_like_ctrl_c(node_factory) -> None:
    n = node_factory(workers=1)
    children = list(n.child_pids().values())
    n.proc.send_signal(signal.SIGINT)
    assert n.proc.wait(30) == 0
    assert not any(process_alive(p) for p in children)
    assert "got SIGINT: stopping the node" in n.log_text()
    assert n.log_text().count("exited with exit code 0") == 2, "coordinator and worker"

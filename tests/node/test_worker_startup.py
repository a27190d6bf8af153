"""A worker's start-up: what its hello says, logs opened a slice at a time (open partitions are
served meanwhile, ones not open yet answer a retriable error), SIGTERM honoured mid-opening."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest
from worker_harness import Client, MetadataFeed, WorkerProcess, make_batch

from qnode.transport.api import ApiKey
from qnode.transport.doorbell import LocalListener
from qnode.transport.errors import ErrorCode

PARTITIONS = 200


def _list_offsets_error(client: Client, topic: str, partition: int) -> int:
    body = {"topics": [{"name": topic, "partitions": [{"partition": partition, "timestamp": -1}]}]}
    return client.call(ApiKey.LIST_OFFSETS, body).body["topics"][0]["partitions"][0]["error"]


def test_hello_names_node_and_absolute_data_dir(
    feed: MetadataFeed, worker: WorkerProcess, tmp_path: Path
) -> None:
    hello = feed.hellos[-1]
    assert hello["node_id"] == 0 and hello["worker_id"] == 0
    assert hello["data_dir"] == os.path.abspath(tmp_path / "data")
    assert os.path.isabs(hello["data_dir"])
    assert hello["pid"] == worker.proc.pid


def test_sigterm_while_opening_logs_exits_cleanly_and_keeps_data(
    feed: MetadataFeed, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    end = feed.add_topic("many", partitions=PARTITIONS)
    w = WorkerProcess(feed, data).start()
    try:
        feed.wait_applied(0, end, timeout=60)
        client = Client(w.endpoint)
        try:
            assert client.produce("many", 0, make_batch([b"kept"]))["base_offset"] == 0
        finally:
            client.close()
        assert w.stop(signal.SIGKILL) == -signal.SIGKILL  # recovery needed on the next start
        # restart: partition 0 opens first; stop while the other logs are still being opened
        before = len(feed.hellos)
        w = WorkerProcess(feed, data).start()
        client = Client(w.endpoint)
        try:
            client.wait_ready("many", 0, timeout=30)
            last = _list_offsets_error(client, "many", PARTITIONS - 1)
            opening = feed.applied.get(0, -1) < end  # it has not said "all applied" yet
            if opening:  # not open yet: retriable, never UNKNOWN_*
                assert last == ErrorCode.NOT_LEADER_OR_FOLLOWER
                assert ErrorCode(last).retriable
            else:  # a fast box opened them all already
                assert last == 0
        finally:
            client.close()
        assert w.stop(signal.SIGTERM, timeout=20) == 0, w.output()
        assert len(feed.hellos) == before + 1
        # nothing lost: a third start serves the record produced before the kill
        w = WorkerProcess(feed, data).start()
        client = Client(w.endpoint)
        try:
            client.wait_ready("many", 0, timeout=30)
            part, batch = client.fetch("many", 0, 0)
            assert part["error"] == 0 and part["high_watermark"] == 1 and b"kept" in batch
            feed.wait_applied(0, end, timeout=60)
            assert _list_offsets_error(client, "many", PARTITIONS - 1) == 0
        finally:
            client.close()
        assert w.stop(signal.SIGTERM, timeout=20) == 0, w.output()
    finally:
        w.kill()


def test_hello_again_as_soon_as_a_restarted_coordinator_is_reachable(tmp_path: Path) -> None:
    # a 60 s long-poll: the fallback timer (grace past the max wait) cannot be what re-hellos
    first = MetadataFeed()
    port = int(first.endpoint.rsplit(":", 1)[1])
    end = first.add_topic("t", partitions=2)
    records = list(first.records)
    w = WorkerProcess(first, tmp_path / "data", metadata_max_wait_ms=60_000).start()
    second = None
    try:
        first.wait_applied(0, end)
        first.close()  # the coordinator dies with the worker's long-poll parked on it
        second = MetadataFeed(port)
        second.append(*({k: v for k, v in r.items() if k not in ("offset", "term")}
                        for r in records))
        end2 = second.add_topic("u")
        second.wait_applied(0, end2, timeout=15)  # hello again, then followed the new log
        assert second.hellos and second.hellos[-1]["worker_id"] == 0
        client = Client(w.endpoint)
        try:
            client.wait_ready("u", 0)
            assert client.produce("u", 0, make_batch([b"after"]))["base_offset"] == 0
        finally:
            client.close()
        assert w.stop(signal.SIGTERM) == 0, w.output()
    finally:
        w.kill()
        if second is not None:
            second.close()


def test_a_worker_whose_local_socket_name_is_taken_refuses_to_start(
    feed: MetadataFeed, tmp_path: Path
) -> None:
    # Same-host producers send records to whoever holds the name: a worker that went on
    # without it would leave them to another process.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    squatter = LocalListener(f"tcp://127.0.0.1:{port}")
    try:
        w = WorkerProcess(feed, tmp_path / "data", port=port)
        try:
            with pytest.raises(RuntimeError, match="did not say hello"):
                w.start(timeout=10)
            assert w.proc is not None and w.proc.wait(10) != 0
            assert "local socket name of tcp://127.0.0.1:" in w.output()
            assert "held by another process" in w.output()
        finally:
            w.kill()
            w.unlink_shm()
    finally:
        squatter.close()

"""Workers inside a real node (`qnode start`: supervisor, real coordinator): placement from
the metadata log, produce/fetch on the endpoints the metadata names, long-poll, a worker
killed -9 mid-produce that the supervisor restarts with every acknowledged record, and
worker.busy.poll.us (serving as before, spinning only after a request)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from conftest import proc_stat
from worker_harness import Client, fetch_reply, make_batch

from qnode.node.shm_table import ShmTableReader, shm_name
from qnode.storage.batch_reader import read_batches
from qnode.transport.api import ApiKey


def _create(
    boot: Client, topic: str, partitions: int, configs: dict[str, str] | None = None
) -> dict[int, dict[str, Any]]:
    res = boot.call(
        ApiKey.CREATE_TOPICS,
        {
            "topics": [
                {
                    "name": topic,
                    "num_partitions": partitions,
                    "replication_factor": 1,
                    "configs": configs or {},
                }
            ],
            "validate_only": False,
        },
        timeout=30,
    )
    assert res.body["topics"][0]["error"] == 0, res.body
    return _partitions(boot, topic)


def _partitions(boot: Client, topic: str) -> dict[int, dict[str, Any]]:
    md = boot.call(ApiKey.METADATA, {"topics": [topic], "include_offsets": True})
    t = md.body["topics"][0]
    assert t["error"] == 0, t
    return {p["partition"]: p for p in t["partitions"]}


def _values(data: bytes) -> list[bytes]:
    return [r.value for b in read_batches(data) for r in b]


def test_produce_fetch_long_poll_through_a_real_node(node) -> None:
    boot = Client(node.bootstrap)
    try:
        parts = _create(boot, "real", 2)
        assert {p["worker"] for p in parts.values()} == {0, 1}  # spread over both workers
        for pid, p in parts.items():
            c = Client(p["endpoint"])
            try:
                # created means applied by the workers: no waiting needed
                assert c.produce("real", pid, make_batch([b"x%d" % pid]))["error"] == 0
                consumer = Client(p["endpoint"])
                consumer.send(ApiKey.FETCH, consumer.fetch_body("real", pid, 1, max_wait_ms=5000))
                time.sleep(0.1)
                t0 = time.monotonic()
                c.produce("real", pid, make_batch([b"y%d" % pid]))
                resp = consumer.recv(timeout=5)
                assert time.monotonic() - t0 < 2
                assert _values(fetch_reply(resp)[1]) == [b"y%d" % pid]
                consumer.close()
            finally:
                c.close()
        # the coordinator reads offsets from the workers' shm tables
        after = _partitions(boot, "real")
        assert all(p["high_watermark"] == 2 for p in after.values())
        with ShmTableReader(shm_name(0, str(node.data_dir), parts[0]["worker"])) as shm:
            assert shm.get("real", 0).log_end_offset == 2
    finally:
        boot.close()


def test_worker_kill_9_mid_produce_keeps_acknowledged_records(node_factory) -> None:
    n = node_factory(workers=1, config={"flush.messages": 1})
    boot = Client(n.bootstrap)
    try:
        ep = _create(boot, "durable", 1)[0]["endpoint"]
        c = Client(ep)
        acked: list[bytes] = []
        stop = threading.Event()

        def produce() -> None:
            i = 0
            while not stop.is_set():
                v = b"r%06d" % i
                try:
                    p = c.produce("durable", 0, make_batch([v]), timeout=1.0)
                except TimeoutError:
                    return
                if p["error"] == 0:
                    acked.append(v)
                i += 1

        th = threading.Thread(target=produce)
        th.start()
        time.sleep(0.4)
        old = n.kill_child("worker", 0)
        stop.set()
        th.join(15)
        c.close()
        n.wait_child_restarted("worker", old, 0)
        assert len(acked) > 5
        deadline = time.monotonic() + 20
        while True:  # the restarted worker may bind a new port: ask the metadata again
            ep = _partitions(boot, "durable")[0]["endpoint"]
            c2 = Client(ep)
            try:
                part, data = c2.fetch("durable", 0, 0, max_bytes=64 << 20, max_wait_ms=0)
                if part["error"] == 0:
                    break
            except TimeoutError:
                pass
            finally:
                c2.close()
            assert time.monotonic() < deadline, "restarted worker never served the partition"
            time.sleep(0.1)
        values = _values(data)
        assert values[: len(acked)] == acked
    finally:
        boot.close()


def _cpu_seconds(pid: int) -> float:
    fields = proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_busy_poll_serves_long_polls_and_spins_only_after_requests(node_factory) -> None:
    n = node_factory(workers=1, config={"worker.busy.poll.us": 400_000})
    boot = Client(n.bootstrap)
    try:
        ep = _create(boot, "busy", 1)[0]["endpoint"]
        worker = n.child_pids()["worker 0"]
        c = Client(ep)
        consumer = Client(ep)
        try:
            # a long poll parked while the worker spins is still answered by the append...
            consumer.send(ApiKey.FETCH, consumer.fetch_body("busy", 0, 0, max_wait_ms=5000))
            time.sleep(0.1)
            assert c.produce("busy", 0, make_batch([b"a"]))["error"] == 0
            part, data = fetch_reply(consumer.recv(timeout=5))
            assert _values(data) == [b"a"]
            # ...and one nothing satisfies still waits out its max wait, not less
            t0 = time.monotonic()
            consumer.send(ApiKey.FETCH, consumer.fetch_body("busy", 0, 1, max_wait_ms=300))
            part, data = fetch_reply(consumer.recv(timeout=5))
            assert part["error"] == 0 and data == b"" and time.monotonic() - t0 >= 0.29
            # the worker spins after a request (CPU time grows while no request comes)...
            time.sleep(0.5)  # past the window: idle again
            before = _cpu_seconds(worker)
            assert c.produce("busy", 0, make_batch([b"b"]))["error"] == 0
            time.sleep(0.3)
            spun = _cpu_seconds(worker) - before
            assert spun >= 0.05, f"worker used {spun:.3f} s of CPU in the busy-poll window"
            # ...and then sleeps: nearly no CPU in the next idle half second
            time.sleep(0.3)
            before = _cpu_seconds(worker)
            time.sleep(0.5)
            idle = _cpu_seconds(worker) - before
            assert idle < 0.1, f"worker used {idle:.3f} s of CPU while idle"
        finally:
            c.close()
            consumer.close()
    finally:
        boot.close()
    assert n.stop() == 0  # SIGTERM while spinning or not: a clean stop

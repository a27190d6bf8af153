"""The worker endpoint under bad input and faults: garbage, truncated multipart, disconnects,
kill -9 during produce. Each time the worker answers (or drops only the bad peer) and keeps
serving, and acknowledged data survives."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import msgpack
import pytest
import zmq
from worker_harness import Client, MetadataFeed, WorkerProcess, make_batch

from qnode.storage.batch_reader import read_batches
from qnode.transport.api import UNPARSEABLE_API_KEY, ApiKey
from qnode.transport.errors import ErrorCode
from qnode.transport.frame import decode_response, encode_request_header

# `feed` and `worker` are the harness's fixtures (tests/node/worker_harness.py, via conftest).


def _raw(endpoint: str) -> tuple[zmq.Context, zmq.Socket]:
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    return ctx, s


def _assert_serving(endpoint: str) -> None:
    c = Client(endpoint)
    try:
        assert c.call(ApiKey.API_VERSIONS, {}, timeout=5).body["error"] == 0
    finally:
        c.close()


GOOD_HDR = encode_request_header(ApiKey.PRODUCE, 0, 42, "raw")


@pytest.mark.parametrize(
    "frames, expect_key, expect_corr",
    [
        ([b""], UNPARSEABLE_API_KEY, 0),
        ([os.urandom(3)], UNPARSEABLE_API_KEY, 0),
        ([b"\xde\xad" + os.urandom(200), b"\x00"], UNPARSEABLE_API_KEY, 0),
        ([GOOD_HDR], ApiKey.PRODUCE, 42),  # truncated multipart: no body
        ([GOOD_HDR, os.urandom(64)], ApiKey.PRODUCE, 42),
        ([GOOD_HDR, msgpack.packb({"acks": 1})], ApiKey.PRODUCE, 42),  # topics missing
        ([GOOD_HDR, msgpack.packb({"acks": 1, "topics": [{"name": 1}]})], ApiKey.PRODUCE, 42),
        (
            [encode_request_header(ApiKey.FETCH, 0, 43), msgpack.packb({"topics": "x"})],
            ApiKey.FETCH,
            43,
        ),
        ([encode_request_header(ApiKey.PRODUCE, 9, 44), b""], ApiKey.PRODUCE, 44),
        ([encode_request_header(777, 0, 45), b""], 777, 45),
    ],
)
def test_garbage_and_truncated_requests_get_error_responses(
    worker: WorkerProcess, frames: list[bytes], expect_key: int, expect_corr: int
) -> None:
    ctx, s = _raw(worker.endpoint)
    try:
        s.send_multipart(frames)
        assert s.poll(5000), "no answer: the worker must answer every request"
        resp = decode_response(s.recv_multipart())
        assert resp.error_code in (ErrorCode.INVALID_REQUEST, ErrorCode.UNSUPPORTED_VERSION)
        assert resp.body["error"] == resp.error_code and resp.body["message"]
        assert (resp.api_key, resp.correlation_id) == (expect_key, expect_corr)
    finally:
        s.close(0)
        ctx.term()
    _assert_serving(worker.endpoint)


def test_random_garbage_storm_then_still_serving(feed: MetadataFeed, worker: WorkerProcess) -> None:
    feed.add_topic("t")
    ctx, s = _raw(worker.endpoint)
    try:
        for i in range(300):
            n = 1 + i % 5
            s.send_multipart([os.urandom(i % 40) for _ in range(n)])
        answered = 0
        while s.poll(2000):
            s.recv_multipart()
            answered += 1
            if answered == 300:
                break
        assert answered == 300
    finally:
        s.close(0)
        ctx.term()
    c = Client(worker.endpoint)
    try:
        c.wait_ready("t", 0)
        assert c.produce("t", 0, make_batch([b"ok"]))["error"] == 0
    finally:
        c.close()


def test_client_disconnects_mid_request(feed: MetadataFeed, worker: WorkerProcess) -> None:
    feed.add_topic("t")
    c = Client(worker.endpoint)
    c.wait_ready("t", 0)
    # a parked fetch whose client goes away, and a produce sent just before closing
    gone = Client(worker.endpoint)
    gone.send(ApiKey.FETCH, gone.fetch_body("t", 0, 0, max_wait_ms=300))
    body = {"acks": 1, "topics": [{"name": "t", "partitions": [{"partition": 0, "frame": 0}]}]}
    gone.send(ApiKey.PRODUCE, body, [make_batch([b"x" * 100_000])])
    gone.close()
    # a peer that disconnects in the middle of a multipart message it is still sending
    ctx, s = _raw(worker.endpoint)
    s.send(GOOD_HDR, zmq.SNDMORE)
    s.close(0)
    ctx.term()
    time.sleep(0.5)  # the parked fetch expires and its answer is dropped
    try:
        assert c.produce("t", 0, make_batch([b"after"]))["error"] == 0
        _, data = c.fetch("t", 0, 0)
        values = [r.value for b in read_batches(data) for r in b]
        assert values[-1] == b"after"
    finally:
        c.close()


def test_kill_9_during_produce_keeps_acknowledged_records(
    feed: MetadataFeed, tmp_path: Path
) -> None:
    """flush.messages=1: every acks=1 answer means the batch reached the disk."""
    w = WorkerProcess(feed, tmp_path / "data").start()
    acked: list[bytes] = []
    try:
        feed.add_topic("t", configs={"flush.messages": "1"})
        c = Client(w.endpoint)
        c.wait_ready("t", 0)
        stop = threading.Event()

        def produce() -> None:
            i = 0
            while not stop.is_set():
                v = b"r%06d" % i
                try:
                    p = c.produce("t", 0, make_batch([v]), acks=1, timeout=1.0)
                except TimeoutError:
                    return
                if p["error"] == 0:
                    acked.append(v)
                i += 1

        th = threading.Thread(target=produce)
        th.start()
        time.sleep(0.5)
        os.kill(w.proc.pid, signal.SIGKILL)
        w.proc.wait(10)
        stop.set()
        th.join(15)
        c.close()
        w.unlink_shm()
        assert len(acked) > 10
        w2 = WorkerProcess(feed, tmp_path / "data").start()
        try:
            c2 = Client(w2.endpoint)
            c2.wait_ready("t", 0)
            part, data = c2.fetch("t", 0, 0, max_bytes=64 << 20)
            values = [r.value for b in read_batches(data) for r in b]
            assert values[: len(acked)] == acked  # every acknowledged record, in order
            c2.close()
        finally:
            assert w2.stop() == 0
    finally:
        w.kill()

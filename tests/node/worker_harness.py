"""Helpers for the worker tests: a metadata-log stand-in, a worker child process, a raw client.

`MetadataFeed` answers WorkerHello and MetadataLogFetch (long-poll, no sleeps) from a list of
records the test appends, on a real ROUTER in a thread of the test process: the worker under
test then runs exactly the code it runs against the real coordinator (same wire, same record
format, `qnode.coordinator.records`), while a test controls placement precisely. Everything
is real: sockets on 127.0.0.1, a worker child process, files in tmp_path, POSIX shm.

tests/conftest.py loads this module as a plugin: any test may take the `feed` fixture (a
running MetadataFeed) and `worker` (a WorkerProcess on `tmp_path / "data"`, started; killed
and its shm unlinked at teardown).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import posix_ipc
import pytest
import zmq

from qnode.coordinator import records as rec
from qnode.node.shm_table import shm_name
from qnode.node.worker import WorkerConfig
from qnode.storage.batch_builder import BatchBuilder
from qnode.transport.api import ApiKey
from qnode.transport.frame import (
    Response,
    as_buffer,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)

REPO = Path(__file__).resolve().parents[2]


class MetadataFeed:
    """The coordinator side of WorkerHello + MetadataLogFetch, serving a test-made log."""

    def __init__(self, port: int = 0) -> None:
        """`port`: 0 for a free one; a given port stands in for a restarted coordinator."""
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if port:
            self.sock.bind(f"tcp://127.0.0.1:{port}")
        else:
            port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.records: list[dict[str, Any]] = []
        self.hellos: list[dict[str, Any]] = []
        self.applied: dict[int, int] = {}  # worker id → next offset it asked for
        self._lock = threading.Lock()
        self._parked: list[tuple[float, list[Any], int, int]] = []
        self._wake_r, self._wake_w = os.pipe()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def append(self, *records: dict[str, Any]) -> int:
        with self._lock:
            for r in records:
                self.records.append({**rec.check_record(r), "offset": len(self.records), "term": 1})
            end = len(self.records)
        os.write(self._wake_w, b"x")
        return end

    def add_topic(
        self,
        name: str,
        partitions: int = 1,
        worker: int = 0,
        node_id: int = 0,
        configs: dict[str, str] | None = None,
    ) -> int:
        tid = uuid.uuid4().hex
        recs = [rec.topic(name, tid, configs or {})]
        recs += [
            rec.partition(name, p, [node_id], [node_id], node_id, 0, worker)
            for p in range(partitions)
        ]
        return self.append(*recs)

    def wait_applied(self, worker_id: int, offset: int, timeout: float = 10) -> None:
        """Until the worker asked for records from `offset` on (it applied those below)."""
        end = time.monotonic() + timeout
        while self.applied.get(worker_id, -1) < offset:
            if time.monotonic() > end:
                raise TimeoutError(f"worker {worker_id} did not apply metadata up to {offset}")
            time.sleep(0.01)

    def _answer(self, ident: list[Any], corr: int, offset: int) -> None:
        with self._lock:
            recs = self.records[offset:]
            nxt = len(self.records)
        body = {"error": 0, "snapshot": None, "records": recs, "next_offset": nxt}
        self.sock.send_multipart(
            [*ident, *encode_response(ApiKey.METADATA_LOG_FETCH, 0, corr, body)]
        )

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        while not self._stop:
            events = dict(poller.poll(50))
            if self._wake_r in events:
                os.read(self._wake_r, 4096)
            if self.sock in events:
                frames = self.sock.recv_multipart()
                ident, req = frames[:1], decode_request(frames[1:])
                if req.api_key == ApiKey.WORKER_HELLO:
                    self.hellos.append(req.body)
                    self.sock.send_multipart(
                        [
                            *ident,
                            *encode_response(
                                ApiKey.WORKER_HELLO, 0, req.correlation_id, {"error": 0}
                            ),
                        ]
                    )
                elif req.api_key == ApiKey.METADATA_LOG_FETCH:
                    wid = int(req.client_id.rsplit("-", 1)[-1])
                    self.applied[wid] = req.body["offset"]
                    deadline = time.monotonic() + req.body.get("max_wait_ms", 0) / 1000
                    self._parked.append((deadline, ident, req.correlation_id, req.body["offset"]))
            now = time.monotonic()
            keep = []
            for deadline, ident, corr, offset in self._parked:
                if offset < len(self.records) or deadline <= now:
                    self._answer(ident, corr, offset)
                else:
                    keep.append((deadline, ident, corr, offset))
            self._parked = keep

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.sock.close(0)
        self.ctx.term()
        os.close(self._wake_r)
        os.close(self._wake_w)


class WorkerProcess:
    """A real worker child process (`python -m qnode.node.worker <json>`)."""

    def __init__(
        self,
        feed: MetadataFeed,
        data_dir: Path,
        worker_id: int = 0,
        log_dir: Path | None = None,
        **overrides: Any,
    ) -> None:
        self.config = WorkerConfig(
            node_id=0,
            worker_id=worker_id,
            data_dir=str(data_dir),
            coordinator=feed.endpoint,
            log_level="WARNING",
            **overrides,
        )
        self.feed = feed
        name = f"worker-{worker_id}-{uuid.uuid4().hex[:6]}.log"
        self.log_path = (log_dir or data_dir.parent) / name
        self.proc: subprocess.Popen[bytes] | None = None
        self.endpoint = ""

    def start(self, timeout: float = 15) -> WorkerProcess:
        n = len(self.feed.hellos)
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qnode.node.worker", self.config.to_json()],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        end = time.monotonic() + timeout
        while len(self.feed.hellos) <= n:
            if self.proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"worker did not say hello: {self.output()}")
            time.sleep(0.01)
        self.endpoint = self.feed.hellos[-1]["endpoint"]
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            self.log.close()
        return rc

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.unlink_shm()

    def unlink_shm(self) -> None:
        c = self.config
        try:
            posix_ipc.unlink_shared_memory(shm_name(c.node_id, c.data_dir, c.worker_id))
        except posix_ipc.ExistentialError:
            pass

    @property
    def shm_name(self) -> str:
        c = self.config
        return shm_name(c.node_id, c.data_dir, c.worker_id)


class Client:
    """A raw DEALER client speaking the wire protocol."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.corr = 0

    def send(
        self, api: int, body: dict[str, Any], data: Sequence[Any] = (), version: int = 0
    ) -> int:
        self.corr += 1
        self.sock.send_multipart(encode_request(api, version, self.corr, body, data, "test"))
        return self.corr

    def recv(self, timeout: float = 10) -> Response:
        if not self.sock.poll(int(timeout * 1000)):
            raise TimeoutError("no response")
        return decode_response(self.sock.recv_multipart(copy=False))

    def call(
        self, api: int, body: dict[str, Any], data: Sequence[Any] = (), timeout: float = 10
    ) -> Response:
        corr = self.send(api, body, data)
        resp = self.recv(timeout)
        assert resp.correlation_id == corr
        return resp

    def produce(
        self, topic: str, partition: int, batch: bytes, acks: int = 1, timeout: float = 10
    ) -> dict[str, Any]:
        body = {
            "acks": acks,
            "timeout_ms": 5000,
            "topics": [{"name": topic, "partitions": [{"partition": partition, "frame": 0}]}],
        }
        resp = self.call(ApiKey.PRODUCE, body, [batch], timeout=timeout)
        return resp.body["topics"][0]["partitions"][0]

    def fetch_body(
        self,
        topic: str,
        partition: int,
        offset: int,
        max_wait_ms: int = 0,
        min_bytes: int = 1,
        max_bytes: int = 1 << 20,
    ) -> dict[str, Any]:
        return {
            "replica_id": -1,
            "max_wait_ms": max_wait_ms,
            "min_bytes": min_bytes,
            "max_bytes": max_bytes,
            "isolation_level": 0,
            "topics": [
                {
                    "name": topic,
                    "partitions": [
                        {
                            "partition": partition,
                            "fetch_offset": offset,
                            "partition_max_bytes": max_bytes,
                        }
                    ],
                }
            ],
        }

    def fetch(self, topic: str, partition: int, offset: int, **kw: Any) -> tuple[dict, bytes]:
        return fetch_reply(self.call(ApiKey.FETCH, self.fetch_body(topic, partition, offset, **kw)))

    def wait_ready(self, topic: str, partition: int, timeout: float = 10) -> None:
        """Until the worker serves the partition (ListOffsets answers without error)."""
        end = time.monotonic() + timeout
        body = {
            "topics": [{"name": topic, "partitions": [{"partition": partition, "timestamp": -1}]}]
        }
        while True:
            part = self.call(ApiKey.LIST_OFFSETS, body).body["topics"][0]["partitions"][0]
            if part["error"] == 0:
                return
            if time.monotonic() > end:
                raise TimeoutError(f"{topic}-{partition} not served: {part}")
            time.sleep(0.02)

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def fetch_reply(resp: Any) -> tuple[dict, bytes]:
    """(the first partition's entry, its data) of a one-partition Fetch response."""
    part = resp.body["topics"][0]["partitions"][0]
    return part, b"".join(bytes(as_buffer(resp.data[k])) for k in part["frames"])


def make_batch(values: Sequence[bytes], key: bytes | None = None) -> bytes:
    b = BatchBuilder()
    for v in values:
        b.append(key, v)
    return b.build()


@pytest.fixture
def feed() -> Iterator[MetadataFeed]:
    """A MetadataFeed the test appends records to; closed at teardown."""
    f = MetadataFeed()
    yield f
    f.close()


@pytest.fixture
def worker(feed: MetadataFeed, tmp_path: Path) -> Iterator[WorkerProcess]:
    """A started worker following `feed`, data in `tmp_path / "data"`; killed at teardown."""
    w = WorkerProcess(feed, tmp_path / "data").start()
    yield w
    w.kill()

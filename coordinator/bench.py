"""Figures for the control plane: `python -m qnode.coordinator.bench [--topics N]`.

Starts a real node (`qnode start`, 2 workers, temp data dir, free port) and measures, over
raw ZeroMQ requests: start-up to the ready line, CreateTopics (acknowledged once the workers
applied it), Metadata latency with N topics (with and without shm offsets), MetadataLogFetch
wake-up latency after an append, and how long a kill -9'd worker takes to serve again.
Prints the figures; asserts nothing (speed is reported, never tested).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

from qnode.transport.api import ApiKey
from qnode.transport.frame import decode_response, encode_request

_LAUNCH = "import sys; from qnode.node.cli import main; sys.argv[0] = 'qnode'; main()"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Client:
    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.corr = 0

    def call(self, key: int, body: dict[str, Any], timeout_ms: int = 10_000) -> dict[str, Any]:
        self.corr += 1
        self.sock.send_multipart(encode_request(key, 0, self.corr, body))
        while True:
            if not self.sock.poll(timeout_ms):
                raise TimeoutError(f"no answer to API {key}")
            resp = decode_response(self.sock.recv_multipart())
            if resp.correlation_id == self.corr:
                return resp.body


def _pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def _report(name: str, samples_s: list[float]) -> None:
    us = [x * 1e6 for x in samples_s]
    print(
        f"{name:<44} p50 {_pct(us, 0.5):8.0f} us   p99 {_pct(us, 0.99):8.0f} us   ({len(us)} calls)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topics", type=int, default=100)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--calls", type=int, default=500)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        port = _free_port()
        bootstrap = f"tcp://127.0.0.1:{port}"
        cmd = [
            sys.executable,
            "-c",
            _LAUNCH,
            "start",
            "--data-dir",
            str(Path(tmp) / "data"),
            "--workers",
            "2",
            "--listen",
            bootstrap,
            "--log-level",
            "WARNING",
        ]
        t0 = time.perf_counter()
        node = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert node.stdout is not None
        node.stdout.readline()
        print(f"{'qnode start → ready line':<44} {time.perf_counter() - t0:8.2f} s")
        ctx = zmq.Context()
        try:
            _run(ctx, bootstrap, node, args)
        finally:
            node.send_signal(signal.SIGTERM)
            t1 = time.perf_counter()
            code = node.wait(60)
            print(f"{'SIGTERM → exit ' + str(code):<44} {time.perf_counter() - t1:8.2f} s")
            ctx.destroy(0)


def _run(
    ctx: zmq.Context, bootstrap: str, node: subprocess.Popen, args: argparse.Namespace
) -> None:
    c = _Client(ctx, bootstrap)
    create = []
    for i in range(args.topics):
        body = {
            "topics": [
                {
                    "name": f"bench{i}",
                    "num_partitions": args.partitions,
                    "replication_factor": 1,
                    "configs": {},
                }
            ]
        }
        t = time.perf_counter()
        assert c.call(ApiKey.CREATE_TOPICS, body)["topics"][0]["error"] == 0
        create.append(time.perf_counter() - t)
    _report(f"CreateTopics ({args.partitions} partitions, applied)", create)
    for offsets in (False, True):
        lat = []
        for _ in range(args.calls):
            t = time.perf_counter()
            c.call(ApiKey.METADATA, {"topics": None, "include_offsets": offsets})
            lat.append(time.perf_counter() - t)
        _report(f"Metadata all {args.topics} topics, offsets={offsets}", lat)
    lat = []
    for i in range(args.calls):
        t = time.perf_counter()
        c.call(ApiKey.METADATA, {"topics": [f"bench{i % args.topics}"], "include_offsets": True})
        lat.append(time.perf_counter() - t)
    _report("Metadata one topic with offsets", lat)

    # MetadataLogFetch parked at the end of the log, woken by an append: time from sending
    # the change to the parked fetch's answer arriving (includes the change's own work).
    waiter = _Client(ctx, bootstrap)
    wake = []
    for i in range(50):
        offset = waiter.call(ApiKey.METADATA_LOG_FETCH, {"offset": 10**12, "max_wait_ms": 0})[
            "next_offset"
        ]
        waiter.corr += 1
        waiter.sock.send_multipart(
            encode_request(
                ApiKey.METADATA_LOG_FETCH, 0, waiter.corr, {"offset": offset, "max_wait_ms": 10_000}
            )
        )
        time.sleep(0.005)  # let the fetch park
        t = time.perf_counter()
        c.corr += 1
        c.sock.send_multipart(
            encode_request(
                ApiKey.INCREMENTAL_ALTER_CONFIGS,
                0,
                c.corr,
                {
                    "resources": [
                        {
                            "type": "topic",
                            "name": "bench0",
                            "configs": [
                                {"name": "retention.ms", "op": "set", "value": str(1000 + i)}
                            ],
                        }
                    ]
                },
            )
        )
        assert waiter.sock.poll(10_000)
        waiter.sock.recv_multipart()
        wake.append(time.perf_counter() - t)
        assert c.sock.poll(10_000)
        c.sock.recv_multipart()
    _report("MetadataLogFetch woken by an append", wake)

    # kill -9 of a worker → every partition of the node served again (shm rows present).
    def served() -> dict[tuple[str, int], str]:
        md = c.call(ApiKey.METADATA, {"topics": None, "include_offsets": True})
        return {
            (t["name"], p["partition"]): p["endpoint"]
            for t in md["topics"]
            for p in t["partitions"]
            if p["error"] == 0 and p["high_watermark"] >= 0
        }

    before = served()
    victim = _children(node.pid, b"worker\x000")[0]
    t = time.perf_counter()
    os.kill(victim, signal.SIGKILL)
    while True:
        now = served()
        if len(now) == len(before) and now != before:
            break
        time.sleep(0.005)
    print(
        f"{'worker kill -9 → all partitions served again':<44} "
        f"{time.perf_counter() - t:8.2f} s  ({len(before) // 2} partitions recovered, "
        "200 ms backoff included)"
    )
    print(f"{'metadata records per topic created':<44} {1 + args.partitions:8d}")
    print(f"{'median CreateTopics rate':<44} {1 / statistics.median(create):8.0f} /s")


def _children(pid: int, role: bytes) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if ppid == pid and role in cmdline:
            out.append(int(entry))
    return out


if __name__ == "__main__":
    main()

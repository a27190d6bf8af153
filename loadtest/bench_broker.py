"""The broker path alone: ready-made batches produced to a node vs raw pyzmq PUSH→PULL.

`qnode bench produce --prebuilt` calls `run_prebuilt`. The client builds one RecordBatch v2 of
about `batch_bytes` (records of `record_size` bytes) once and sends it over and over, pipelined
(`inflight` requests outstanding), straight to the worker endpoints the metadata names, so the
client costs almost nothing and the figure is the broker's: receive, validate (CRC-32C),
stamp, append to the mapped segment, answer. In the same run the very same multipart frames
go through a raw pyzmq PUSH→PULL pair (receiver in its own process, as the worker is), which
is the ceiling any zmq broker could reach on this machine: the ratio shows the broker's own
overhead.

    python -m qnode.loadtest.bench_broker [--bootstrap tcp://...] [--seconds 5] [--partitions 1]

Without `--bootstrap` it starts a node of its own (`qnode start`, temporary data dir).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import zmq

from qnode.storage.batch_builder import BatchBuilder
from qnode.transport.api import ApiKey
from qnode.transport.errors import ErrorCode, error_name
from qnode.transport.frame import decode_response, encode_request, encode_request_header
from qnode.transport.sockets import has_message, recv_frames, send_frames

DEFAULT_TOPIC = "bench-prebuilt"
# Requests outstanding (8 MiB of batches at 8 per request). The raw baseline's PUSH queues up
# to 1000 messages; with a shallow pipeline the broker's figure would measure how long this
# client or the worker waits for the CPU on a shared box (a descheduled client drains 16
# requests' worth of work in ~3 ms), not what the broker path costs.
DEFAULT_INFLIGHT = 64
STALL_MS = 10_000  # no progress for this long (a send blocked, no answer): the bench fails
Progress = Callable[[int, int], None]  # (bytes acknowledged so far, batches so far)


class BenchError(RuntimeError):
    """The node refused the bench (topic, metadata, produce errors)."""


@dataclass
class PrebuiltResult:
    batches: int
    records: int
    bytes: int
    seconds: float
    raw_bytes: int
    raw_seconds: float
    batch_bytes: int
    partitions: int
    inflight: int
    dd_bytes: int = 0  # the page-cache ceiling: dd of as many bytes into dd_dir, same run
    dd_seconds: float = 0.0
    dd_dir: str = ""
    dd_note: str = ""  # why there is no dd figure, when dd was asked for and failed

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds else 0.0

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0

    @property
    def raw_mb_per_s(self) -> float:
        return self.raw_bytes / self.raw_seconds / 1e6 if self.raw_seconds else 0.0

    @property
    def ratio(self) -> float:
        return self.mb_per_s / self.raw_mb_per_s if self.raw_mb_per_s else 0.0

    def summary(self) -> str:
        return (
            f"broker (best round): {self.batches} batches of {self.batch_bytes} B to "
            f"{self.partitions} partition(s) in {self.seconds:.2f} s = {self.mb_per_s:.0f} MB/s, "
            f"{self.records_per_s:,.0f} records/s\n"
            f"raw pyzmq PUSH->PULL, same frames (best round): {self.raw_mb_per_s:.0f} MB/s\n"
            f"broker / raw = {self.ratio * 100:.0f} % (target >= 50 %)"
            + self._dd_line()
        )

    def _dd_line(self) -> str:
        if not self.dd_seconds:
            return f"\n{self.dd_note}" if self.dd_note else ""
        dd = self.dd_bytes / self.dd_seconds / 1e6
        return (
            f"\ndd bs=16k of the same bytes into {self.dd_dir} (what this machine's page cache "
            f"takes in now): {dd:.0f} MB/s; broker = {self.mb_per_s / dd * 100:.0f} % of it"
        )


def prebuilt_batch(batch_bytes: int = 16384, record_size: int = 100) -> tuple[bytes, int]:
    """One batch of ~`batch_bytes` made of `record_size`-byte values; (bytes, record count)."""
    b = BatchBuilder(batch_size=batch_bytes)
    value = bytes(itertools.islice(itertools.cycle(b"qnode-prebuilt-"), record_size))
    n = 0
    while b.try_append(None, value) >= 0:  # -1: the next record would pass batch_bytes
        n += 1
    return b.build(), n


# -- talking to the node ----------------------------------------------------------------------


class _Rpc:
    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.corr = 0

    def call(self, api: int, body: dict[str, Any], timeout_s: float = 10) -> dict[str, Any]:
        self.corr += 1
        self.sock.send_multipart(encode_request(api, 0, self.corr, body, client_id="bench"))
        end = time.monotonic() + timeout_s
        while True:
            left = end - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000) + 1):
                raise BenchError(f"no answer to {ApiKey(api).name} within {timeout_s} s")
            resp = decode_response(self.sock.recv_multipart())
            if resp.correlation_id == self.corr:
                if resp.error_code:
                    raise BenchError(f"{error_name(resp.error_code)}: {resp.body.get('message')}")
                return resp.body

    def close(self) -> None:
        self.sock.close(0)


def _leaders(
    ctx: zmq.Context, bootstrap: str, topic: str, partitions: int, timeout_s: float = 60
) -> dict[int, str]:
    """Partition → worker endpoint, creating the topic if needed and waiting for leaders."""
    rpc = _Rpc(ctx, bootstrap)
    try:
        end = time.monotonic() + timeout_s
        created = False
        while True:
            try:
                md = rpc.call(ApiKey.METADATA, {"topics": [topic], "include_offsets": False})
            except BenchError:
                if time.monotonic() > end:
                    raise
                continue
            t = md["topics"][0]
            if t["error"] == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION and not created:
                res = rpc.call(
                    ApiKey.CREATE_TOPICS,
                    {
                        "topics": [
                            {
                                "name": topic,
                                "num_partitions": partitions,
                                "replication_factor": 1,
                                "configs": {},
                            }
                        ],
                        "validate_only": False,
                    },
                    timeout_s=30,
                )
                err = res["topics"][0]["error"]
                if err not in (0, ErrorCode.TOPIC_ALREADY_EXISTS):
                    raise BenchError(f"cannot create {topic}: {res['topics'][0].get('message')}")
                created = True
                continue
            parts = {
                p["partition"]: p.get("endpoint")
                for p in t.get("partitions", [])
                if p["error"] == 0 and p.get("endpoint")
            }
            if t["error"] == 0 and len(parts) >= partitions:
                return {p: parts[p] for p in range(partitions)}
            if time.monotonic() > end:
                raise BenchError(f"topic {topic} not ready: {t}")
            time.sleep(0.05)
    finally:
        rpc.close()


# -- the two measurements ---------------------------------------------------------------------


_OK_ENTRY = msgpack.packb("error") + msgpack.packb(0)


def _raise_produce_error(frames: list[bytes]) -> None:
    resp = decode_response(frames)
    if resp.error_code:
        raise BenchError(
            f"produce refused: {error_name(resp.error_code)} {resp.body.get('message', '')}"
        )
    for part in resp.body["topics"][0]["partitions"]:
        if part["error"]:
            raise BenchError(
                f"produce to partition {part['partition']} failed: "
                f"{error_name(part['error'])} {part.get('message', '')}"
            )


def _produce_body(topic: str, partitions: list[int], acks: int) -> bytes:
    """A Produce body for one batch per partition, data frame k for the k-th partition."""
    parts = [{"partition": p, "frame": k} for k, p in enumerate(partitions)]
    return msgpack.packb(
        {"acks": acks, "timeout_ms": 30000, "topics": [{"name": topic, "partitions": parts}]}
    )


def _plan(leaders: dict[int, str], per_request: int) -> list[tuple[str, list[int]]]:
    """Requests to send round-robin: (endpoint, partitions), up to `per_request` each."""
    by_ep: dict[str, list[int]] = {}
    for p, ep in sorted(leaders.items()):
        by_ep.setdefault(ep, []).append(p)
    plan = []
    for ep, parts in by_ep.items():
        for i in range(0, len(parts), per_request):
            plan.append((ep, parts[i : i + per_request]))
    return plan


def _produce_loop(
    ctx: zmq.Context,
    plan: list[tuple[str, list[int]]],
    topic: str,
    batch: bytes,
    seconds: float,
    inflight: int,
    acks: int,
    progress: Progress | None,
) -> tuple[int, float]:
    """Send the planned requests round-robin for `seconds`; (batches acked, elapsed)."""
    socks: dict[str, zmq.Socket] = {}
    targets = []
    for ep, parts in plan:
        if ep not in socks:
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, 0)
            s.setsockopt(zmq.RCVHWM, 0)
            s.setsockopt(zmq.SNDTIMEO, STALL_MS)  # a send that cannot proceed is an error
            s.connect(ep)
            socks[ep] = s
        targets.append((socks[ep], _produce_body(topic, parts, acks), [batch] * len(parts)))
    poller = zmq.Poller()
    for s in socks.values():
        poller.register(s, zmq.POLLIN)
    sock_list = list(socks.values())
    header = encode_request_header
    out: dict[zmq.Socket, deque[int]] = {s: deque() for s in sock_list}  # batches per request
    pending = 0
    acked = 0
    corr = 0
    rr = itertools.cycle(targets)
    next_report = time.monotonic() + 0.5
    start = time.monotonic()
    stop_at = start + seconds
    sending = True
    while sending or pending:
        while sending and pending < inflight:
            sock, body, data = next(rr)
            corr += 1
            try:
                send_frames(sock, [header(ApiKey.PRODUCE, 0, corr, "bench"), body, *data])
            except zmq.Again:
                raise BenchError(f"a produce request could not be sent for {STALL_MS} ms") from None
            out[sock].append(len(data))
            pending += 1
        got = 0
        for s in sock_list:
            sent = out[s]
            while sent and has_message(s):
                frames = [f.bytes for f in recv_frames(s)]
                n = sent.popleft()  # a DEALER's answers come back in order from one worker
                # cheap success check: header error 0 and one `"error": 0` per partition in
                # the msgpack body; anything else is decoded and reported
                if frames[0][-2:] != b"\x00\x00" or frames[1].count(_OK_ENTRY) != n:
                    _raise_produce_error(frames)
                got += 1
                acked += n
        if not got:
            if not poller.poll(STALL_MS):
                raise BenchError("the node stopped answering produce requests")
            continue
        pending -= got
        now = time.monotonic()
        if now >= stop_at:
            sending = False
        if progress is not None and now >= next_report:
            next_report = now + 0.5
            progress(acked * len(batch), acked)
    elapsed = time.monotonic() - start
    for s in socks.values():
        s.close(0)
    return acked, elapsed


_PULL = textwrap.dedent(
    """
    import sys, zmq
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL); pull.setsockopt(zmq.RCVHWM, 0)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    back = ctx.socket(zmq.PUSH); back.connect(sys.argv[1])
    print(port, flush=True)
    while True:
        n = 0
        while len(pull.recv_multipart(copy=False)) > 1:
            n += 1
        back.send_string(str(n))  # a one-frame message ends a round
        if n == 0:
            break
    back.close(1000); pull.close(0); ctx.term()
    """
)


class RawPushPull:
    """PUSH here → PULL in a child process: the ceiling for moving these frames with zmq."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.back = self.ctx.socket(zmq.PULL)
        back_port = self.back.bind_to_random_port("tcp://127.0.0.1")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _PULL, f"tcp://127.0.0.1:{back_port}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.setsockopt(zmq.SNDHWM, 1000)
        self.push.setsockopt(zmq.SNDTIMEO, STALL_MS)
        self.push.connect(f"tcp://127.0.0.1:{int(self.proc.stdout.readline())}")

    def run(self, frames: list[bytes], seconds: float) -> tuple[int, float]:
        """Send `frames` for `seconds`; (messages received, seconds until the last arrived)."""
        start = time.monotonic()
        stop_at = start + seconds
        sent = 0
        while sent % 256 or time.monotonic() < stop_at:
            try:
                send_frames(self.push, frames)  # the broker bench's client sends the same way
            except zmq.Again:
                raise BenchError(f"raw PUSH blocked for {STALL_MS} ms") from None
            sent += 1
        self.push.send(b"end")
        if not self.back.poll(3 * STALL_MS):
            raise BenchError("raw PULL receiver did not finish")
        received = int(self.back.recv())
        return received, time.monotonic() - start

    def close(self) -> None:
        try:
            self.push.send(b"end")  # an empty round: the receiver exits
            self.back.poll(5000)
        finally:
            self.push.close(0)
            self.back.close(0)
            self.ctx.term()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_prebuilt(
    bootstrap: str,
    topic: str = DEFAULT_TOPIC,
    partitions: int = 1,
    seconds: float = 6.0,
    batch_bytes: int = 16384,
    record_size: int = 100,
    inflight: int = DEFAULT_INFLIGHT,
    acks: int = 1,
    rounds: int = 3,
    progress: Progress | None = None,
    per_request: int = 8,
    dd_dir: str | None = None,
) -> PrebuiltResult:
    """Produce ready-made batches to the node at `bootstrap`, and the raw baseline.

    Each request carries one batch for each of up to `per_request` partitions led by the same
    worker (as a Kafka producer sends one request per broker). The time is split in `rounds`
    alternating broker/raw rounds and the best round of each is kept, so a burst of other
    load on the machine does not decide the ratio. With `dd_dir` (a directory on the node's
    disk), `dd` then writes as many bytes as the best round into it: every byte the broker
    stores goes into the page cache, so that rate bounds it. On fresh memory of this VM it is
    ~300 MB/s (first touch of each page); on a page cache already full, ~2 GB/s.
    """
    batch, records = prebuilt_batch(batch_bytes, record_size)
    per_round = seconds / (2 * rounds)
    best = (0, 1.0)
    best_raw = (0, 1.0)
    ctx = zmq.Context()
    raw = RawPushPull()
    try:
        plan = _plan(_leaders(ctx, bootstrap, topic, partitions), max(per_request, 1))
        # the raw baseline moves the very same multipart messages
        ep, parts = plan[0]
        frames = [
            encode_request_header(ApiKey.PRODUCE, 0, 1, "bench"),
            _produce_body(topic, parts, acks),
            *([batch] * len(parts)),
        ]
        # warm up: connections, first segment pages, both paths
        _produce_loop(ctx, plan, topic, batch, 0.3, inflight, acks, None)
        raw.run(frames, 0.3)
        done = 0  # batches of earlier rounds: progress counts across rounds
        for _ in range(rounds):
            report = None
            if progress is not None:

                def report(b: int, n: int, base: int = done) -> None:
                    progress((base + n) * len(batch), base + n)

            n, el = _produce_loop(ctx, plan, topic, batch, per_round, inflight, acks, report)
            done += n
            if n / el > best[0] / best[1]:
                best = (n, el)
            n, el = raw.run(frames, per_round)
            n *= len(parts)  # batches moved
            if n / el > best_raw[0] / best_raw[1]:
                best_raw = (n, el)
    finally:
        raw.close()
        ctx.term()
    dd_bytes, dd_seconds, dd_note = 0, 0.0, ""
    if dd_dir:
        dd_bytes = max(best[0] * len(batch) // 16384, 1) * 16384
        try:
            dd_seconds = dd_bytes / _dd_rate(dd_dir, dd_bytes)
        except (OSError, subprocess.CalledProcessError) as exc:
            dd_note = f"dd into {dd_dir} failed ({exc}): no page-cache figure"
    return PrebuiltResult(
        batches=best[0],
        records=best[0] * records,
        bytes=best[0] * len(batch),
        seconds=best[1],
        raw_bytes=best_raw[0] * len(batch),
        raw_seconds=best_raw[1],
        batch_bytes=len(batch),
        partitions=partitions,
        inflight=inflight,
        dd_bytes=dd_bytes,
        dd_seconds=dd_seconds,
        dd_dir=dd_dir or "",
        dd_note=dd_note,
    )


def _dd_rate(directory: str, nbytes: int) -> float:
    """Bytes/s of `dd bs=16k` writing `nbytes` to a new file in `directory` (then removed)."""
    from qnode.loadtest.bench_log import dd_write

    path = os.path.join(directory, f".qnode-bench-dd.{os.getpid()}")
    try:
        rate, _ = dd_write(path, nbytes, 16384)
    finally:
        if os.path.exists(path):
            os.unlink(path)
    return rate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", help="a running node (default: start one)")
    ap.add_argument("--topic", default=DEFAULT_TOPIC)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=6.0, help="total, both paths")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of each path")
    ap.add_argument("--batch-bytes", type=int, default=16384)
    ap.add_argument("--record-size", type=int, default=100)
    ap.add_argument("--inflight", type=int, default=DEFAULT_INFLIGHT, help="requests outstanding")
    ap.add_argument("--per-request", type=int, default=8, help="batches (partitions) per request")
    ap.add_argument("--acks", type=int, default=1, choices=(1, -1))
    ap.add_argument("--workers", type=int, default=1, help="workers of a node started here")
    ap.add_argument("--dd-dir", default=None, help="a directory on the node's disk: dd there "
                    "measures the page cache's intake in the same run (default: the data dir "
                    "of a node started here, else skipped)")
    ap.add_argument(
        "--data-dir",
        help="data dir of a node started here (default: a temporary "
        "dir in /dev/shm, so the figure is the broker's, not this disk's)",
    )
    args = ap.parse_args(argv)
    node = None
    cleanup: list[Path] = []
    bootstrap = args.bootstrap
    if bootstrap is None:
        from qnode.loadtest.local_node import LocalNode

        scratch = Path(tempfile.mkdtemp(prefix="qnode-bench-"))
        if args.data_dir:
            data_dir = Path(args.data_dir)
        else:
            shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
            data_dir = Path(tempfile.mkdtemp(prefix="qnode-bench-data-", dir=shm))
            cleanup.append(data_dir)
        cleanup.append(scratch)
        node = LocalNode.start(scratch, workers=args.workers, data_dir=data_dir)
        bootstrap = node.bootstrap
        print(f"started a node on {bootstrap} ({args.workers} worker(s))", file=sys.stderr)
    try:
        res = run_prebuilt(
            bootstrap,
            topic=args.topic,
            partitions=args.partitions,
            seconds=args.seconds,
            batch_bytes=args.batch_bytes,
            record_size=args.record_size,
            inflight=args.inflight,
            acks=args.acks,
            rounds=args.rounds,
            per_request=args.per_request,
            dd_dir=args.dd_dir or (str(data_dir) if node is not None else None),
        )
        print(res.summary())
    finally:
        if node is not None:
            node.stop()
        for d in cleanup:
            shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`qnode bench produce | consume | e2e`: throughput and latency through the SDK.

- produce: N records of B bytes through a `Producer` (batched); latency is send → ack of a
  sample of records (one per 256).
- produce --prebuilt: the broker path alone (ready-made batches, no client cost) against raw
  pyzmq PUSH→PULL of the same frames, measured in the same run (loadtest/bench_broker.py).
- consume: writes a backlog of N records (unless the topic already holds them), then reads it
  from the start with a `Consumer`; latency is the duration of each non-empty poll().
- e2e: a consumer process reads while this process sends at `--rate` records/s with
  linger.ms=0; latency is send → the consumer's poll() returning the record (both clocks are
  CLOCK_MONOTONIC of this host); then the floor: a raw pyzmq echo through a child process at
  the same rate (the same two zmq legs, nothing done in the middle).
Progress goes to stderr twice a second; the summary to stdout.
"""

from __future__ import annotations

import multiprocessing
import os
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import typer

from qnode.node.cli_client import BootstrapOpt, bootstrap_of, friendly_errors

bench_app = typer.Typer(
    help="Benchmarks: produce, consume, end-to-end latency.", no_args_is_help=True
)

_STAMP = struct.Struct(">q")
_SAMPLE_EVERY = 256


@dataclass
class Summary:
    name: str
    records: int
    nbytes: int
    seconds: float
    latencies_us: list[float]
    latency_what: str

    def render(self) -> str:
        rps = self.records / self.seconds if self.seconds > 0 else 0.0
        mbs = self.nbytes / self.seconds / 1e6 if self.seconds > 0 else 0.0
        lines = [
            f"{self.name}: {self.records:,} records, {self.nbytes / 1e6:,.1f} MB in "
            f"{self.seconds:.2f} s",
            f"  throughput: {rps:,.0f} records/s, {mbs:,.1f} MB/s",
        ]
        if self.latencies_us:
            p = percentiles(self.latencies_us, (50, 99, 99.9))
            lines.append(
                f"  latency ({self.latency_what}, {len(self.latencies_us):,} samples):"
                f" p50 {fmt_us(p[0])}, p99 {fmt_us(p[1])}, p999 {fmt_us(p[2])}"
            )
        return "\n".join(lines)


def percentiles(values: Sequence[float], ps: Sequence[float]) -> list[float]:
    """Nearest-rank percentiles of `values` (not empty)."""
    ordered = sorted(values)
    n = len(ordered)
    return [ordered[min(n - 1, max(0, int(round(p / 100.0 * n + 0.5)) - 1))] for p in ps]


def fmt_us(us: float) -> str:
    return f"{us:,.0f} µs" if us < 10000 else f"{us / 1000:,.1f} ms"


class Progress:
    """A single stderr status line, refreshed at most twice a second.

    `unit` "records" shows done/total and records/s since the start; "bytes" (the prebuilt
    bench, whose total is a duration, not a count) shows MB acknowledged and the MB/s of the
    last interval (its rounds alternate with the raw baseline, so a whole-run rate would lie).
    """

    def __init__(self, label: str, total: int, unit: str = "records") -> None:
        if unit not in ("records", "bytes"):
            raise ValueError(f"unit must be 'records' or 'bytes', not {unit!r}")
        self.label = label
        self.total = total
        self.unit = unit
        self.start = time.monotonic()
        self.next = self.start + 0.5
        self.shown = False
        self._last = (self.start, 0)

    def line(self, done: int, now: float) -> str:
        """The status text for `done` units at monotonic time `now`."""
        if self.unit == "bytes":
            then, before = self._last
            rate = (done - before) / (now - then) if now > then else 0.0
            self._last = (now, done)
            return f"{self.label}: {done / 1e6:,.0f} MB acknowledged, {rate / 1e6:,.0f} MB/s"
        rate = done / (now - self.start) if now > self.start else 0.0
        pct = 100.0 * done / self.total if self.total else 100.0
        return f"{self.label}: {done:,}/{self.total:,} ({pct:.0f} %), {rate:,.0f} records/s"

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self.next:
            return
        self.next = now + 0.5
        sys.stderr.write(f"\r  {self.line(done, now)}   ")
        sys.stderr.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _payload(size: int) -> bytes:
    seed = b"qnode-bench-" + os.urandom(16).hex().encode()
    return (seed * (size // len(seed) + 1))[:size]


def _ensure_topic(bootstrap: str, topic: str, partitions: int) -> int:
    """Create `topic` unless it exists; its partition count."""
    from qnode.sdk import Admin
    from qnode.sdk.errors import TopicAlreadyExistsError

    with Admin(bootstrap) as admin:
        try:
            admin.create_topic(topic, partitions)
        except TopicAlreadyExistsError:
            return len(admin.describe_topic(topic).partitions)
    return partitions


def _topic_name(kind: str, topic: str | None) -> str:
    return topic or f"bench-{kind}-{os.getpid()}-{int(time.time())}"


# ---------------------------------------------------------------------------------- produce
def run_produce(
    bootstrap: str,
    topic: str,
    records: int,
    record_size: int,
    partitions: int,
    acks: str,
    linger_ms: float,
    batch_size: int,
    compression: str | None,
    label: str = "produce",
) -> Summary:
    from qnode.sdk import Producer

    count = _ensure_topic(bootstrap, topic, partitions)
    latencies: list[float] = []
    value = _payload(record_size)
    progress = Progress(label, records)
    with Producer(
        bootstrap, acks=acks, linger_ms=linger_ms, batch_size=batch_size, compression=compression
    ) as producer:
        # Warm up: metadata, connections, and each partition's first append (which creates its
        # segment files and leader-epoch checkpoint): one-time costs, not throughput, and with
        # a thousand partitions they would weigh on a short run.
        for fut in [producer.send(topic, value, partition=p) for p in range(count)]:
            fut.result(30)
        send = producer.send
        clock = time.perf_counter

        def sampled(sent: float) -> Any:
            return lambda fut: latencies.append((clock() - sent) * 1e6)

        start = clock()
        for i in range(records):
            if i % _SAMPLE_EVERY == 0:
                send(topic, value).add_done_callback(sampled(clock()))
                progress.update(i)
            else:
                send(topic, value)
        producer.flush()
        elapsed = clock() - start
    progress.update(records, force=True)
    progress.close()
    return Summary(label, records, records * record_size, elapsed, latencies,
                   "send → ack at full speed, queueing in buffer.memory included")


# ---------------------------------------------------------------------------------- consume
def run_consume(
    bootstrap: str,
    topic: str,
    records: int,
    record_size: int,
    partitions: int,
    fetch_max_bytes: int,
    max_partition_fetch_bytes: int,
) -> Summary:
    from qnode.sdk import Admin, Consumer

    _ensure_topic(bootstrap, topic, partitions)
    with Admin(bootstrap) as admin:
        desc = admin.describe_topic(topic)
    have = sum(max(0, p.high_watermark - max(0, p.log_start_offset)) for p in desc.partitions)
    if have < records:
        run_produce(
            bootstrap,
            topic,
            records - have,
            record_size,
            partitions,
            "1",
            5,
            262144,
            None,
            label="backlog",
        )
    tps = [desc.partitions[i] for i in range(len(desc.partitions))]
    progress = Progress("consume", records)
    latencies: list[float] = []
    nbytes = 0
    seen = 0
    with Consumer(
        bootstrap=bootstrap,
        auto_offset_reset="earliest",
        max_poll_records=10000,
        fetch_max_bytes=fetch_max_bytes,
        max_partition_fetch_bytes=max_partition_fetch_bytes,
    ) as consumer:
        from qnode.sdk import TopicPartition

        consumer.assign([TopicPartition(topic, p.id) for p in tps])
        clock = time.perf_counter
        start = clock()
        while seen < records:
            t0 = clock()
            batch = consumer.poll(5.0, max_records=min(10000, records - seen))
            if not batch:
                if clock() - t0 >= 5.0:
                    break  # the backlog is shorter than asked: report what was read
                continue
            latencies.append((clock() - t0) * 1e6)
            for r in batch:
                nbytes += len(r.value) if r.value is not None else 0
            seen += len(batch)
            progress.update(seen)
        elapsed = clock() - start
    progress.update(seen, force=True)
    progress.close()
    return Summary("consume", seen, nbytes, elapsed, latencies, "poll() with records")


# ---------------------------------------------------------------------------------- e2e
def _e2e_consumer(
    bootstrap: str, topic: str, partitions: int, records: int, conn: Any, timeout_s: float,
    doorbell: bool,
) -> None:
    from qnode.sdk import Consumer, TopicPartition

    lat: list[int] = []
    with Consumer(
        bootstrap=bootstrap,
        auto_offset_reset="latest",
        fetch_max_wait_ms=500,
        max_poll_records=1000,
        fetch_doorbell=doorbell,
    ) as consumer:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        for p in range(partitions):  # resolve "latest" before the producer starts
            consumer.position(TopicPartition(topic, p))
        consumer.poll(0)
        conn.send("ready")
        deadline = time.monotonic() + timeout_s
        unpack = _STAMP.unpack_from
        now_ns = time.monotonic_ns
        while len(lat) < records and time.monotonic() < deadline:
            batch = consumer.poll(0.5)
            if batch:
                t = now_ns()
                lat.extend(t - unpack(r.value)[0] for r in batch if r.value)
        answers = consumer.metrics()["doorbell_answers"]
    conn.send((lat, answers))
    conn.close()


def _node_setting(bootstrap: str, key: str) -> str | None:
    """A node config value as the node reports it (DescribeConfigs), None if it cannot say."""
    from qnode.sdk import Admin
    from qnode.sdk.errors import QnodeError

    try:
        with Admin(bootstrap) as admin:
            entries = admin.describe_configs("", [key], resource_type="node")
    except QnodeError:
        return None
    return next((e.value for e in entries if e.name == key), None)


def run_e2e(
    bootstrap: str,
    topic: str,
    records: int,
    record_size: int,
    partitions: int,
    acks: str,
    rate: float,
    doorbell: bool = True,
    local: bool = True,
) -> Summary:
    from qnode.sdk import Producer

    _ensure_topic(bootstrap, topic, partitions)
    # the figure depends on it (README, Benchmarks): say under which setting it was taken
    busy_poll = _node_setting(bootstrap, "worker.busy.poll.us")
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    timeout_s = records / rate + 30
    proc = ctx.Process(
        target=_e2e_consumer,
        daemon=True,
        args=(bootstrap, topic, partitions, records + 1, child, timeout_s, doorbell),
    )
    proc.start()
    try:
        if not parent.poll(30):
            raise RuntimeError("the e2e consumer process did not start within 30 s")
        parent.recv()
        filler = _payload(max(0, record_size - _STAMP.size))
        progress = Progress("e2e", records)
        with Producer(bootstrap, acks=acks, linger_ms=0, local_requests=local) as producer:
            producer.send(topic, _STAMP.pack(time.monotonic_ns()) + filler).result(30)
            interval = 1.0 / rate
            start = time.perf_counter()
            for i in range(records):
                # Sleep, never spin: a spinning thread holds the GIL the sender thread needs.
                left = start + i * interval - time.perf_counter()
                if left > 0:
                    time.sleep(left)
                producer.send(topic, _STAMP.pack(time.monotonic_ns()) + filler)
                progress.update(i + 1)
            producer.flush()
            elapsed = time.perf_counter() - start
            local_sends = producer.metrics()["local_sends"]
        progress.update(records, force=True)
        progress.close()
        if not parent.poll(timeout_s):
            raise RuntimeError("the e2e consumer process did not report")
        lat_ns, answers = parent.recv()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
    # The first record is the warm-up (connections, metadata): not part of the sample.
    lat_us = [ns / 1000.0 for ns in lat_ns[1:]]
    return Summary(
        f"e2e at {rate:,.0f} records/s (linger.ms=0, acks={acks}, "
        + (f"{local_sends:,} produce requests by datagram, " if local else "no local requests, ")
        + (f"{answers:,} fetch answers by doorbell" if doorbell else "no doorbell")
        + (f", node worker.busy.poll.us={busy_poll})" if busy_poll is not None else ")"),
        len(lat_us),
        len(lat_us) * record_size,
        elapsed,
        lat_us,
        "send → poll() returns it",
    )


# ---------------------------------------------------------------------------------- commands
@bench_app.command("produce")
@friendly_errors
def bench_produce(
    records: int = typer.Option(1_000_000, "--records", "-n", min=1),
    record_size: int = typer.Option(100, "--record-size", "-s", min=1),
    partitions: int = typer.Option(8, "--partitions", "-p", min=1),
    acks: str = typer.Option("1", "--acks"),
    linger_ms: float = typer.Option(5, "--linger-ms"),
    batch_size: int = typer.Option(262144, "--batch-size"),
    compression: str = typer.Option(None, "--compression"),
    prebuilt: bool = typer.Option(
        False, "--prebuilt", help="broker path alone: ready-made batches, vs raw pyzmq"
    ),
    seconds: float = typer.Option(5.0, "--seconds", help="duration of a --prebuilt run"),
    dd_dir: str = typer.Option(
        ".", "--dd-dir", help="--prebuilt: a directory on the node's disk where dd measures "
        "the page cache's intake in the same run ('' to skip)"
    ),
    topic: str = typer.Option(None, "--topic"),
    bootstrap: str = BootstrapOpt,
) -> None:
    """Produce throughput (records/s, MB/s) and send → ack latency."""
    bs = bootstrap_of(bootstrap)
    name = _topic_name("produce", topic)
    if prebuilt:
        from qnode.loadtest.bench_broker import run_prebuilt

        if dd_dir and not (os.path.isdir(dd_dir) and os.access(dd_dir, os.W_OK)):
            raise ValueError(f"--dd-dir {dd_dir!r} is not a writable directory "
                             "('' skips the dd figure)")
        from qnode.sdk.producer import parse_acks

        progress = Progress("prebuilt", 0, unit="bytes")
        res = run_prebuilt(
            bs,
            name,
            partitions,
            seconds,
            16384,
            record_size,
            acks=parse_acks(acks),
            progress=lambda b, n: progress.update(b),
            dd_dir=dd_dir or None,
        )
        progress.close()
        print(res.summary())
        return
    print(
        run_produce(
            bs, name, records, record_size, partitions, acks, linger_ms, batch_size, compression
        ).render()
    )


@bench_app.command("consume")
@friendly_errors
def bench_consume(
    records: int = typer.Option(1_000_000, "--records", "-n", min=1),
    record_size: int = typer.Option(100, "--record-size", "-s", min=1),
    partitions: int = typer.Option(8, "--partitions", "-p", min=1),
    fetch_max_bytes: int = typer.Option(52428800, "--fetch-max-bytes"),
    max_partition_fetch_bytes: int = typer.Option(4194304, "--max-partition-fetch-bytes"),
    topic: str = typer.Option(
        None, "--topic", help="reuse a topic (its backlog is topped up to --records)"
    ),
    bootstrap: str = BootstrapOpt,
) -> None:
    """Consume throughput from the start of a backlog."""
    print(
        run_consume(
            bootstrap_of(bootstrap),
            _topic_name("consume", topic),
            records,
            record_size,
            partitions,
            fetch_max_bytes,
            max_partition_fetch_bytes,
        ).render()
    )


@bench_app.command("e2e")
@friendly_errors
def bench_e2e(
    records: int = typer.Option(10_000, "--records", "-n", min=1),
    record_size: int = typer.Option(100, "--record-size", "-s", min=1),
    partitions: int = typer.Option(1, "--partitions", "-p", min=1),
    acks: str = typer.Option("1", "--acks"),
    rate: float = typer.Option(1000, "--rate", help="records/s sent"),
    topic: str = typer.Option(None, "--topic"),
    doorbell: bool = typer.Option(
        True, "--doorbell/--no-doorbell",
        help="the consumer's fetch_doorbell (same-host answers as Unix datagrams)"),
    local: bool = typer.Option(
        True, "--local/--no-local",
        help="the producer's local_requests (same-host requests as Unix datagrams)"),
    bootstrap: str = BootstrapOpt,
) -> None:
    """End-to-end latency (send → consumer poll) at a fixed rate, linger.ms=0."""
    if record_size < _STAMP.size:
        raise ValueError(f"--record-size must be at least {_STAMP.size} (the send timestamp)")
    if rate <= 0:
        raise ValueError("--rate must be > 0")
    print(
        run_e2e(
            bootstrap_of(bootstrap),
            _topic_name("e2e", topic),
            records,
            record_size,
            partitions,
            acks,
            rate,
            doorbell,
            local,
        ).render()
    )
    print(_floor_line(rate, min(records, 3000), record_size))


def _floor_line(rate: float, count: int, size: int) -> str:
    """The same two zmq legs with nothing in the middle, measured now (loadtest/raw_echo.py)."""
    from qnode.loadtest.raw_echo import echo_round_trips

    p = percentiles(echo_round_trips(rate, count, size), (50, 99, 99.9))
    return (f"  floor, raw pyzmq DEALER → ROUTER echo → DEALER at the same rate ({count:,} "
            f"samples): p50 {fmt_us(p[0])}, p99 {fmt_us(p[1])}, p999 {fmt_us(p[2])}")


def register(app: typer.Typer) -> None:
    """Add `qnode bench ...` to the CLI (called by cli_client.register)."""
    app.add_typer(bench_app, name="bench")

"""Where the time goes when a node worker is killed -9 under a consumer group: a timeline.

    python -m qnode.loadtest.restart_trace [--target offsets|other] [--repeat 3]

Starts a node (2 workers), a producer writing a steady trickle to a 4-partition topic, and a
caught-up group consumer (no pace; it commits asynchronously after every poll, as the
load-test consumers do); then kills with SIGKILL the worker that holds the group's
`__consumer_offsets` partition (`offsets`) or one that does not (`other`), and prints, in
seconds after the kill, when

    the supervisor saw the worker exit, restarted it, the new worker served, the coordinator
    registered it, the worker had applied the metadata log     (from the node's log)
    the consumer read the first record sent after the kill, for each partition (on the killed
    worker's: the producer's retries and the consumer's refetch both recovered)
    the group's committed offsets passed the log end at the kill (describe_group, every 50 ms)

With --repeat N, N runs (a fresh node each) and the min/median/max of each line. Node log
lines are matched by the words the supervisor, worker and coordinator log today; a line not
found is reported as such, not guessed.
"""

from __future__ import annotations

import argparse
import re
import statistics
import struct
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from qnode.loadtest.local_node import LocalNode
from qnode.loadtest.proc_monitor import offsets_endpoint

TOPIC = "trace"
GROUP = "trace-group"
TRICKLE_PER_S = 1000
WARM_S = 4.0      # before the kill: group settled, consumer caught up
AFTER_S = 9.0     # after the kill: long enough for a commit that times out (5 s + 1 s)
NODE_EVENTS = (   # (label, pattern in the node log; {w} is the killed worker's index)
    ("supervisor saw the exit", r"worker {w} \(pid \d+\) exited with signal SIGKILL"),
    ("worker restarted", r"started worker {w} \(pid"),
    ("worker serving", r"worker {w} of node \d+ serving on"),
    ("coordinator registered it", r"worker {w} \(pid \d+\) serves on"),
    ("worker applied metadata", r"worker {w} applied the metadata log"),
)
SENT = struct.Struct(">d")  # each record starts with its send time (epoch s)
PAST_KILL = 50  # records past the log end at the kill: a commit made after it
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


@dataclass
class Trace:
    target: str
    killed_worker: int = -1
    killed_partitions: list[int] = field(default_factory=list)
    events: dict[str, float | None] = field(default_factory=dict)  # label -> s after kill


def node_events(log_text: str, worker: int, kill_t: float) -> dict[str, float | None]:
    """Seconds from `kill_t` to the first line of each NODE_EVENTS about `worker` after it."""
    out: dict[str, float | None] = {}
    for label, pattern in NODE_EVENTS:
        rx = re.compile(pattern.format(w=worker))
        out[label] = None
        for line in log_text.splitlines():
            m = LOG_TIME.match(line)
            if not m or not rx.search(line):
                continue
            t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if t >= kill_t - 0.05:
                out[label] = round(t - kill_t, 3)
                break
    return out


def _create_topic(admin: object, deadline_s: float = 30.0) -> None:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            admin.create_topic(TOPIC, partitions=4, replication_factor=1)  # type: ignore[attr-defined]
            return
        except Exception:  # noqa: BLE001 - the node may still be starting
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _committed_total(admin: object) -> int:
    desc = admin.describe_group(GROUP)  # type: ignore[attr-defined]
    return sum(max(p.committed, 0) for p in desc.offsets)


def trace_once(target: str, workdir: Path) -> Trace:
    """One node, one kill; the timeline of what happened after it."""
    from qnode.sdk import Admin, Consumer, Producer

    node = LocalNode.start(workdir / "logs", 2)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    result = Trace(target)
    try:
        admin = Admin(bootstrap=node.bootstrap)
        watcher = Admin(bootstrap=node.bootstrap)  # used by the commit watcher thread only
        producer = Producer(bootstrap=node.bootstrap, linger_ms=5, acks="all")
        consumer = Consumer(bootstrap=node.bootstrap, group_id=GROUP,
                            auto_offset_reset="earliest", enable_auto_commit=False)
        _create_topic(admin)
        consumer.subscribe([TOPIC])

        def trickle() -> None:
            pad = b"x" * 192
            while not stop.is_set():
                for _ in range(TRICKLE_PER_S // 50):
                    producer.send(TOPIC, value=SENT.pack(time.time()) + pad)
                stop.wait(0.02)

        kill_at: list[float] = []
        end_at_kill: list[int] = []
        commit_seen: list[float] = []

        def watch_commits() -> None:
            # Commits of records written after the kill: past the log end at the kill.
            while not stop.is_set() and not commit_seen:
                try:
                    total = _committed_total(watcher)
                except Exception:  # noqa: BLE001 - e.g. the offsets worker is restarting
                    total = -1
                if end_at_kill and total > end_at_kill[0] + PAST_KILL:
                    commit_seen.append(time.time())
                stop.wait(0.05)

        threads = [threading.Thread(target=trickle, daemon=True),
                   threading.Thread(target=watch_commits, daemon=True)]
        for t in threads:
            t.start()
        first_after: dict[int, float] = {}
        started = time.monotonic()
        while time.monotonic() - started < WARM_S + AFTER_S:
            records = consumer.poll(timeout=0.05, max_records=500)
            now = time.time()
            if kill_at:
                for r in records:
                    if SENT.unpack_from(r.value)[0] > kill_at[0]:
                        first_after.setdefault(r.partition, now)
            if records:
                consumer.commit_async()
            if not kill_at and time.monotonic() - started >= WARM_S:
                desc = admin.describe_topic(TOPIC)
                offsets_ep = offsets_endpoint(admin, GROUP)
                leaders = {p.id: p.endpoint for p in desc.partitions}
                victim = offsets_ep if target == "offsets" else next(
                    e for e in leaders.values() if e != offsets_ep)
                result.killed_partitions = sorted(p for p, e in leaders.items() if e == victim)
                pid = node.kill9_worker([victim])
                kill_at.append(time.time())
                end_at_kill.append(sum(max(p.high_watermark, 0) for p in desc.partitions))
                result.killed_worker = _worker_index(node, pid)
        kill_t = kill_at[0]
        stop.set()
        for t in threads:
            t.join(5)
        consumer.close()
        producer.close()
        admin.close()
        watcher.close()
        result.events = node_events(node.log_path.read_text(errors="replace"),
                                     result.killed_worker, kill_t)
        for p in range(4):
            t = first_after.get(p)
            whose = "killed worker's" if p in result.killed_partitions else "other worker's"
            result.events[f"partition {p} ({whose}): first post-kill record read"] = (
                None if t is None else round(t - kill_t, 3))
        result.events["commits of post-kill records visible"] = (
            round(commit_seen[0] - kill_t, 3) if commit_seen else None)
        return result
    finally:
        stop.set()
        node.stop()
        node.shm_leftovers()


def _worker_index(node: LocalNode, pid: int) -> int:
    """Index of the worker process `pid` (from the supervisor's "started worker N" line)."""
    m = re.search(rf"started worker (\d+) \(pid {pid}\)",
                  node.log_path.read_text(errors="replace"))
    return int(m.group(1)) if m else -1


def _fmt(values: list[float | None]) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "not seen"
    if len(values) == 1:
        return f"{got[0]:+.3f} s"
    missing = f" (not seen in {len(values) - len(got)})" if len(got) < len(values) else ""
    return (f"{min(got):+.3f} / {statistics.median(got):+.3f} / {max(got):+.3f} s"
            f"{missing}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=["offsets", "other"], default="offsets")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args(argv)
    traces = []
    with tempfile.TemporaryDirectory(prefix="qnode-restart-trace-") as tmp:
        for i in range(args.repeat):
            traces.append(trace_once(args.target, Path(tmp) / str(i)))
    labels = list(dict.fromkeys(k for t in traces for k in t.events))
    print(f"kill -9 of the worker {'holding' if args.target == 'offsets' else 'not holding'} "
          f"the group's offsets partition; {len(traces)} run(s)"
          f"{', min / median / max' if len(traces) > 1 else ''}; seconds after the kill:")
    for label in labels:
        print(f"  {label:58} {_fmt([t.events.get(label) for t in traces])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Consumer-group benchmark: rebalance time, offset commits/s, coordinator load time.

    python -m qnode.loadtest.bench_groups [--bootstrap tcp://...] [--skip rebalance,commits,load]

Without `--bootstrap` it starts its own node (`qnode start`, temporary data dir). Figures:

- rebalance: 10 members over 100 partitions; the 10th member joins (the trigger) and the
  clock stops when every member holds its final share and has polled again. For
  cooperative-sticky it also reports how many partitions stopped being fetched at all during
  the rebalance (only those that move should) and the longest poll gap of members that kept
  theirs;
- commits: pipelined OffsetCommit requests (one partition each) from several client
  processes to one coordinator, acknowledged commits per second (acks=-1 writes);
- load: 100,000 committed offsets, node restart, time until the coordinator has loaded them
  (from its log) and until a client reads them back.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from qnode.loadtest.local_node import LocalNode
from qnode.sdk import Admin, Consumer, TopicPartition
from qnode.sdk.connection import NetworkClient
from qnode.transport.api import ApiKey


def wait_ready(bootstrap: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with Admin(bootstrap=bootstrap, request_timeout_ms=1000) as admin:
                admin.list_topics()
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def coordinator_endpoint(client: NetworkClient, bootstrap: str, group: str) -> str:
    for _ in range(100):
        body = client.request(bootstrap, ApiKey.FIND_COORDINATOR,
                              {"key": group, "key_type": 0}).body
        if not body["error"]:
            return body["endpoint"]
        time.sleep(0.1)
    raise RuntimeError(f"no coordinator for {group}")


# ---------------------------------------------------------------- rebalance

class Member(threading.Thread):
    def __init__(self, bootstrap: str, topic: str, strategy: str, name: str) -> None:
        super().__init__(daemon=True, name=name)
        self.consumer = Consumer(bootstrap=bootstrap, group_id=f"bench-{strategy}",
                                 auto_offset_reset="earliest", client_id=name,
                                 partition_assignment_strategy=strategy,
                                 session_timeout_ms=10000, heartbeat_interval_ms=100,
                                 enable_auto_commit=False)
        self.topic = topic
        self.stop = threading.Event()
        self.samples: list[tuple[float, frozenset[TopicPartition]]] = []

    def run(self) -> None:
        c = self.consumer
        c.subscribe([self.topic])
        while not self.stop.is_set():
            c.poll(0.02)
            self.samples.append((time.monotonic(), frozenset(c.assignment())))
        c.close()


def rebalance(bootstrap: str, strategy: str, members: int = 10, partitions: int = 100) -> str:
    topic = f"rebalance-{strategy}"
    with Admin(bootstrap=bootstrap) as admin:
        admin.create_topic(topic, partitions=partitions)
    ms = [Member(bootstrap, topic, strategy, f"m{i}") for i in range(members - 1)]
    for m in ms:
        m.start()

    def settled(group: list[Member]) -> bool:
        latest = [m.samples[-1][1] if m.samples else frozenset() for m in group]
        union = frozenset().union(*latest)
        sizes = sorted(len(a) for a in latest)
        return (len(union) == partitions and sum(sizes) == partitions
                and sizes[-1] - sizes[0] <= 1)

    deadline = time.monotonic() + 60
    while not settled(ms):
        if time.monotonic() > deadline:
            raise RuntimeError("the first members never settled")
        time.sleep(0.05)
    time.sleep(0.5)
    before = {m.name: m.samples[-1][1] for m in ms}
    newcomer = Member(bootstrap, topic, strategy, f"m{members - 1}")
    t0 = time.monotonic()
    newcomer.start()  # the trigger
    everyone = ms + [newcomer]
    while not settled(everyone) or not newcomer.samples or not newcomer.samples[-1][1]:
        if time.monotonic() > t0 + 60:
            raise RuntimeError("the rebalance never settled")
        time.sleep(0.005)
    # when did each member first poll with its final assignment?
    done = max(next(t for t, a in m.samples if t >= t0 and a == m.samples[-1][1])
               for m in everyone)
    elapsed = done - t0
    # continuity: partitions of old members that were never revoked, and their poll gaps
    kept = stopped = 0
    worst_gap = 0.0
    for m in ms:
        final = m.samples[-1][1]
        during = [(t, a) for t, a in m.samples if t0 <= t <= done + 0.05]
        keep = before[m.name] & final
        kept += len(keep)
        stopped += len({tp for tp in before[m.name]
                        if any(tp not in a for _, a in during)})
        times = [t for t, a in during if keep <= a]
        if len(times) > 1:
            worst_gap = max(worst_gap, max(b - a for a, b in zip(times, times[1:], strict=False)))
    for m in everyone:
        m.stop.set()
    for m in everyone:
        m.join(10)
    return (f"rebalance {strategy:19s} {members} members/{partitions} partitions: "
            f"{elapsed * 1000:7.1f} ms trigger → all polling with final assignment; "
            f"old members kept {kept} partitions, {stopped} stopped at some point, "
            f"longest poll gap on kept partitions {worst_gap * 1000:.0f} ms")


# ---------------------------------------------------------------- commits/s

def _committer(bootstrap: str, index: int, seconds: float, window: int,
               out: Any) -> None:
    client = NetworkClient(f"committer-{index}", 30000)
    group = f"commit-bench-{index}"
    ep = coordinator_endpoint(client, bootstrap, group)
    acked = errors = 0
    sent = 0
    offset = 0

    def done(req: Any) -> None:
        nonlocal acked, errors
        if req.error is None and not req.response.body["topics"][0]["partitions"][0]["error"]:
            acked += 1
        else:
            errors += 1

    while True:  # the offsets topic may still be loading right after its creation
        body = client.request(ep, ApiKey.OFFSET_COMMIT, {"group_id": group, "topics": [
            {"name": "t", "partitions": [{"partition": 0, "offset": 0}]}]}).body
        if not body["topics"][0]["partitions"][0]["error"]:
            break
        time.sleep(0.05)
    start = time.monotonic()
    end = start + seconds
    while time.monotonic() < end:
        while sent - acked - errors < window:
            offset += 1
            client.send(ep, ApiKey.OFFSET_COMMIT, {
                "group_id": group, "generation_id": -1, "member_id": "",
                "topics": [{"name": "t", "partitions": [
                    {"partition": offset % 100, "offset": offset}]}]}, callback=done)
            sent += 1
        client.poll(5)
    while sent - acked - errors > 0 and time.monotonic() < end + 10:
        client.poll(10)
    out.put((acked, errors, time.monotonic() - start))
    client.close()


def commits(bootstrap: str, processes: int = 2, seconds: float = 5.0, window: int = 300) -> str:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_committer, args=(bootstrap, i, seconds, window, q))
             for i in range(processes)]
    for p in procs:
        p.start()
    results = [q.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join(10)
    acked = sum(r[0] for r in results)
    errors = sum(r[1] for r in results)
    elapsed = max(r[2] for r in results)
    return (f"commits: {acked / elapsed:,.0f} acknowledged offset commits/s "
            f"({processes} clients x {window} in flight, {errors} errors, {elapsed:.1f} s)")


# ---------------------------------------------------------------- load time

def load(log_dir: Path, offsets: int = 100_000, groups: int = 100) -> str:
    data_dir = Path(tempfile.mkdtemp(prefix="qnode-bench-groups-data-"))
    node = LocalNode.start(log_dir / "load", workers=2, data_dir=data_dir)
    try:
        wait_ready(node.bootstrap)
        client = NetworkClient("loader", 30000)
        per_group = offsets // groups
        t = time.monotonic()
        for g in range(groups):
            group = f"load-{g}"
            ep = coordinator_endpoint(client, node.bootstrap, group)
            for base in range(0, per_group, 1000):
                for _attempt in range(100):  # the coordinator may still be loading
                    body = client.request(ep, ApiKey.OFFSET_COMMIT, {
                        "group_id": group, "topics": [{"name": "t", "partitions": [
                            {"partition": p, "offset": p + 1}
                            for p in range(base, min(base + 1000, per_group))]}]}).body
                    errors = {p["error"] for p in body["topics"][0]["partitions"]} - {0}
                    if not errors:
                        break
                    time.sleep(0.05)
                else:
                    raise RuntimeError(f"commits of {group} keep failing: {errors}")
        write_s = time.monotonic() - t
        client.close()
        node.stop()
        log_path = node.log_path
        mark = log_path.stat().st_size
        node = LocalNode.start(log_dir / "load", data_dir=data_dir, workers=2)
        t0 = time.monotonic()
        wait_ready(node.bootstrap)
        client = NetworkClient("reader", 30000)
        for g in range(groups):
            group = f"load-{g}"
            ep = coordinator_endpoint(client, node.bootstrap, group)
            while True:
                body = client.request(ep, ApiKey.OFFSET_FETCH,
                                      {"group_id": group, "topics": None}).body
                if not body["error"]:
                    break
                time.sleep(0.01)
            got = sum(len(t["partitions"]) for t in body["topics"])
            assert got == per_group, (group, got)
        visible_s = time.monotonic() - t0
        client.close()
        text = log_path.read_text(errors="replace")[mark:]
        loads = [(int(n), float(s), float(w)) for n, s, w in re.findall(
            r"loaded __consumer_offsets-\d+: (\d+) records \(\d+ unreadable\) in ([\d.]+) s "
            r"\(([\d.]+) s after", text)]
        records = sum(n for n, _, _ in loads)
        slowest = max((s for _, s, _ in loads), default=0.0)
        slowest_read = max((w for _, _, w in loads), default=0.0)
        return (f"load: {offsets:,} offsets in {groups} groups written in {write_s:.1f} s; "
                f"after restart the coordinator loaded {records:,} records: last partition "
                f"done {slowest:.2f} s after coordinator start ({slowest_read:.2f} s after its "
                f"worker first answered); every offset readable by a client "
                f"{visible_s:.2f} s after the node was started")
    finally:
        node.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", help="an existing node (default: start one)")
    ap.add_argument("--skip", default="", help="comma list of rebalance,commits,load")
    ap.add_argument("--seconds", type=float, default=5.0, help="commit benchmark duration")
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    log_dir = Path(tempfile.mkdtemp(prefix="qnode-bench-groups-"))
    node = None
    bootstrap = args.bootstrap
    if bootstrap is None and not {"rebalance", "commits"} <= skip:
        node = LocalNode.start(log_dir, workers=2)
        bootstrap = node.bootstrap
        wait_ready(bootstrap)
    try:
        if "rebalance" not in skip:
            assert bootstrap is not None
            print(rebalance(bootstrap, "range"), flush=True)
            print(rebalance(bootstrap, "cooperative-sticky"), flush=True)
        if "commits" not in skip:
            assert bootstrap is not None
            print(commits(bootstrap, seconds=args.seconds), flush=True)
    finally:
        if node is not None:
            node.stop()
            shutil.rmtree(node.data_dir, ignore_errors=True)
    if "load" not in skip:
        print(load(log_dir), flush=True)
    shutil.rmtree(log_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Node memory as the backlog grows: does any process of a node grow with the data on disk?

Starts one node (`qnode start`, temporary data dir, free port: `local_node.LocalNode`), fills
a topic with 100-byte records until `--backlog` bytes of segments are on disk, and every
`--sample-every` bytes reads `/proc/<pid>/smaps_rollup` of the supervisor, the coordinator and
every worker. RSS alone says little for a broker that maps its segments: mapped file pages
are page cache (clean, shared, reclaimable) and count in RSS once touched. So the table
shows, per process, the anonymous memory (heap, Python objects, zmq buffers: what really
belongs to the process) next to PSS, and the file-backed part and the number of mapped
segment/index files apart. The verdict is the growth of anonymous memory from the first
sample at or past 1 GiB to the last one.

    python -m qnode.loadtest.bench_memory [--backlog 5GiB] [--sample-every 512MiB]
        [--partitions 8] [--segment-bytes N] [--workers W] [--sdk] [--read-back]

By default the records travel as ready-made RecordBatches of 100-byte records (`--batch-bytes`,
through the SDK's `NetworkClient`, pipelined) so that 5 GiB take about a minute; `--sdk`
sends them one by one through a `Producer` instead (several times slower). `--read-back` then
fetches the whole backlog from offset 0 (a consumer catching up), sampling again: that is
when old segments get mapped, and their pages must show up as file-backed, not anonymous,
memory. The node and its
data dir are removed at the end, on Ctrl-C and on SIGTERM too.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import psutil

from qnode.loadtest.bench_broker import prebuilt_batch
from qnode.loadtest.local_node import LocalNode, sweep_stale_data_dirs

GiB = 1 << 30
MiB = 1 << 20
TOPIC = "bench-memory"
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1 << 10, "m": 10**6, "mb": 10**6,
          "mib": MiB, "g": 10**9, "gb": 10**9, "gib": GiB, "t": 10**12, "tb": 10**12,
          "tib": 1 << 40}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")
_SEGMENT_FILE = re.compile(r"/\d{20}\.(log|index|timeindex)(\.\w+)?$")


class BenchMemoryError(RuntimeError):
    """The bench cannot run (no disk space, the node would not start or answer)."""


def parse_size(text: str) -> int:
    """Bytes from '5GiB', '512MiB', '1.5G' (decimal k/M/G, binary KiB/MiB/GiB), '1000'."""
    m = _SIZE.match(text)
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size (e.g. 5GiB, 512MiB, 1000000)")
    return int(float(m.group(1)) * _UNITS[unit])


# ------------------------------------------------------------------------------ /proc readers
@dataclass(frozen=True)
class MemSample:
    """One process's memory, in bytes (smaps_rollup), plus its mapped segment files."""

    rss: int
    pss: int
    anon: int  # Anonymous: private heap/stack/malloc arenas, what the process really holds
    pss_file: int  # file-backed pages (mapped segments, indexes, libraries): page cache
    pss_shmem: int  # POSIX shm (the partition table)
    uss: int  # Private_Clean + Private_Dirty
    mapped_files: int  # distinct segment .log/.index/.timeindex files mapped
    mapped_bytes: int  # address space of those mappings (virtual, not resident)
    fds: int


def read_smaps_rollup(pid: int) -> dict[str, int]:
    """The fields of /proc/<pid>/smaps_rollup in bytes ('Rss', 'Pss_Anon', ...)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[0].endswith(":") and parts[2] == "kB":
                out[parts[0][:-1]] = int(parts[1]) * 1024
    return out


def segment_mappings(pid: int) -> tuple[int, int]:
    """(distinct segment/index files mapped, bytes of address space they take)."""
    files: set[str] = set()
    size = 0
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) < 6:
                continue
            path = parts[5].strip().removesuffix(" (deleted)")
            if _SEGMENT_FILE.search(path):
                lo, hi = parts[0].split("-")
                size += int(hi, 16) - int(lo, 16)
                files.add(path)
    return len(files), size


def sample(pid: int) -> MemSample:
    r = read_smaps_rollup(pid)
    n, mapped = segment_mappings(pid)
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = -1
    return MemSample(
        rss=r.get("Rss", 0), pss=r.get("Pss", 0), anon=r.get("Anonymous", 0),
        pss_file=r.get("Pss_File", 0), pss_shmem=r.get("Pss_Shmem", 0),
        uss=r.get("Private_Clean", 0) + r.get("Private_Dirty", 0),
        mapped_files=n, mapped_bytes=mapped, fds=fds)


def node_processes(supervisor_pid: int) -> dict[str, int]:
    """'supervisor', 'coordinator', 'worker-<id>' → pid (children named by their argv)."""
    procs = {"supervisor": supervisor_pid}
    try:
        children = psutil.Process(supervisor_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return {}
    for child in children:
        try:
            argv = child.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "coordinator" in argv:
            procs["coordinator"] = child.pid
        elif "worker" in argv and argv.index("worker") + 1 < len(argv):
            procs[f"worker-{argv[argv.index('worker') + 1]}"] = child.pid
    return procs


@dataclass
class Row:
    """One sample of every node process at one backlog size."""

    backlog: int
    by_process: dict[str, MemSample]
    pids: dict[str, int]
    read: int = -1  # bytes of the backlog read back so far (-1: the write phase)

    def total(self, attr: str) -> int:
        return sum(getattr(s, attr) for s in self.by_process.values())


def take_row(backlog: int, supervisor_pid: int, read: int = -1) -> Row:
    pids = node_processes(supervisor_pid)
    samples = {}
    for name, pid in sorted(pids.items(), key=lambda kv: _order(kv[0])):
        try:
            samples[name] = sample(pid)
        except (FileNotFoundError, ProcessLookupError):
            pass  # a process restarting right now: missing from this row, visible in the table
    return Row(backlog, samples, pids, read)


def _order(name: str) -> tuple[int, str]:
    return ({"supervisor": 0, "coordinator": 1}.get(name, 2), name)


# ------------------------------------------------------------------------------ the report
@dataclass
class Verdict:
    anon_growth: int  # bytes, total anonymous memory from the first row >= 1 GiB to the last
    from_backlog: int
    to_backlog: int
    worst_process: str
    worst_growth: int
    restarted: list[str] = field(default_factory=list)
    file_growth: int = 0  # file-backed PSS (mapped segments: page cache), same span
    rss_growth: int = 0

    def line(self) -> str:
        return (f"verdict: anonymous memory of all node processes grew "
                f"{self.anon_growth / MiB:+.1f} MiB from {self.from_backlog / GiB:.2f} GiB to "
                f"{self.to_backlog / GiB:.2f} GiB of backlog (most: {self.worst_process} "
                f"{self.worst_growth / MiB:+.1f} MiB); file-backed PSS (page cache of mapped "
                f"segments) {self.file_growth / MiB:+.1f} MiB, RSS {self.rss_growth / MiB:+.1f} MiB"
                + (f"; restarted during the run: {', '.join(self.restarted)}"
                   if self.restarted else ""))


def verdict(rows: list[Row], start_at: int = GiB) -> Verdict:
    """Growth of anonymous memory between the first row at/after `start_at` and the last row
    of the write phase (rows of a read-back are judged by `read_verdict`)."""
    rows = [r for r in rows if r.read < 0]
    if not rows:
        raise ValueError("no samples")
    first = next((r for r in rows if r.backlog >= start_at), rows[0])
    last = rows[-1]
    worst, worst_growth = "-", 0
    for name, s in last.by_process.items():
        before = first.by_process.get(name)
        if before is not None and s.anon - before.anon >= worst_growth:
            worst, worst_growth = name, s.anon - before.anon
    restarted = sorted(n for n, pid in last.pids.items() if first.pids.get(n, pid) != pid)
    return Verdict(last.total("anon") - first.total("anon"), first.backlog, last.backlog,
                   worst, worst_growth, restarted,
                   last.total("pss_file") - first.total("pss_file"),
                   last.total("rss") - first.total("rss"))


def read_verdict(rows: list[Row]) -> str:
    """What reading the backlog back did: anonymous vs file-backed (page cache) growth."""
    reads = [r for r in rows if r.read >= 0]
    writes = [r for r in rows if r.read < 0]
    if not reads or not writes:
        return "read-back: not run"
    a, b = writes[-1], reads[-1]
    return (f"read-back of {b.read / GiB:.2f} GiB: anonymous "
            f"{(b.total('anon') - a.total('anon')) / MiB:+.1f} MiB, file-backed PSS "
            f"{(b.total('pss_file') - a.total('pss_file')) / MiB:+.1f} MiB (page cache of mapped "
            f"segments), RSS {(b.total('rss') - a.total('rss')) / MiB:+.1f} MiB (peak "
            f"{max(r.total('rss') for r in reads) / MiB:.1f} MiB in all), segment files "
            f"mapped {a.total('mapped_files')} -> {b.total('mapped_files')}")


def render(rows: list[Row]) -> str:
    """Backlog → per-process anon/PSS (MiB), totals, and what the segments take."""
    names = sorted({n for r in rows for n in r.by_process}, key=_order)
    short = {n: n.replace("supervisor", "sup").replace("coordinator", "coord")
             .replace("worker-", "w") for n in names}
    head = ["backlog GiB", "read GiB"] + [f"{short[n]} anon/PSS" for n in names] + [
        "total anon", "total PSS", "total RSS", "file PSS", "seg maps", "seg VM GiB", "fds"]
    lines = [" | ".join(head)]
    for r in rows:
        cells = [f"{r.backlog / GiB:11.2f}", f"{r.read / GiB:8.2f}" if r.read >= 0 else " " * 8]
        for n in names:
            s = r.by_process.get(n)
            cells.append(f"{s.anon / MiB:6.1f}/{s.pss / MiB:6.1f}" if s else "-")
        cells += [f"{r.total('anon') / MiB:8.1f}", f"{r.total('pss') / MiB:8.1f}",
                  f"{r.total('rss') / MiB:8.1f}", f"{r.total('pss_file') / MiB:8.1f}",
                  f"{r.total('mapped_files'):8d}", f"{r.total('mapped_bytes') / GiB:10.2f}",
                  f"{r.total('fds'):4d}"]
        lines.append(" | ".join(cells))
    lines.append("(MiB; anon = Anonymous of smaps_rollup; file PSS = mapped files, i.e. page "
                 "cache of segments, indexes and libraries, reclaimable; seg maps = segment "
                 "files mapped by the node's processes)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ filling
def backlog_bytes(data_dir: Path, topic: str) -> int:
    """Bytes of segment .log files of `topic` on disk (allocated blocks: an active segment's
    file is sparse to segment.bytes, with blocks reserved a few MiB ahead of its data)."""
    total = 0
    for d in data_dir.glob(f"{topic}-*"):
        if d.is_dir():
            for f in d.glob("*.log"):
                st = f.stat()
                total += min(st.st_size, st.st_blocks * 512)
    return total


class PrebuiltFiller:
    """Ready-made batches to every partition, pipelined through the SDK's NetworkClient."""

    def __init__(self, bootstrap: str, topic: str, batch_bytes: int, inflight: int = 4) -> None:
        from qnode.sdk import Admin
        from qnode.sdk.connection import NetworkClient

        with Admin(bootstrap) as admin:
            md = admin._fetch_metadata([topic])  # docs/internals.md §4: the admin's seam
        by_ep: dict[str, list[int]] = {}
        for p in md["topics"][0]["partitions"]:
            by_ep.setdefault(p["endpoint"], []).append(p["partition"])
        self.batch, _ = prebuilt_batch(batch_bytes, 100)
        self.requests = []
        # As many batches per request as fit in 1 MiB, round-robin over each worker's partitions
        per_request = max(1, MiB // len(self.batch))
        for ep, parts in by_ep.items():
            for i in range(0, len(parts), per_request):
                chunk = parts[i:i + per_request]
                body = {"acks": 1, "timeout_ms": 30000, "transactional_id": None,
                        "topics": [{"name": topic, "partitions": [
                            {"partition": p, "frame": k} for k, p in enumerate(chunk)]}]}
                self.requests.append((ep, body, [self.batch] * len(chunk)))
        self.client = NetworkClient("bench-memory", 60000)
        self.inflight = inflight
        self.error: Exception | None = None

    def _done(self, req: object) -> None:
        err = getattr(req, "error", None)
        resp = getattr(req, "response", None)
        if err is None and resp is not None:
            for t in resp.body.get("topics") or []:
                for p in t.get("partitions") or []:
                    if p.get("error"):
                        err = RuntimeError(f"produce to {t['name']}-{p['partition']}: "
                                           f"error {p['error']} {p.get('message', '')}")
        if err is not None and self.error is None:
            self.error = err

    def fill(self, nbytes: int) -> int:
        """Send about `nbytes` of batches and wait for every answer; bytes sent."""
        sent = 0
        i = 0
        client = self.client
        while sent < nbytes:
            ep, body, data = self.requests[i % len(self.requests)]
            while client.in_flight(ep) >= self.inflight:
                client.poll(1000)
            if self.error is not None:
                raise BenchMemoryError(f"the node refused a produce: {self.error}")
            client.send(ep, 0, body, data, callback=self._done)
            sent += len(self.batch) * len(data)
            i += 1
        while client.total_in_flight():
            client.poll(1000)
        if self.error is not None:
            raise BenchMemoryError(f"the node refused a produce: {self.error}")
        return sent

    def close(self) -> None:
        self.client.close()


class BacklogReader:
    """Reads the topic from offset 0 with raw Fetch requests (no record decoding), the way a
    consumer catching up on the backlog makes the workers map and send old segments."""

    def __init__(self, bootstrap: str, topic: str, partition_max_bytes: int = 4 * MiB) -> None:
        from qnode.sdk import Admin
        from qnode.sdk.connection import NetworkClient

        with Admin(bootstrap) as admin:
            md = admin._fetch_metadata([topic], include_offsets=True)
        self.topic = topic
        self.todo = [(p["endpoint"], p["partition"], p["high_watermark"])
                     for p in md["topics"][0]["partitions"]]
        self.offsets = {p: 0 for _, p, _ in self.todo}
        self.max_bytes = partition_max_bytes
        self.client = NetworkClient("bench-memory-reader", 60000)

    def read(self, nbytes: int) -> int:
        """Fetch about `nbytes` (round-robin over unfinished partitions); bytes read, 0 at end."""
        from qnode.storage.record_batch import iter_batches

        got = 0
        while got < nbytes:
            live = [(ep, p, hw) for ep, p, hw in self.todo if self.offsets[p] < hw]
            if not live:
                break
            for ep, p, _ in live:
                body = {"replica_id": -1, "max_wait_ms": 0, "min_bytes": 1,
                        "max_bytes": self.max_bytes, "isolation_level": 0,
                        "topics": [{"name": self.topic, "partitions": [
                            {"partition": p, "fetch_offset": self.offsets[p],
                             "partition_max_bytes": self.max_bytes,
                             "current_leader_epoch": -1}]}]}
                resp = self.client.request(ep, 1, body)
                entry = resp.body["topics"][0]["partitions"][0]
                if entry.get("error"):
                    raise BenchMemoryError(f"fetch {self.topic}-{p}: error {entry['error']} "
                                           f"{entry.get('message', '')}")
                data = b"".join(bytes(resp.data[k].buffer if hasattr(resp.data[k], "buffer")
                                      else resp.data[k]) for k in entry.get("frames") or [])
                if not data:
                    raise BenchMemoryError(f"fetch {self.topic}-{p} at {self.offsets[p]}: "
                                           "nothing below the high watermark")
                *_, last = iter_batches(data)
                self.offsets[p] = last.next_offset
                got += len(data)
        return got

    def close(self) -> None:
        self.client.close()


class SdkFiller:
    """Records one by one through a Producer (the whole client path)."""

    def __init__(self, bootstrap: str, topic: str, batch_bytes: int) -> None:
        from qnode.sdk import Producer

        self.topic = topic
        self.value = b"m" * 100
        self.producer = Producer(bootstrap, acks=1, linger_ms=5, batch_size=batch_bytes)

    def fill(self, nbytes: int) -> int:
        send, topic, value = self.producer.send, self.topic, self.value
        n = nbytes // 112  # ~ a 100-byte value's share of a batch on disk
        for _ in range(n):
            send(topic, value)
        self.producer.flush()
        return n * 112

    def close(self) -> None:
        self.producer.close()


def wait_ready(node: LocalNode, timeout_s: float = 60.0) -> None:
    """Until the supervisor prints its ready line (docs/internals.md §3)."""
    deadline = time.monotonic() + timeout_s
    while b" ready on " not in node.log_path.read_bytes():
        if node.proc.poll() is not None:
            raise BenchMemoryError(f"qnode start exited with {node.proc.returncode}: "
                                   f"{node.log_path.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise BenchMemoryError(f"the node was not ready within {timeout_s:.0f} s")
        time.sleep(0.05)


def check_disk(path: Path, need: int) -> None:
    free = shutil.disk_usage(path).free
    if free < need:
        raise BenchMemoryError(
            f"{path} has {free / GiB:.1f} GiB free; this run needs {need / GiB:.1f} GiB "
            f"(backlog plus margin): lower --backlog or free some space")


# ------------------------------------------------------------------------------ the run
def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(backlog: int, sample_every: int, partitions: int, segment_bytes: int | None,
        workers: int | None, batch_bytes: int, use_sdk: bool, read_back: bool = False,
        out: Callable[[str], None] = print) -> tuple[list[Row], Verdict]:
    tmp = Path(tempfile.gettempdir())
    sweep_stale_data_dirs(tmp)
    check_disk(tmp, int(backlog * 1.1) + GiB)
    log_dir = Path(tempfile.mkdtemp(prefix="qnode-bench-memory-logs-"))
    node = LocalNode.start(log_dir, workers=workers)
    filler: PrebuiltFiller | SdkFiller | None = None
    rows: list[Row] = []
    try:
        from qnode.sdk import Admin

        wait_ready(node)
        config = {"segment.bytes": str(segment_bytes)} if segment_bytes else {}
        with Admin(node.bootstrap, request_timeout_ms=60000) as admin:
            admin.create_topic(TOPIC, partitions, config=config, timeout=60)
        filler = (SdkFiller if use_sdk else PrebuiltFiller)(node.bootstrap, TOPIC, batch_bytes)
        out(f"node pid {node.proc.pid}, data dir {node.data_dir}, {partitions} partitions, "
            f"segment.bytes {segment_bytes or 'node default'}, "
            f"{'SDK records' if use_sdk else f'prebuilt {batch_bytes} B batches'}")
        rows.append(take_row(backlog_bytes(node.data_dir, TOPIC), node.proc.pid))
        out(f"  {rows[-1].backlog / GiB:.2f} GiB: anon {rows[-1].total('anon') / MiB:.1f} MiB")
        t0 = time.monotonic()
        while rows[-1].backlog < backlog:
            step = min(sample_every, backlog - rows[-1].backlog)
            filler.fill(step)
            time.sleep(0.5)  # let the workers' ticks (flush, checkpoints) run at this size
            rows.append(take_row(backlog_bytes(node.data_dir, TOPIC), node.proc.pid))
            r = rows[-1]
            out(f"  {r.backlog / GiB:.2f} GiB after {time.monotonic() - t0:.0f} s: "
                f"anon {r.total('anon') / MiB:.1f} MiB, PSS {r.total('pss') / MiB:.1f} MiB, "
                f"RSS {r.total('rss') / MiB:.1f} MiB")
        if read_back:
            reader = BacklogReader(node.bootstrap, TOPIC)
            done = 0
            try:
                while True:
                    n = reader.read(sample_every)
                    if not n:
                        break
                    done += n
                    rows.append(take_row(rows[-1].backlog, node.proc.pid, read=done))
                    out(f"  read {done / GiB:.2f} GiB: anon {rows[-1].total('anon') / MiB:.1f} "
                        f"MiB, file PSS {rows[-1].total('pss_file') / MiB:.1f} MiB")
            finally:
                reader.close()
        out("")
        out(render(rows))
        v = verdict(rows)
        out(v.line())
        if read_back:
            out(read_verdict(rows))
        return rows, v
    finally:
        if filler is not None:
            filler.close()
        node.stop()
        node.shm_leftovers(unlink=True)
        shutil.rmtree(node.data_dir, ignore_errors=True)
        shutil.rmtree(log_dir, ignore_errors=True)


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backlog", type=parse_size, default=5 * GiB, help="default 5GiB")
    ap.add_argument("--sample-every", type=parse_size, default=GiB // 2, help="default 512MiB")
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--segment-bytes", type=parse_size, default=None,
                    help="topic segment.bytes (default: the node's, 1 GiB)")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--batch-bytes", type=parse_size, default=256 * 1024)
    ap.add_argument("--sdk", action="store_true", help="send records through a Producer")
    ap.add_argument("--read-back", action="store_true",
                    help="then fetch the whole backlog from offset 0, sampling as it goes")
    args = ap.parse_args(list(argv) if argv is not None else None)
    old = signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM cleans up like Ctrl-C
    try:
        _, v = run(args.backlog, args.sample_every, args.partitions, args.segment_bytes,
                   args.workers, args.batch_bytes, args.sdk, args.read_back)
    except BenchMemoryError as exc:
        print(f"bench_memory: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench_memory: interrupted; node stopped and data dir removed", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)
    return 0


if __name__ == "__main__":
    sys.exit(main())

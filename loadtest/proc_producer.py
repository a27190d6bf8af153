"""A load-test producer: one OS process, one real SDK `Producer`, paced to the rate it is told.

Started by users.ProduceUser (`python -m qnode.loadtest.proc_producer CONFIG_JSON`); see
channel.py for why it is a process of its own. Every record carries its id and send time
(payload.py). When the broker acknowledges a record its id goes to the acked id log (for
verify.py) and a produce event (send -> ack latency, size, error) goes to Locust.
"""

from __future__ import annotations

import collections
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qnode.loadtest.channel import ChildChannel, child_main
from qnode.loadtest.payload import PayloadFactory, make_id
from qnode.loadtest.verify import IdLog, acked_log

MAX_SENDS_PER_ROUND = 512
MAX_WAIT_S = 0.005
# Sends go out in rounds at least this far apart: a wait rounded down to 0 ms made the loop
# spin (measured: ~280 ms of CPU per 1,000 records at 2,500 records/s, most of it polling).
MIN_WAIT_S = 0.002


@dataclass
class ProducerConfig:
    endpoint: str
    bootstrap: str
    topic: str
    index: int
    record_size: int
    ids_dir: str
    producer: dict[str, Any] = field(default_factory=dict)  # keyword args of sdk.Producer
    flush_timeout_s: float = 120.0
    max_records: int | None = None  # send no more than this many in all (a byte budget)


class AckTracker:
    """Collects send outcomes: by future callback (SDK thread) or by polling pending futures."""

    def __init__(self) -> None:
        self.done: collections.deque = collections.deque()
        self.pending: collections.deque = collections.deque()

    def watch(self, fut: Any, rid: int, start: float, nbytes: int) -> None:
        if hasattr(fut, "add_done_callback"):
            fut.add_done_callback(lambda f: self.done.append((rid, start, nbytes, f, time.time())))
        else:
            self.pending.append((rid, start, nbytes, fut))

    def harvest(self) -> None:
        while self.pending and self.pending[0][3].done():
            rid, start, nbytes, fut = self.pending.popleft()
            self.done.append((rid, start, nbytes, fut, time.time()))


def _error_of(fut: Any) -> str | None:
    exc = fut.exception() if hasattr(fut, "exception") else None
    return None if exc is None else f"{type(exc).__name__}: {exc}"


def _report(tracker: AckTracker, log: IdLog, ch: ChildChannel, counts: dict[str, int]) -> None:
    tracker.harvest()
    done = tracker.done
    acked = 0
    while done:
        rid, start, nbytes, fut, acked_at = done.popleft()
        err = _error_of(fut)
        if err is None:
            log.append(rid)
            acked += 1
            ch.record(acked_at, (acked_at - start) * 1000.0, nbytes)
        else:
            counts["failed"] += 1
            ch.failure(start, (acked_at - start) * 1000.0, nbytes, err)
    counts["acked"] += acked


def run(cfg: ProducerConfig, ch: ChildChannel) -> dict[str, int]:
    from qnode.sdk import Producer  # here, so a broken SDK is reported over the channel

    factory = PayloadFactory(cfg.record_size)
    log = acked_log(Path(cfg.ids_dir), cfg.index)
    tracker = AckTracker()
    counts = {"sent": 0, "acked": 0, "failed": 0}
    rate = 0.0
    anchor, anchor_seq = time.monotonic(), 0
    seq = 0
    with Producer(bootstrap=cfg.bootstrap, **cfg.producer) as producer:
        ch.send({"op": "ready", "pid": os.getpid()})
        stopping = False
        while not stopping:
            wait = MAX_WAIT_S if rate != 0 else 0.05
            if rate > 0:
                due_at = anchor + (seq - anchor_seq + 1) / rate
                wait = min(MAX_WAIT_S, max(MIN_WAIT_S, due_at - time.monotonic()))
            for msg in ch.poll_control(wait):
                if msg["op"] == "rate" and msg["rate"] != rate:
                    rate = float(msg["rate"])
                    anchor, anchor_seq = time.monotonic(), seq
                elif msg["op"] == "stop":
                    stopping = True
            if stopping or ch.orphaned():
                break
            if rate < 0:
                n = MAX_SENDS_PER_ROUND
            elif rate > 0:
                n = min(MAX_SENDS_PER_ROUND,
                        int((time.monotonic() - anchor) * rate) - (seq - anchor_seq))
            else:
                n = 0
            if cfg.max_records is not None:
                n = min(n, cfg.max_records - seq)
            for _ in range(n):
                rid = make_id(cfg.index, seq)
                sent_ns = time.time_ns()
                fut = producer.send(cfg.topic, value=factory.build(rid, sent_ns))
                tracker.watch(fut, rid, sent_ns / 1e9, cfg.record_size)
                seq += 1
            counts["sent"] = seq
            _report(tracker, log, ch, counts)
            ch.maybe_flush()
        producer.flush(timeout=cfg.flush_timeout_s)
    # Closing the producer waited for every outstanding answer; report them all.
    _report(tracker, log, ch, counts)
    counts["unanswered"] = len(tracker.pending)
    log.close()
    return counts


def main(argv: list[str] | None = None) -> int:
    return child_main(sys.argv[1:] if argv is None else argv, ProducerConfig, run)


if __name__ == "__main__":
    sys.exit(main())

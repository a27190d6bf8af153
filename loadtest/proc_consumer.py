"""A load-test consumer: one OS process, one real SDK `Consumer` in a group, at a fixed pace.

Started by users.ConsumeUser (`python -m qnode.loadtest.proc_consumer CONFIG_JSON`); see
channel.py for why it is a process of its own. It "processes" at most `process_rate` records/s
(the downstream service whose pace the broker protects; <= 0: as fast as it can), logs the id
of every record it processed (for verify.py), reports each record (end-to-end latency = now -
the send time in the payload), and commits after each polled batch -- asynchronously, so a
slow commit does not stall processing; synchronously when partitions are revoked and before
it leaves -- so the lag the broker reports is what is left to process, give or take one
commit in flight. The pace is a schedule
(pacer.py) that makes up for short stalls, so the rate holds per second, not only on average.
A stretch in which it was behind yet got no records is logged with wall-clock times.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qnode.loadtest.channel import ChildChannel, child_main
from qnode.loadtest.pacer import Pacer
from qnode.loadtest.payload import decode
from qnode.loadtest.verify import consumed_log

# A poll that waited this long for records while behind is logged (with times), so a
# pause of the consumers (e.g. around a worker restart) can be traced to its cause.
STALL_LOG_S = 0.5
DROP_LOG_S = 0.1  # pace given up (a stall longer than the pacer makes up for) worth a line


@dataclass
class ConsumerConfig:
    endpoint: str
    bootstrap: str
    topic: str
    group: str
    index: int
    ids_dir: str
    process_rate: float = 0.0
    max_records: int = 500
    poll_timeout_s: float = 0.05
    consumer: dict[str, Any] | None = None  # extra keyword args of sdk.Consumer


class PacedConsumer:
    """The loop of one load-test consumer: poll, process at the pace, log ids, commit."""

    def __init__(self, cfg: ConsumerConfig, ch: ChildChannel, consumer: Any) -> None:
        self.cfg = cfg
        self.ch = ch
        self.consumer = consumer
        self.log = consumed_log(Path(cfg.ids_dir), cfg.group, cfg.index)
        self.pacer = Pacer(cfg.process_rate)
        self.counts = {"consumed": 0, "commits": 0, "assignments": 0, "revocations": 0,
                       "stalls": 0}
        self.assigned = False
        self.caught_up = True  # the last poll returned less than it may: nothing buffered
        self.last_full_at: float | None = None  # when a poll last came back full (behind)

    def note(self, msg: str) -> None:
        self.ch.send({"op": "log", "msg": f"consumer {self.cfg.index}: {msg}"})

    def on_assign(self, partitions: Any) -> None:
        self.counts["assignments"] += 1
        self.assigned = True
        self.note(f"assigned {_names(partitions)}")

    def on_revoke(self, partitions: Any) -> None:
        # Everything poll() returned has been processed: commit it before another member
        # takes these partitions over, so that it neither skips nor repeats a record.
        from qnode.sdk.errors import QnodeError

        self.counts["revocations"] += 1
        try:
            self.commit_sync("revoke")
        except QnodeError as e:  # the verifier then finds what was read twice, if anything
            self.note(f"commit on revoke failed: {e}")

    def commit_sync(self, why: str) -> None:
        began = time.time()
        self.consumer.commit()
        self.counts["commits"] += 1
        took = time.time() - began
        if took > STALL_LOG_S:
            self.note(f"commit ({why}) took {took:.3f} s (from {_clock(began)})")

    def run(self) -> dict[str, int]:
        cfg, ch = self.cfg, self.ch
        self.consumer.subscribe([cfg.topic], on_assign=self.on_assign, on_revoke=self.on_revoke)
        ready = False
        while not (any(m["op"] == "stop" for m in ch.poll_control(0)) or ch.orphaned()):
            records = self.consumer.poll(timeout=cfg.poll_timeout_s,
                                         max_records=cfg.max_records)
            if not ready and self.assigned:
                ready = True
                ch.send({"op": "ready", "pid": os.getpid()})
            if records:
                self.process(records)
            else:
                self.pacer.idle()
                self.caught_up = True
            ch.maybe_flush()
        if self.consumer.assignment():
            self.commit_sync("close")  # what was processed is committed before we leave
        self.log.close()
        return {**self.counts, "schedule_dropped_ms": round(self.pacer.dropped_s * 1000)}

    def process(self, records: list[Any]) -> None:
        pacer, ch = self.pacer, self.ch
        if self.caught_up:
            # The last poll emptied what was fetched: waiting for these records was
            # waiting for data, not a stall to make up for (no sprint into a burst).
            pacer.idle()
        now = time.time()
        if self.last_full_at is not None and now - self.last_full_at > STALL_LOG_S:
            self.counts["stalls"] += 1
            self.note(f"behind, yet no records from {_clock(self.last_full_at)} to "
                      f"{_clock(now)} ({now - self.last_full_at:.3f} s)")
        dropped = pacer.dropped_s
        for record in records:
            pacer.take()
            rid, sent_ns = decode(record.value)
            self.log.append(rid)
            now = time.time()
            ch.record(now, now * 1000.0 - sent_ns / 1e6, len(record.value))
        self.counts["consumed"] += len(records)
        if pacer.dropped_s - dropped > DROP_LOG_S:
            self.note(f"stalled, {pacer.dropped_s - dropped:.3f} s of pace lost by "
                      f"{_clock(now)}")
        # Asynchronous, as a service that must keep its pace commits: a commit the
        # coordinator is slow to write (e.g. its offsets partition's worker was killed)
        # delays the lag the broker reports, not the processing.
        self.consumer.commit_async()
        self.counts["commits"] += 1
        self.caught_up = len(records) < self.cfg.max_records
        self.last_full_at = None if self.caught_up else time.time()


def run(cfg: ConsumerConfig, ch: ChildChannel) -> dict[str, int]:
    from qnode.sdk import Consumer  # here, so a broken SDK is reported over the channel

    options = {"group_id": cfg.group, "auto_offset_reset": "earliest",
               "enable_auto_commit": False, "client_id": f"loadtest-consumer-{cfg.index}",
               **(cfg.consumer or {})}
    with Consumer(bootstrap=cfg.bootstrap, **options) as consumer:
        return PacedConsumer(cfg, ch, consumer).run()


def _clock(t: float) -> str:
    """Wall-clock time of day with milliseconds, to line up with the node's log."""
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"


def _names(partitions: Any) -> str:
    try:
        return ",".join(f"{tp.topic}-{tp.partition}" for tp in partitions)
    except (TypeError, AttributeError):
        return repr(partitions)


def main(argv: list[str] | None = None) -> int:
    return child_main(sys.argv[1:] if argv is None else argv, ConsumerConfig, run)


if __name__ == "__main__":
    sys.exit(main())

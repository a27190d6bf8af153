"""A load-test consumer: one OS process, one real SDK `Consumer` in a group, at a fixed pace.

Started by users.ConsumeUser (`python -m qnode.loadtest.proc_consumer CONFIG_JSON`); see
channel.py for why it is a process of its own. It "processes" at most `process_rate` records/s
(the downstream service whose pace the broker protects; <= 0: as fast as it can), logs the id
of every record it processed (for verify.py), reports a consume event per record (end-to-end
latency = now - the send time in the payload), and commits synchronously after each polled
batch, so that the lag the broker reports is exactly what is left to process.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qnode.loadtest.channel import ChildChannel, child_main
from qnode.loadtest.payload import decode
from qnode.loadtest.verify import consumed_log

# Credit a paced consumer may bank while idle: after a pause it must not sprint.
MAX_CREDIT_S = 0.05
MIN_SLEEP_S = 0.002


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


class Pacer:
    """Lets `rate` records/s through (token bucket with a small cap); rate <= 0: no limit."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next_slot = time.monotonic()

    def take(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        self.next_slot = max(self.next_slot, now - MAX_CREDIT_S) + self.interval
        ahead = self.next_slot - now
        if ahead > MIN_SLEEP_S:
            time.sleep(ahead)


def run(cfg: ConsumerConfig, ch: ChildChannel) -> dict[str, int]:
    from qnode.sdk import Consumer  # here, so a broken SDK is reported over the channel

    log = consumed_log(Path(cfg.ids_dir), cfg.group, cfg.index)
    pacer = Pacer(cfg.process_rate)
    counts = {"consumed": 0, "commits": 0, "assignments": 0, "revocations": 0}
    assigned: list[Any] = []

    def on_assign(partitions: Any) -> None:
        counts["assignments"] += 1
        assigned.append(partitions)
        ch.send({"op": "log", "msg": f"consumer {cfg.index} assigned {_names(partitions)}"})

    def on_revoke(partitions: Any) -> None:
        counts["revocations"] += 1

    options = {"group_id": cfg.group, "auto_offset_reset": "earliest",
               "enable_auto_commit": False, "client_id": f"loadtest-consumer-{cfg.index}",
               **(cfg.consumer or {})}
    with Consumer(bootstrap=cfg.bootstrap, **options) as consumer:
        consumer.subscribe([cfg.topic], on_assign=on_assign, on_revoke=on_revoke)
        ready = False
        while True:
            stop = any(m["op"] == "stop" for m in ch.poll_control(0))
            if stop or ch.orphaned():
                break
            records = consumer.poll(timeout=cfg.poll_timeout_s, max_records=cfg.max_records)
            if not ready and assigned:
                ready = True
                ch.send({"op": "ready", "pid": os.getpid()})
            for record in records:
                pacer.take()
                rid, sent_ns = decode(record.value)
                log.append(rid)
                sent = sent_ns / 1e9
                ch.event(sent, (time.time() - sent) * 1000.0, len(record.value), None)
            if records:
                counts["consumed"] += len(records)
                consumer.commit()
                counts["commits"] += 1
            ch.maybe_flush()
    log.close()
    return counts


def _names(partitions: Any) -> str:
    try:
        return ",".join(f"{tp.topic}-{tp.partition}" for tp in partitions)
    except (TypeError, AttributeError):
        return repr(partitions)


def main(argv: list[str] | None = None) -> int:
    return child_main(sys.argv[1:] if argv is None else argv, ConsumerConfig, run)


if __name__ == "__main__":
    sys.exit(main())

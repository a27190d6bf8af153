"""What one scenario run shares between its runner, shape and Locust users.

The runner builds a `ScenarioContext` and hangs it on the Locust `Environment` (as
`environment.qnode`); users launch their child processes through it, the shape reads and
the runner updates its `progress`, and everything that happens lands in its `timeline`.
Nothing here is global: two runs in one process would have two contexts.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qnode.loadtest.client_process import ClientProcess, MessageHandler
from qnode.loadtest.schedule import Progress
from qnode.loadtest.timeline import Timeline

log = logging.getLogger("qnode.loadtest")


@dataclass
class WorkloadConfig:
    """The workload every user of one run shares."""

    bootstrap: str
    topic: str
    group: str
    record_size: int = 200
    partitions: int = 4
    consume_rate: float = 0.0  # records/s per consumer; <= 0: as fast as it can
    max_records: int = 500
    producer: dict[str, Any] = field(default_factory=dict)  # sdk.Producer keyword args
    consumer: dict[str, Any] = field(default_factory=dict)  # extra sdk.Consumer keyword args
    ready_timeout_s: float = 60.0
    stop_timeout_s: float = 120.0
    records_per_producer: int | None = None  # a cap, e.g. the backlog scenario's byte budget


class ScenarioContext:
    def __init__(self, workload: WorkloadConfig, results_dir: Path, t0: float) -> None:
        self.workload = workload
        self.results_dir = results_dir
        self.ids_dir = results_dir / "ids"
        self.logs_dir = results_dir / "logs"
        self.progress = Progress()
        self.timeline = Timeline(t0)
        self.failures: list[str] = []
        self.clients: list[ClientProcess] = []
        self._next_index = {"producer": 0, "consumer": 0}
        self.shape: Any = None  # the LoadTestShape, set by the runner

    # -- child processes ------------------------------------------------------------------
    def _index(self, role: str) -> int:
        i = self._next_index[role]
        self._next_index[role] = i + 1
        return i

    def launch_producer(self, on_message: MessageHandler) -> ClientProcess:
        w = self.workload
        index = self._index("producer")
        cfg = {"bootstrap": w.bootstrap, "topic": w.topic, "index": index,
               "record_size": w.record_size, "ids_dir": str(self.ids_dir),
               "producer": w.producer, "flush_timeout_s": w.stop_timeout_s,
               "max_records": w.records_per_producer}
        client = ClientProcess(f"producer-{index}", "qnode.loadtest.proc_producer", cfg,
                               self.logs_dir, on_message)
        self.clients.append(client)
        self.progress.live_producers += 1
        return client

    def launch_consumer(self, on_message: MessageHandler) -> ClientProcess:
        w = self.workload
        index = self._index("consumer")
        cfg = {"bootstrap": w.bootstrap, "topic": w.topic, "group": w.group, "index": index,
               "ids_dir": str(self.ids_dir), "process_rate": w.consume_rate,
               "max_records": w.max_records, "consumer": w.consumer}
        client = ClientProcess(f"consumer-{index}", "qnode.loadtest.proc_consumer", cfg,
                               self.logs_dir, on_message)
        self.clients.append(client)
        return client

    def producer_finished(self) -> None:
        self.progress.live_producers -= 1
        assert self.progress.live_producers >= 0
        if self.progress.live_producers == 0:
            self.progress.producers_done_at = time.time()

    # -- outcomes -------------------------------------------------------------------------
    def fail(self, why: str) -> None:
        log.error("%s", why)
        self.failures.append(why)

    def note(self, msg: str) -> None:
        log.info("%s", msg)

    def mark_event(self, label: str) -> None:
        self.timeline.mark(time.time(), "event", label)
        self.note(label)

    def stop_all(self) -> None:
        """Stop every child still running (cleanly if it can), then reap them."""
        for client in self.clients:
            if not client.finished:
                client.send({"op": "stop"})
        for client in self.clients:
            if not client.finished:
                client.stop(self.workload.stop_timeout_s)
            client.close()

"""Locust users that drive the real qnode SDK and report every record to Locust.

`ProduceUser` and `ConsumeUser` each own one child process running an SDK `Producer` or a
group `Consumer` (channel.py says why a process: Locust's gevent patching and the SDK's
blocking zmq threads do not mix). The user's task pumps what its child reports: every record
counts in Locust's statistics as one request (merged a batch at a time, batch_stats.py says
how and why; failed ones are fired one by one), so Locust's statistics, CSV files and failure
tables work as they do for HTTP:

    request_type "produce": name = topic, response_time = send -> acknowledgement (ms),
                            response_length = record bytes, exception = the send's error
    request_type "consume": name = topic, response_time = end to end, send -> processed (ms),
                            response_length = record bytes

The produce rate comes from the scenario's shape (`shape.produce_rate_per_user()`), read on
every task run, so a burst in the shape is a burst on the wire within a few milliseconds.
They need `environment.qnode`, a context.ScenarioContext (the runner sets it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from locust import User, constant, task
from locust.exception import StopUser

from qnode.loadtest.batch_stats import log_batch
from qnode.loadtest.channel import records_of
from qnode.loadtest.client_process import ClientProcess, ClientProcessError
from qnode.loadtest.context import ScenarioContext
from qnode.loadtest.timeline import CONSUME, PRODUCE

PUMP_WAIT_S = 0.05


class SendError(Exception):
    """A produce the SDK reported as failed (the message is the SDK's error)."""


class QnodeUser(User):
    abstract = True
    wait_time = constant(0)
    request_type = ""

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.ctx: ScenarioContext = environment.qnode
        self.client: ClientProcess | None = None
        self._errors: dict[str, SendError] = {}

    def launch(self) -> ClientProcess:
        raise NotImplementedError

    def on_start(self) -> None:
        self.client = self.launch()
        try:
            self.client.wait_ready(self.ctx.workload.ready_timeout_s)
        except ClientProcessError as e:
            if self.client.fatal is None:  # a fatal message was reported as it arrived
                self.ctx.fail(str(e))
            raise StopUser() from e  # Locust then runs on_stop, which reaps the child
        self.on_ready()

    def on_ready(self) -> None:
        """Hook run once the child said ready."""

    def on_message(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "ev":
            self.on_records(*records_of(msg))
            for start, rt, nbytes, err in msg["fail"]:
                exc = self._errors.get(err)
                if exc is None:
                    exc = self._errors[err] = SendError(err)
                self.environment.events.request.fire(
                    request_type=self.request_type, name=self.ctx.workload.topic,
                    response_time=rt, response_length=nbytes, exception=exc, context={},
                    start_time=start)
        elif op == "log":
            self.ctx.note(msg["msg"])
        elif op == "fatal":
            self.ctx.fail(f"{self.client.name if self.client else '?'} failed:\n{msg['msg']}")

    def on_records(self, done_s: np.ndarray, rt_ms: np.ndarray, sizes: np.ndarray) -> None:
        """A batch of successful records: into Locust's stats and the timeline at once."""
        topic = self.ctx.workload.topic
        log_batch(self.environment.stats, self.request_type, topic, done_s, rt_ms, sizes)
        self.ctx.timeline.add_batch(self.request_type, done_s, rt_ms, sizes)

    @task
    def pump(self) -> None:
        assert self.client is not None
        self.before_pump()
        self.client.pump(PUMP_WAIT_S)
        if self.client.finished:
            self.client.settle()
            if self.client.stats is None and self.client.fatal is None:
                self.ctx.fail(f"{self.client.name} stopped unasked (log: {self.client.log_path})")
            raise StopUser()

    def before_pump(self) -> None:
        """Hook run before each pump (producers pass the shape's rate on)."""

    def on_stop(self) -> None:
        if self.client is not None and not self.client.finished:
            self.client.stop(self.ctx.workload.stop_timeout_s)
        self.after_stop()

    def after_stop(self) -> None:
        """Hook run once the child is gone."""


class ProduceUser(QnodeUser):
    """One SDK Producer (its own process) writing ids at the shape's current rate."""

    abstract = True
    request_type = PRODUCE

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self._rate: float | None = None
        self._stopped = False

    def launch(self) -> ClientProcess:
        return self.ctx.launch_producer(self.on_message)

    def on_ready(self) -> None:
        self.ctx.progress.ready_producers += 1

    def on_records(self, done_s: np.ndarray, rt_ms: np.ndarray, sizes: np.ndarray) -> None:
        self.ctx.progress.acked_bytes += int(sizes.sum(dtype=np.int64))
        super().on_records(done_s, rt_ms, sizes)

    def before_pump(self) -> None:
        shape = self.ctx.shape
        rate = shape.produce_rate_per_user() if shape is not None else 0.0
        if rate != self._rate:
            assert self.client is not None
            self.client.send({"op": "rate", "rate": rate})
            self._rate = rate

    def after_stop(self) -> None:
        if not self._stopped and self.client is not None:
            self._stopped = True
            self.ctx.producer_finished()


class ConsumeUser(QnodeUser):
    """One SDK Consumer of the scenario's group (its own process), at a fixed pace."""

    abstract = True
    request_type = CONSUME

    def launch(self) -> ClientProcess:
        return self.ctx.launch_consumer(self.on_message)

    def on_ready(self) -> None:
        self.ctx.progress.ready_consumers += 1


def user_classes(producers: int, consumers: int) -> tuple[type[ProduceUser], type[ConsumeUser]]:
    """Concrete classes for one run, with Locust's `fixed_count` set to the scenario's counts."""
    produce = type("ProduceUser", (ProduceUser,), {"abstract": False, "fixed_count": producers})
    consume = type("ConsumeUser", (ConsumeUser,), {"abstract": False, "fixed_count": consumers})
    return produce, consume

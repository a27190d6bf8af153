"""The link between a load-generating OS process and the Locust process that started it.

Why separate processes: Locust monkey-patches the standard library for gevent, so in its
process `threading.Thread` is a greenlet and every thread shares one OS thread. The SDK's
background threads block inside libzmq (poll/recv), which gevent cannot see: one blocking
call freezes every greenlet -- Locust's users, its stats timer, the shape -- for as long as
it waits (measured: a 1 s zmq poll in an SDK-like thread stalls a 50 ms greenlet timer for
1.0 s). zmq.green only helps code that uses it, and the SDK rightly uses plain pyzmq and real
threads. So each Locust user owns one unpatched child process running the real SDK; the
child streams what happened back over a ZeroMQ PAIR socket, which the Locust side reads with
zmq.green (cooperative). This also lets the load generator use more than one core.

Messages are msgpack maps, child -> parent:
    {"op": "ready", "pid"}                       the client is set up (consumers: assigned)
    {"op": "ev", "done": f64[], "rt": f64[], "size": u32[], "fail": [[start_s, rt_ms,
     nbytes, error], ...]}                        records since the last one (see below)
    {"op": "log", "msg"}                          something worth a line in the runner's log
    {"op": "lag", "t", "lag", "log_end"}          (monitor) a sample read from the broker
    {"op": "done", "stats": {...}}                the child flushed everything and exits 0
    {"op": "fatal", "msg"}                        the child failed and exits 1
and parent -> child: {"op": "rate", "rate": records/s} and {"op": "stop"}.

An "ev" message reports every record done since the last one, as three packed native arrays
(`array` bytes: when each was done, epoch s; its latency, ms; its size) plus the few failed
ones in full. Packed arrays, not a list per record: at ten thousand records a second the
load generator's own per-record cost must stay small next to the SDK's and the broker's.

This module is the child's side (and `records_of` reads its "ev" messages); it imports plain
pyzmq only (never gevent or Locust).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
import traceback
from array import array
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import msgpack
import numpy as np
import zmq

LOG_LEVEL_ENV = "QNODE_LOADTEST_LOG"  # a logging level for the children (and the SDK in them)
FLUSH_INTERVAL_S = 0.1  # per-batch cost on the Locust side is ~85 us: batches of 100s
FLUSH_EVENTS = 2000


class ChildChannel:
    """Child side: collects what each record did, sends it in batches, receives control."""

    def __init__(self, endpoint: str) -> None:
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PAIR)
        self._sock.setsockopt(zmq.LINGER, 5000)
        self._sock.connect(endpoint)
        self._done = array("d")
        self._rt = array("d")
        self._size = array("I")
        self._failed: list[list[Any]] = []
        self._last_flush = time.monotonic()
        self._parent = os.getppid()
        self._terminated = False
        # A Ctrl-C reaches the whole process group; the runner then stops us in order (so
        # that every id we logged is flushed). SIGTERM asks for the same clean stop.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self._terminated = True

    def send(self, msg: dict[str, Any]) -> None:
        self._sock.send(msgpack.packb(msg))

    def record(self, done_s: float, rt_ms: float, nbytes: int) -> None:
        """One record done (acknowledged, or processed) at `done_s`, `rt_ms` after it began."""
        self._done.append(done_s)
        self._rt.append(rt_ms)
        self._size.append(nbytes)
        if len(self._done) >= FLUSH_EVENTS:
            self.flush()

    def failure(self, start_s: float, rt_ms: float, nbytes: int, error: str) -> None:
        self._failed.append([start_s, rt_ms, nbytes, error])

    def maybe_flush(self) -> None:
        if (self._done or self._failed) and \
                time.monotonic() - self._last_flush >= FLUSH_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        if self._done or self._failed:
            self.send({"op": "ev", "done": self._done.tobytes(), "rt": self._rt.tobytes(),
                       "size": self._size.tobytes(), "fail": self._failed})
            self._done, self._rt, self._size = array("d"), array("d"), array("I")
            self._failed = []
        self._last_flush = time.monotonic()

    def poll_control(self, timeout_s: float = 0.0) -> list[dict[str, Any]]:
        """Control messages waiting (up to `timeout_s` for the first one)."""
        out = [{"op": "stop"}] if self._terminated else []
        if not out and self._sock.poll(int(timeout_s * 1000)):
            while True:
                try:
                    out.append(msgpack.unpackb(self._sock.recv(zmq.NOBLOCK), raw=False))
                except zmq.Again:
                    break
        return out

    def orphaned(self) -> bool:
        """True when the Locust process that started us is gone (we were re-parented)."""
        return os.getppid() != self._parent

    def close(self) -> None:
        self.flush()
        self._sock.close()
        self._ctx.term()


def records_of(msg: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(done times s, latencies ms, sizes) of an "ev" message: its packed arrays, unpacked."""
    return (np.frombuffer(msg["done"], dtype=np.float64),
            np.frombuffer(msg["rt"], dtype=np.float64),
            np.frombuffer(msg["size"], dtype=np.uint32))


class _ChildConfig(Protocol):
    endpoint: str


C = TypeVar("C", bound=_ChildConfig)


def child_main(argv: list[str], config_cls: Callable[..., C],
               work: Callable[[C, ChildChannel], dict[str, Any]]) -> int:
    """Entry point of every child process: config from argv[0] (JSON), run, report the end.

    The producer, consumer and lag-monitor processes all start this way, so all of them
    end with exactly one `done` or `fatal` message (see report_child_run).
    """
    level = os.environ.get(LOG_LEVEL_ENV)
    if level:  # e.g. DEBUG: the SDK's own log lines, timestamped, in logs/<child>.log
        logging.basicConfig(level=level.upper(),
                            format="%(asctime)s %(threadName)s %(name)s %(message)s")
    cfg = config_cls(**json.loads(argv[0]))
    ch = ChildChannel(cfg.endpoint)
    return report_child_run(ch, lambda: work(cfg, ch))


def report_child_run(ch: ChildChannel, work: Callable[[], dict[str, Any]]) -> int:
    """Run a client process's work and always tell the runner how it ended.

    Whatever happens — even KeyboardInterrupt — the runner gets a `done` or a `fatal`
    message, so it never waits on a child that died silently. Returns the exit status.
    """
    try:
        stats = work()
    except BaseException:  # noqa: BLE001 - anything at all must reach the runner
        ch.flush()
        ch.send({"op": "fatal", "msg": traceback.format_exc()})
        ch.close()
        return 1
    ch.flush()
    # CPU seconds of the whole process (SDK threads included): what this client cost the box.
    stats = {**stats, "cpu_s": round(time.process_time(), 3)}
    ch.send({"op": "done", "stats": stats})
    ch.close()
    return 0

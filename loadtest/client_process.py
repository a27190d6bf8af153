"""Locust-side handle of one load-generating child process (see channel.py for the why).

Runs inside the gevent-patched Locust process: the child is started with (gevent's)
subprocess, and its messages are read from a zmq.green PAIR socket, so waiting for them
yields to the other greenlets instead of blocking the process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import zmq.green as zmq

MessageHandler = Callable[[dict[str, Any]], None]


class ClientProcessError(RuntimeError):
    """The child failed: it reported a fatal error, died, or did not answer in time."""


class ClientProcess:
    """One child running `python -m <module> <config json>`, linked by a PAIR socket."""

    def __init__(self, name: str, module: str, config: dict[str, Any], log_dir: Path,
                 on_message: MessageHandler) -> None:
        self.name = name
        self.on_message = on_message
        self.ready = False
        self.stats: dict[str, Any] | None = None
        self.fatal: str | None = None
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PAIR)
        self._sock.setsockopt(zmq.LINGER, 0)
        port = self._sock.bind_to_random_port("tcp://127.0.0.1")
        config = {**config, "endpoint": f"tcp://127.0.0.1:{port}"}
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module, json.dumps(config)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid

    @property
    def finished(self) -> bool:
        """The child said done or fatal (its last word), or it is gone."""
        return self.stats is not None or self.fatal is not None or self.proc.poll() is not None

    def send(self, msg: dict[str, Any]) -> None:
        if self.proc.poll() is None:
            self._sock.send(msgpack.packb(msg))

    def pump(self, timeout_s: float) -> int:
        """Handle the messages waiting (waiting up to `timeout_s` for the first); returns count."""
        n = 0
        if self._sock.closed:
            return 0
        if self._sock.poll(int(timeout_s * 1000)):
            while True:
                try:
                    raw = self._sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._handle(msgpack.unpackb(raw, raw=False))
                n += 1
        return n

    def _handle(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "ready":
            self.ready = True
        elif op == "done":
            self.stats = msg.get("stats", {})
        elif op == "fatal":
            self.fatal = msg.get("msg", "?")
        self.on_message(msg)

    def settle(self, timeout_s: float = 2.0) -> None:
        """After the child exited: handle its last messages, which may still be in flight."""
        deadline = time.monotonic() + timeout_s
        while self.stats is None and self.fatal is None and time.monotonic() < deadline:
            self.pump(0.05)

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready:
            self.pump(0.1)
            if self.ready:
                break
            if self.fatal:
                raise ClientProcessError(f"{self.name} failed:\n{self.fatal}")
            if self.proc.poll() is not None:
                self.settle()
                if self.fatal:
                    raise ClientProcessError(f"{self.name} failed:\n{self.fatal}")
                raise ClientProcessError(
                    f"{self.name} exited with {self.proc.returncode} before it was ready "
                    f"(log: {self.log_path})")
            if time.monotonic() > deadline:
                raise ClientProcessError(f"{self.name} not ready within {timeout_s:g} s "
                                         f"(log: {self.log_path})")

    def stop(self, timeout_s: float) -> None:
        """Ask the child to finish cleanly, handle all it sends until it is done, reap it."""
        self.send({"op": "stop"})
        deadline = time.monotonic() + timeout_s
        while self.stats is None and self.fatal is None:
            self.pump(0.1)
            if self.proc.poll() is not None:
                self.settle()
                break
            if time.monotonic() > deadline:
                break
        self.close(max(1.0, deadline - time.monotonic()))

    def close(self, timeout_s: float = 5.0) -> None:
        """Reap the child (kill it if it will not exit) and close the socket."""
        if self._sock.closed:
            return
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.pump(0)
        self._sock.close()

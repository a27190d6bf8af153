"""Request/response over ZeroMQ for one client thread: a DEALER per endpoint, correlation ids.

`NetworkClient` is owned by exactly one thread (zmq sockets are not thread-safe): the
producer's sender thread, a consumer's polling thread, an admin call under its lock. It sends
requests without blocking, and `poll()` delivers responses to their callbacks, expires
requests past their deadline and fails every request of a connection that was lost (a socket
monitor reports disconnects and refused connects, so a killed worker is noticed at once, not
after `request_timeout_ms`). A lost or timed-out connection is closed and rebuilt on next use,
which also drops whatever was still queued for the dead peer: no stale request is delivered
late to a restarted node.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from qnode.sdk.errors import NetworkError, QnodeError, RequestTimeoutError, error_for
from qnode.transport.api import api_name
from qnode.transport.frame import FrameError, Response, decode_response, encode_request
from qnode.transport.sockets import (
    NOBLOCK,
    close_monitored,
    has_message,
    monitor_events,
    recv_frames,
    send_frames,
)

Callback = Callable[["InFlight"], None]

_MONITOR_EVENTS = zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_CONNECTED


@dataclass(slots=True, eq=False)
class InFlight:
    """One request waiting for its answer. `error` or `response` is set once `done`."""

    correlation_id: int
    api_key: int
    endpoint: str
    deadline: float
    callback: Callback | None
    context: Any = None  # whatever the caller needs back in its callback
    response: Response | None = None
    error: QnodeError | None = None
    done: bool = False


class _Connection:
    __slots__ = ("endpoint", "socket", "monitor", "pending", "connected", "closed")

    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.endpoint = endpoint
        self.socket = ctx.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDHWM, 0)
        self.socket.setsockopt(zmq.RCVHWM, 0)
        self.socket.setsockopt(zmq.RECONNECT_IVL, 50)
        self.socket.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        self.monitor = self.socket.get_monitor_socket(_MONITOR_EVENTS)
        self.socket.connect(endpoint)
        self.pending: dict[int, InFlight] = {}
        self.connected = False
        self.closed = False

    def close(self) -> None:
        self.closed = True
        # the socket closes with its own LINGER (0 unless a clean close set it)
        close_monitored(self.socket, self.monitor, linger=None)


class NetworkClient:
    """Connections of one thread to many endpoints, with correlation ids and deadlines."""

    def __init__(self, client_id: str = "qnode-sdk", request_timeout_ms: int = 30000,
                 context: zmq.Context | None = None) -> None:
        self._own_ctx = context is None
        self.ctx = context or zmq.Context(io_threads=1)
        self.client_id = client_id
        self.request_timeout_ms = request_timeout_ms
        self._conns: dict[str, _Connection] = {}
        self._by_socket: dict[zmq.Socket, _Connection] = {}
        self._by_monitor: dict[zmq.Socket, _Connection] = {}
        self._poller = zmq.Poller()
        self._extra_fds: list[int] = []
        self._corr = itertools.count(1)
        # no pending request is due before this (a lower bound: `_expire` skips its walk)
        self._next_deadline_check = math.inf
        self.closed = False

    # ------------------------------------------------------------------ connections
    def _connection(self, endpoint: str) -> _Connection:
        conn = self._conns.get(endpoint)
        if conn is None:
            conn = _Connection(self.ctx, endpoint)
            self._conns[endpoint] = conn
            self._by_socket[conn.socket] = conn
            self._by_monitor[conn.monitor] = conn
            self._poller.register(conn.socket, zmq.POLLIN)
            self._poller.register(conn.monitor, zmq.POLLIN)
        return conn

    def _drop(self, conn: _Connection, error: QnodeError) -> None:
        """Close a connection and fail everything still waiting on it."""
        if self._conns.get(conn.endpoint) is conn:
            del self._conns[conn.endpoint]
        self._by_socket.pop(conn.socket, None)
        self._by_monitor.pop(conn.monitor, None)
        self._poller.unregister(conn.socket)
        self._poller.unregister(conn.monitor)
        conn.close()
        pending = list(conn.pending.values())
        conn.pending.clear()
        for req in pending:
            self._finish(req, None, error)

    def disconnect(self, endpoint: str, reason: str = "closed by client") -> None:
        conn = self._conns.get(endpoint)
        if conn is not None:
            self._drop(conn, NetworkError(f"connection to {endpoint} {reason}"))

    def register_fd(self, fd: int) -> None:
        """Also wake `poll()` when `fd` is readable (the producer's wake-up pipe)."""
        self._poller.register(fd, zmq.POLLIN)
        self._extra_fds.append(fd)

    def in_flight(self, endpoint: str) -> int:
        conn = self._conns.get(endpoint)
        return len(conn.pending) if conn is not None else 0

    def total_in_flight(self) -> int:
        return sum(len(c.pending) for c in self._conns.values())

    # ------------------------------------------------------------------ requests
    def send(self, endpoint: str, api_key: int, body: dict[str, Any],
             data: Sequence[Any] = (), *, callback: Callback | None = None,
             context: Any = None, timeout_ms: int | None = None,
             expect_response: bool = True) -> InFlight:
        """Queue a request; its InFlight completes in a later `poll()`.

        With `expect_response=False` (Produce acks=0) the request is done once handed to zmq.
        """
        if self.closed:
            raise NetworkError("client is closed")
        conn = self._connection(endpoint)
        corr = next(self._corr) & 0xFFFFFFFF
        timeout = self.request_timeout_ms if timeout_ms is None else timeout_ms
        req = InFlight(corr, api_key, endpoint, time.monotonic() + timeout / 1000.0, callback,
                       context)
        frames = encode_request(api_key, 0, corr, body, data, self.client_id)
        try:
            send_frames(conn.socket, frames, NOBLOCK)
        except zmq.ZMQError as exc:
            self._drop(conn, NetworkError(f"send to {endpoint} failed: {exc}"))
            self._finish(req, None, NetworkError(f"send to {endpoint} failed: {exc}"))
            return req
        if expect_response:
            conn.pending[corr] = req
            if req.deadline < self._next_deadline_check:
                self._next_deadline_check = req.deadline
        else:
            self._finish(req, None, None)
        return req

    def request(self, endpoint: str, api_key: int, body: dict[str, Any],
                data: Sequence[Any] = (), timeout_ms: int | None = None) -> Response:
        """Send and wait for the answer; raises the request-level error or a network error."""
        req = self.send(endpoint, api_key, body, data, timeout_ms=timeout_ms)
        while not req.done:
            self.poll(max(0.0, req.deadline - time.monotonic()) * 1000.0 + 1)
        if req.error is not None:
            raise req.error
        assert req.response is not None
        return req.response

    # ------------------------------------------------------------------ the loop
    def poll(self, timeout_ms: float) -> list[int]:
        """Wait up to `timeout_ms` for answers and deliver them; returns readable extra fds."""
        now = time.monotonic()
        wait = timeout_ms
        deadline = self._earliest_deadline()
        if deadline is not None:
            wait = max(0.0, min(wait, (deadline - now) * 1000.0 + 1))
        events = self._poller.poll(wait)
        ready_fds: list[int] = []
        for sock, _ in events:
            if isinstance(sock, int):
                ready_fds.append(sock)
                continue
            conn = self._by_socket.get(sock)
            if conn is not None:
                self._read(conn)
                continue
            conn = self._by_monitor.get(sock)
            if conn is not None:
                self._read_monitor(conn)
        self._expire(time.monotonic())
        return ready_fds

    def _read(self, conn: _Connection) -> None:
        sock = conn.socket
        first = True
        # poll() said readable; after the first answer, ask before receiving again (cheaper
        # than a receive that raises zmq.Again to end the loop)
        while first or has_message(sock):
            first = False
            try:
                frames = recv_frames(sock, NOBLOCK)
            except zmq.Again:
                return
            try:
                resp = decode_response(frames)
            except FrameError:
                continue  # not an answer we can read; its request will time out
            req = conn.pending.pop(resp.correlation_id, None)
            if req is None:
                continue  # a late answer to a request we already gave up on
            err = None
            if resp.error_code:
                err = error_for(resp.error_code, resp.body.get("message"))
            self._finish(req, resp, err)
            if conn.closed:  # a callback dropped this connection
                return

    def _read_monitor(self, conn: _Connection) -> None:
        for event in monitor_events(conn.monitor):
            if event == zmq.EVENT_CONNECTED:
                conn.connected = True
            elif event == zmq.EVENT_DISCONNECTED:
                self._drop(conn, NetworkError(f"connection to {conn.endpoint} lost"))
                return
            elif event == zmq.EVENT_CONNECT_RETRIED and conn.pending:
                self._drop(conn, NetworkError(f"cannot connect to {conn.endpoint}"))
                return

    def _earliest_deadline(self) -> float | None:
        best = None
        for conn in self._conns.values():
            for req in conn.pending.values():
                if best is None or req.deadline < best:
                    best = req.deadline
        return best

    def _expire(self, now: float) -> None:
        if now < self._next_deadline_check:
            return  # nothing can be due yet: no walk over every pending request
        for conn in list(self._conns.values()):
            if any(req.deadline <= now for req in conn.pending.values()):
                late = [r for r in conn.pending.values() if r.deadline <= now]
                first = late[0]
                # As Kafka does: a request that timed out poisons its connection (the answer
                # may still come, or the peer is wedged); rebuild it and fail the rest too.
                self._drop(conn, RequestTimeoutError(
                    f"{api_name(first.api_key)} to {conn.endpoint} timed out"))
        earliest = self._earliest_deadline()
        self._next_deadline_check = math.inf if earliest is None else earliest

    @staticmethod
    def _finish(req: InFlight, resp: Response | None, err: QnodeError | None) -> None:
        req.response = resp
        req.error = err
        req.done = True
        if req.callback is not None:
            req.callback(req)

    def close(self, linger_ms: int = 0) -> None:
        """Close every connection; `linger_ms` lets queued sends (acks=0) still go out."""
        if self.closed:
            return
        self.closed = True
        for conn in list(self._conns.values()):
            if linger_ms:
                conn.socket.setsockopt(zmq.LINGER, linger_ms)
            self._drop(conn, NetworkError("client closed"))
        for fd in self._extra_fds:
            try:
                self._poller.unregister(fd)
            except KeyError:
                pass
        if self._own_ctx:
            self.ctx.term()


def first_error(entries: Iterable[dict[str, Any]]) -> tuple[int, str | None]:
    """The first non-zero (error, message) among per-entry results, or (0, None)."""
    for e in entries:
        code = e.get("error", 0)
        if code:
            return code, e.get("message")
    return 0, None

"""Request/response over ZeroMQ for one client thread: a DEALER per endpoint, correlation ids.

`NetworkClient` is owned by exactly one thread (zmq sockets are not thread-safe): the
producer's sender thread, a consumer's polling thread, an admin call under its lock. It sends
requests without blocking, and `poll()` delivers responses to their callbacks, expires
requests past their deadline and fails every request of a connection that was lost (a socket
monitor reports disconnects and refused connects, so a killed worker is noticed at once, not
after `request_timeout_ms`). A lost or timed-out connection is closed and rebuilt on next use,
which also drops whatever was still queued for the dead peer: no stale request is delivered
late to a restarted node.

A `shared` client may be lent to a second thread between the owner's polls (the producer's
send() with linger.ms=0 sends its record itself instead of waking the sender thread: see
sdk/sender.py). zmq sockets may change threads behind a full memory barrier, which `lock`
is: whoever holds it may use the sockets, and the owner holds it except while it waits.
So that its wait touches no socket, the owner waits on each DEALER's ZMQ_FD (the socket's
mailbox) instead of the socket; that fd signals only new commands, so whoever used a socket
last checks ZMQ_EVENTS before anyone sleeps (zmq's rule for ZMQ_FD). The poller belongs to
the owner alone: connections opened or dropped by a borrower are (un)registered by the owner
on its next turn.

A client may also take answers on a doorbell (transport/doorbell.py): a Unix datagram socket
that a same-host worker sends small Fetch answers to instead of zmq. Such an answer completes
its request as a zmq answer would; the worker then sends nothing through zmq for it.
With a doorbell, a request sent with `local=True` (Produce) goes to a same-host worker's
local socket as one datagram, its answer coming on the doorbell -- when nothing is in flight
on that connection, or only such requests are. Requests on one connection stay in order: one
that cannot go by datagram while datagram requests are unanswered waits (`deferred`) and goes
through zmq once they are answered; datagram requests go out only behind nothing or behind
each other, and the worker reads its local socket in order.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from qnode.sdk.errors import NetworkError, QnodeError, RequestTimeoutError, error_for
from qnode.transport.api import api_name
from qnode.transport.doorbell import (
    LOCAL_IN_FLIGHT,
    DoorbellReceiver,
    LocalUnavailable,
    worker_address,
)
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
    local: bool = False  # sent by datagram to the worker's local socket


class _Connection:
    __slots__ = ("endpoint", "socket", "monitor", "pending", "connected", "closed", "key",
                 "local", "local_pending", "deferred")

    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.endpoint = endpoint
        self.socket = ctx.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDHWM, 0)
        self.socket.setsockopt(zmq.RCVHWM, 0)
        self.socket.setsockopt(zmq.RECONNECT_IVL, 50)
        self.socket.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        self.monitor = self.socket.get_monitor_socket(_MONITOR_EVENTS)
        try:
            self.socket.connect(endpoint)
        except zmq.ZMQError as exc:
            # an endpoint zmq refuses (bad address from metadata): left open, these two
            # sockets would make the context's term() wait forever at close
            close_monitored(self.socket, self.monitor)
            raise NetworkError(f"cannot connect to {endpoint!r}: {exc}") from None
        self.pending: dict[int, InFlight] = {}
        # the worker's local socket, if one is here (None once a send found none)
        self.local: bytes | None = worker_address(endpoint)
        self.local_pending = 0  # requests in `pending` that went by datagram
        # requests waiting for those to be answered before they go through zmq, in order:
        # (request, its frames, whether an answer is expected)
        self.deferred: list[tuple[InFlight, list[Any], bool]] = []
        self.connected = False
        self.closed = False
        self.key: Any = None  # what the poller watches: the socket, or its fd when shared

    def close(self) -> None:
        self.closed = True
        # the socket closes with its own LINGER (0 unless a clean close set it)
        close_monitored(self.socket, self.monitor, linger=None)


class NetworkClient:
    """Connections of one thread to many endpoints, with correlation ids and deadlines."""

    def __init__(self, client_id: str = "qnode-sdk", request_timeout_ms: int = 30000,
                 context: zmq.Context | None = None, *, shared: bool = False) -> None:
        self._own_ctx = context is None
        self.ctx = context or zmq.Context(io_threads=1)
        self.client_id = client_id
        self.request_timeout_ms = request_timeout_ms
        self.shared = shared
        self.lock = threading.Lock()  # a shared client: held by whoever uses the sockets
        self.borrowed = False  # a borrower holds the lock: leave the poller to the owner
        self._unpolled: list[_Connection] = []  # opened by a borrower, not yet registered
        self._dead: list[_Connection] = []  # dropped by a borrower, not yet closed
        self._conns: dict[str, _Connection] = {}
        self._by_socket: dict[Any, _Connection] = {}  # the socket, or its fd when shared
        self._by_monitor: dict[zmq.Socket, _Connection] = {}
        self._poller = zmq.Poller()
        self._extra_fds: list[int] = []
        self._corr = itertools.count(1)
        # no pending request is due before this (a lower bound: `_expire` skips its walk)
        self._next_deadline_check = math.inf
        self._doorbell: DoorbellReceiver | None = None
        self.doorbell_answers = 0  # answers that came on the doorbell, not through zmq
        self.local_sends = 0  # requests sent by datagram to a worker's local socket
        self.deferred_sends = 0  # requests that waited for those to be answered (order)
        self.closed = False

    # ------------------------------------------------------------------ connections
    def _connection(self, endpoint: str) -> _Connection:
        conn = self._conns.get(endpoint)
        if conn is None:
            conn = _Connection(self.ctx, endpoint)
            self._conns[endpoint] = conn
            if self.borrowed:
                self._unpolled.append(conn)
            else:
                self._watch(conn)
        return conn

    def _watch(self, conn: _Connection) -> None:
        conn.key = conn.socket.getsockopt(zmq.FD) if self.shared else conn.socket
        self._by_socket[conn.key] = conn
        self._by_monitor[conn.monitor] = conn
        self._poller.register(conn.key, zmq.POLLIN)
        self._poller.register(conn.monitor, zmq.POLLIN)

    def _unwatch(self, conn: _Connection) -> None:
        if self._by_socket.pop(conn.key, None) is not None:
            self._poller.unregister(conn.key)
        if self._by_monitor.pop(conn.monitor, None) is not None:
            self._poller.unregister(conn.monitor)

    def _sync_poller(self) -> None:
        """The owner takes over what a borrower opened or dropped (lock held)."""
        while self._unpolled:
            conn = self._unpolled.pop()
            if not conn.closed:
                self._watch(conn)
        while self._dead:
            conn = self._dead.pop()
            self._unwatch(conn)
            conn.close()

    def needs_owner(self) -> bool:
        """After a borrower's sends: whether the owner must look before it can sleep (an
        answer already queued, whose ZMQ_FD signal the send consumed, or connections to
        (un)register)."""
        return bool(self._unpolled or self._dead) or self._answer_queued()

    def _answer_queued(self) -> bool:
        return any(has_message(c.socket) for c in self._conns.values())

    def _drop(self, conn: _Connection, error: QnodeError) -> None:
        """Close a connection and fail everything still waiting on it."""
        if self._conns.get(conn.endpoint) is conn:
            del self._conns[conn.endpoint]
        if conn in self._unpolled:
            self._unpolled.remove(conn)
            conn.close()
        elif self.borrowed:
            # its fd may be in the owner's wait: the owner closes it (`_sync_poller`)
            conn.closed = True
            self._dead.append(conn)
        else:
            self._unwatch(conn)
            conn.close()
        # waiting ones that expect no answer are in no `pending`: they fail here too
        pending = [req for req, _, expect in conn.deferred if not expect]
        conn.deferred.clear()
        pending += conn.pending.values()
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

    def enable_doorbell(self) -> str | None:
        """Bind a doorbell; returns the value a request names it with (None: none here).
        The owner's thread calls it (its poller watches the doorbell; `handle` reads it)."""
        if self._doorbell is None:
            try:
                self._doorbell = DoorbellReceiver()
            except OSError:  # no abstract Unix sockets (not Linux): answers come by zmq
                return None
            self._poller.register(self._doorbell.fileno(), zmq.POLLIN)
        return self._doorbell.value

    def in_flight(self, endpoint: str) -> int:
        conn = self._conns.get(endpoint)
        return len(conn.pending) if conn is not None else 0

    def total_in_flight(self) -> int:
        return sum(len(c.pending) for c in self._conns.values())

    # ------------------------------------------------------------------ requests
    def send(self, endpoint: str, api_key: int, body: dict[str, Any],
             data: Sequence[Any] = (), *, callback: Callback | None = None,
             context: Any = None, timeout_ms: int | None = None,
             expect_response: bool = True, local: bool = False) -> InFlight:
        """Queue a request; its InFlight completes in a later `poll()`.

        With `expect_response=False` (Produce acks=0) the request is done once handed to zmq.
        `local`: it may go by datagram to a same-host worker (see the module's docstring).
        """
        if self.closed:
            raise NetworkError("client is closed")
        corr = next(self._corr) & 0xFFFFFFFF
        timeout = self.request_timeout_ms if timeout_ms is None else timeout_ms
        req = InFlight(corr, api_key, endpoint, time.monotonic() + timeout / 1000.0, callback,
                       context)
        try:
            conn = self._connection(endpoint)
        except NetworkError as exc:  # as a failed send: the request fails, nothing raises
            self._finish(req, None, exc)
            return req
        frames = encode_request(api_key, 0, corr, body, data, self.client_id)
        if conn.local_pending or conn.deferred:
            # datagram requests are unanswered: this one goes behind them
            if local and expect_response and not conn.deferred \
                    and self._send_local(conn, req, frames):
                return req
            self._track(conn, req, expect_response)
            conn.deferred.append((req, frames, expect_response))
            return req
        if local and expect_response and not conn.pending \
                and self._send_local(conn, req, frames):
            return req
        try:
            send_frames(conn.socket, frames, NOBLOCK)
        except zmq.ZMQError as exc:
            self._drop(conn, NetworkError(f"send to {endpoint} failed: {exc}"))
            self._finish(req, None, NetworkError(f"send to {endpoint} failed: {exc}"))
            return req
        if expect_response:
            self._track(conn, req, True)
        else:
            self._finish(req, None, None)
        return req

    def _track(self, conn: _Connection, req: InFlight, expect_response: bool) -> None:
        if expect_response:
            conn.pending[req.correlation_id] = req
            if req.deadline < self._next_deadline_check:
                self._next_deadline_check = req.deadline

    def _send_local(self, conn: _Connection, req: InFlight, frames: list[Any]) -> bool:
        """Send `req` by datagram to the worker's local socket; False: it must go otherwise."""
        bell = self._doorbell
        address = conn.local
        # bounded across connections: every answer lands in the one doorbell's queue
        if bell is None or address is None \
                or sum(c.local_pending for c in self._conns.values()) >= LOCAL_IN_FLIGHT:
            return False
        try:
            if not bell.send_request(address, frames):
                return False  # too large, or the worker's queue is full
        except LocalUnavailable:
            conn.local = None  # no worker socket here: zmq from now on
            return False
        req.local = True
        conn.local_pending += 1
        self.local_sends += 1
        self._track(conn, req, True)
        return True

    def _answered_local(self, conn: _Connection) -> None:
        """A datagram request of `conn` was answered; once none is left, what waited goes."""
        conn.local_pending -= 1
        if conn.local_pending or not conn.deferred:
            return
        waiting, conn.deferred = conn.deferred, []
        for req, frames, expect_response in waiting:
            if req.done:
                continue
            try:
                send_frames(conn.socket, frames, NOBLOCK)
            except zmq.ZMQError as exc:
                self._drop(conn, NetworkError(f"send to {conn.endpoint} failed: {exc}"))
                return
            self.deferred_sends += 1
            if not expect_response:
                self._finish(req, None, None)

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
        """Wait up to `timeout_ms` for answers and deliver them; returns readable extra fds.
        (A shared client's owner: `wait_ms`, then `wait` without the lock, then `handle`.)"""
        return self.handle(self.wait(self.wait_ms(timeout_ms)))

    def wait_ms(self, timeout_ms: float) -> float:
        """How long the next `wait` may sleep: at most `timeout_ms`, until the nearest request
        deadline, and not at all when a shared client's socket already holds an answer."""
        if self.shared:
            self._sync_poller()
            if self._answer_queued():
                return 0.0
        # the bound `_expire` keeps, not a walk over every pending request: at worst one
        # early wake-up, after which `_expire` makes the bound exact again
        deadline = self._next_deadline_check
        if deadline == math.inf:
            return timeout_ms
        return max(0.0, min(timeout_ms, (deadline - time.monotonic()) * 1000.0 + 1))

    def wait(self, wait_ms: float) -> list[tuple[Any, int]]:
        """Sleep until something is readable (a shared client: without its lock)."""
        return self._poller.poll(wait_ms)

    def handle(self, events: list[tuple[Any, int]]) -> list[int]:
        """Deliver what `wait` found; returns the readable extra fds."""
        ready_fds: list[int] = []
        bell = self._doorbell
        for sock, _ in events:
            conn = self._by_socket.get(sock)
            if conn is not None:
                if not self.shared:
                    self._read(conn)
                continue
            if isinstance(sock, int):
                if bell is not None and sock == bell.fileno():
                    self._read_doorbell(bell)
                else:
                    ready_fds.append(sock)
                continue
            conn = self._by_monitor.get(sock)
            if conn is not None and not conn.closed:
                self._read_monitor(conn)
        if self.shared:
            # every socket: a borrower's send may have taken the signal of an answer
            for conn in list(self._conns.values()):
                if not conn.closed and has_message(conn.socket):
                    self._read(conn)
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
            self._complete(conn, req, resp)
            if conn.closed:  # a callback dropped this connection
                return

    def _complete(self, conn: _Connection, req: InFlight, resp: Response) -> None:
        """The answer to `req` (already out of `conn.pending`) came: its callback runs."""
        if req.local:
            self._answered_local(conn)
        err = None
        if resp.error_code:
            err = error_for(resp.error_code, resp.body.get("message"))
        self._finish(req, resp, err)

    def _read_doorbell(self, bell: DoorbellReceiver) -> None:
        for frames in bell.receive():
            try:
                resp = decode_response(frames)
            except FrameError:
                continue
            corr = resp.correlation_id
            for conn in self._conns.values():  # correlation ids are unique per client
                req = conn.pending.pop(corr, None)
                if req is not None:
                    self.doorbell_answers += 1
                    self._complete(conn, req, resp)
                    break

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
        self._sync_poller()
        for conn in list(self._conns.values()):
            if linger_ms:
                conn.socket.setsockopt(zmq.LINGER, linger_ms)
            self._drop(conn, NetworkError("client closed"))
        for fd in self._extra_fds:
            try:
                self._poller.unregister(fd)
            except KeyError:
                pass
        if self._doorbell is not None:
            self._poller.unregister(self._doorbell.fileno())
            self._doorbell.close()
            self._doorbell = None
        if self._own_ctx:
            self.ctx.term()


def first_error(entries: Iterable[dict[str, Any]]) -> tuple[int, str | None]:
    """The first non-zero (error, message) among per-entry results, or (0, None)."""
    for e in entries:
        code = e.get("error", 0)
        if code:
            return code, e.get("message")
    return 0, None

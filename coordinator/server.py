"""The coordinator's request server: one ROUTER on the node's bootstrap endpoint, one thread.

Requests are dispatched by API key through a handler registry, so modules plug their APIs in
without touching this file:

    server.register(ApiKey.JOIN_GROUP, handler)

A handler gets a `Call` (`call.request` is the decoded, schema-validated `Request`) and either
returns a response body dict (answered at once), or returns None and answers later with
`call.reply(body)` / `call.fail(code, message)` — a parked long-poll (MetadataLogFetch, a
JoinGroup waiting for its generation). Everything runs on the server thread, so handlers need
no locks; time-driven work uses `call_later(delay_ms, fn)` or `add_ticker(next_deadline, tick)`
(`next_deadline()` returns a deadline in `now_ms()` units, or None; `tick()` runs when it is
due). The poll timeout is the nearest deadline: nothing here sleeps in a loop.

Registering a key that already has a handler replaces it (the transaction coordinator takes
over INIT_PRODUCER_ID and may delegate non-transactional calls to the previous handler, which
`register` returns). An API with no handler answers UNSUPPORTED_VERSION. A request that
cannot be decoded, a handler that raises: each gets an error response, never a crash.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from qnode.coordinator.quorum import NotControllerError
from qnode.transport.api import COORDINATOR_APIS, ApiKey, api_name, api_versions_body
from qnode.transport.errors import ErrorCode
from qnode.transport.frame import (
    FrameLike,
    Request,
    RequestError,
    encode_response,
    error_response,
    response_for_error,
)
from qnode.transport.messages import parse_request
from qnode.transport.sockets import SocketOptions, router_server

log = logging.getLogger(__name__)

_DRAIN_BATCH = 1000  # requests handled per wake-up before timers get a turn


class HandlerError(Exception):
    """Raised by a handler to answer its request with a request-level error."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Call:
    """One request in flight: answer it exactly once with `reply` or `fail`."""

    __slots__ = ("_server", "identity", "request", "replied")

    def __init__(self, server: CoordinatorServer, identity: bytes, request: Request) -> None:
        self._server = server
        self.identity = identity
        self.request = request
        self.replied = False

    def reply(
        self, body: dict[str, Any], data: Sequence[FrameLike] = (), error_code: int = 0
    ) -> None:
        assert not self.replied, f"{api_name(self.request.api_key)} answered twice"
        self.replied = True
        r = self.request
        self._server.send(
            self.identity,
            encode_response(r.api_key, r.version, r.correlation_id, body, data, error_code),
        )

    def fail(self, code: ErrorCode, message: str) -> None:
        assert not self.replied, f"{api_name(self.request.api_key)} answered twice"
        self.replied = True
        self._server.send(self.identity, error_response(self.request.header, code, message))


Handler = Callable[[Call], dict[str, Any] | None]


class _Timer:
    __slots__ = ("deadline", "fn", "cancelled")

    def __init__(self, deadline: int, fn: Callable[[], None]) -> None:
        self.deadline = deadline
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class CoordinatorServer:
    """ROUTER server loop with a handler registry, timers and extra readable sources."""

    def __init__(self, ctx: zmq.Context, bind: str, max_request_bytes: int) -> None:
        self.ctx = ctx
        self.sock, self.endpoint = router_server(
            ctx, bind, SocketOptions(max_msg_bytes=max_request_bytes, linger_ms=500)
        )
        self._handlers: dict[int, Handler] = {}
        self._timers: list[tuple[int, int, _Timer]] = []
        self._seq = itertools.count()
        self._tickers: list[tuple[Callable[[], int | None], Callable[[], None]]] = []
        self._poller = zmq.Poller()
        self._poller.register(self.sock, zmq.POLLIN)
        self._readers: dict[Any, Callable[[], None]] = {}
        self._running = False
        self.register(ApiKey.API_VERSIONS, self._api_versions)

    # ---- registry and scheduling -----------------------------------------------------------

    def register(self, api_key: ApiKey, handler: Handler) -> Handler | None:
        """Serve `api_key` with `handler`; returns the handler it replaces, if any."""
        assert api_key in COORDINATOR_APIS, f"{api_name(api_key)} is not a coordinator API"
        old = self._handlers.get(api_key)
        self._handlers[int(api_key)] = handler
        return old

    def register_body_handler(
        self,
        api_key: ApiKey,
        handler: Callable[[dict[str, Any], str, Callable[[dict[str, Any]], None]], None],
    ) -> None:
        """Serve `api_key` with `handler(body, client_id, reply)`: `reply(body)` answers, now or
        later (the form coordinator/group_handlers.py uses)."""

        def adapter(call: Call) -> None:
            handler(call.request.body, call.request.client_id, call.reply)

        self.register(api_key, adapter)

    def served(self) -> dict[int, tuple[int, int]]:
        return {k: COORDINATOR_APIS[ApiKey(k)] for k in self._handlers}

    @staticmethod
    def now_ms() -> int:
        """The server's clock (monotonic milliseconds): the unit of every deadline here."""
        return time.monotonic_ns() // 1_000_000

    def call_later(self, delay_ms: int, fn: Callable[[], None]) -> _Timer:
        """Run `fn` on the server thread after `delay_ms`; `.cancel()` the returned timer."""
        timer = _Timer(self.now_ms() + max(0, delay_ms), fn)
        heapq.heappush(self._timers, (timer.deadline, next(self._seq), timer))
        return timer

    def add_ticker(self, next_deadline: Callable[[], int | None], tick: Callable[[], None]) -> None:
        """Poll `next_deadline()` each loop turn; call `tick()` once it is due."""
        self._tickers.append((next_deadline, tick))

    def add_reader(self, source: zmq.Socket | int, on_readable: Callable[[], None]) -> None:
        """Call `on_readable()` on the server thread when `source` (socket or fd) is readable."""
        self._poller.register(source, zmq.POLLIN)
        self._readers[source] = on_readable

    def remove_reader(self, source: zmq.Socket | int) -> None:
        """Stop watching `source` (before closing it); unknown sources are ignored."""
        if self._readers.pop(source, None) is not None:
            self._poller.unregister(source)

    # ---- the loop ----------------------------------------------------------------------------

    def stop(self) -> None:
        self._running = False

    def run(self) -> None:
        """Serve until `stop()` (from a handler, a timer or a reader such as a signal pipe)."""
        self._running = True
        while self._running:
            events = dict(self._poller.poll(self._poll_timeout()))
            if self.sock in events:
                self._drain()
            for source, on_readable in list(self._readers.items()):
                if source in events:
                    on_readable()
            self._run_due()

    def drain_pending(self) -> None:
        """Answer the requests already queued on the socket (stopping: drain, then close)."""
        self._drain()

    def _poll_timeout(self) -> int | None:
        deadline = None
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        if self._timers:
            deadline = self._timers[0][0]
        for next_deadline, _ in self._tickers:
            d = next_deadline()
            if d is not None and (deadline is None or d < deadline):
                deadline = d
        if deadline is None:
            return None
        return max(0, deadline - self.now_ms())

    def _run_due(self) -> None:
        now = self.now_ms()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                self._guard(timer.fn)
        for next_deadline, tick in self._tickers:
            d = next_deadline()
            if d is not None and d <= now:
                self._guard(tick)

    @staticmethod
    def _guard(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:  # a timer bug must not take the bootstrap endpoint down
            log.exception("coordinator timer %r failed", fn)

    def _drain(self) -> None:
        for _ in range(_DRAIN_BATCH):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.handle(frames)

    def send(self, identity: bytes, frames: list[FrameLike]) -> None:
        try:
            self.sock.send_multipart([identity, *frames], copy=False)
        except zmq.ZMQError as exc:  # peer gone or HWM: its answer is lost, the server is not
            log.warning("reply to a client dropped: %s", exc)

    def handle(self, frames: list[zmq.Frame]) -> None:
        """Decode, validate and dispatch one ROUTER message [identity, header, body, data...]."""
        identity = frames[0].bytes
        try:
            request = parse_request(frames[1:], self.served())
        except RequestError as exc:
            self.send(identity, response_for_error(exc))
            return
        call = Call(self, identity, request)
        try:
            body = self._handlers[request.api_key](call)
        except HandlerError as exc:
            if not call.replied:
                call.fail(exc.code, exc.message)
            return
        except NotControllerError as exc:  # a write on a voter that does not lead
            if not call.replied:
                call.fail(ErrorCode.NOT_CONTROLLER, str(exc))
            return
        except Exception as exc:
            log.exception("%s handler failed", api_name(request.api_key))
            if not call.replied:
                call.fail(
                    ErrorCode.UNKNOWN_SERVER_ERROR,
                    f"{api_name(request.api_key)} failed on the server: {exc}",
                )
            return
        if body is not None:
            call.reply(body)

    def _api_versions(self, call: Call) -> dict[str, Any]:
        return api_versions_body(self.served())  # type: ignore[arg-type]

    def close(self) -> None:
        self.sock.close(linger=500)


def signal_pipe() -> tuple[int, int]:
    """A non-blocking pipe for `signal.set_wakeup_fd`, so a signal wakes the poll at once."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    return r, w

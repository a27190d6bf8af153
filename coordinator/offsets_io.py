"""Requests from the coordinator's server thread to the workers that hold `__consumer_offsets`.

The group coordinator writes commits with Produce acks=-1 and loads its partitions with
Fetch, without blocking the server loop: one DEALER per worker endpoint is registered as a
reader of the `CoordinatorServer`, answers are matched by correlation id, and a server timer
fails a request that got no answer in time (correlation ids are never reused, so a late
answer to a failed request is recognised and dropped).

A worker that dies takes the requests it was serving with it: no answer will ever come. So
they are failed at once with NETWORK_EXCEPTION, not left to their timeout, when

- zmq reports the DEALER's connection closed (a socket monitor, EVENT_DISCONNECTED: the
  kernel closes a killed process's sockets, so this fires within a loop turn of a kill -9);
- the caller says the endpoint is gone (`forget`: the worker registered again, on another
  endpoint or as another process).

They are failed, not resent: the caller owns the retry. For an offset commit that is the
client (Kafka's rule: a commit whose append failed is retried by the consumer), which keeps
each group's commits completing in the order the coordinator's cache applies them; a resend
from here could land an older commit after a newer one. Until the connection is back, a
request to an endpoint whose connection was lost fails at once too, rather than queueing in
zmq for a process that may come back on another port.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import zmq

from qnode.coordinator.server import CoordinatorServer
from qnode.transport.errors import ErrorCode
from qnode.transport.frame import FrameError, Response, decode_response, encode_request
from qnode.transport.sockets import close_monitored, dealer_client, monitor_events

# (response or None, error): error is NONE when a response arrived
Done = Callable[[Response | None, ErrorCode], None]

_EVENTS = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED


class _Link:
    __slots__ = ("endpoint", "sock", "monitor", "pending", "lost")

    def __init__(self, endpoint: str, sock: zmq.Socket, monitor: zmq.Socket) -> None:
        self.endpoint = endpoint
        self.sock = sock
        self.monitor = monitor
        self.pending: dict[int, tuple[Done, Any]] = {}
        # True from a disconnect until zmq reconnects: nothing sent now would be answered
        self.lost = False


class WorkerRequests:
    def __init__(self, server: CoordinatorServer, client_id: str = "group-coordinator") -> None:
        self._server = server
        self._client_id = client_id
        self._links: dict[str, _Link] = {}
        self._corr = itertools.count(1)

    def _link(self, endpoint: str) -> _Link:
        link = self._links.get(endpoint)
        if link is None:
            sock = dealer_client(self._server.ctx, endpoint)
            monitor = sock.get_monitor_socket(_EVENTS)
            link = self._links[endpoint] = _Link(endpoint, sock, monitor)
            self._server.add_reader(sock, lambda: self._read(link))
            self._server.add_reader(monitor, lambda: self._watch(link))
        return link

    def endpoints(self) -> list[str]:
        """Endpoints with an open link."""
        return list(self._links)

    def send(self, endpoint: str, api_key: int, body: dict[str, Any], data: list[Any],
             timeout_ms: int, done: Done) -> None:
        link = self._link(endpoint)
        if link.lost:
            done(None, ErrorCode.NETWORK_EXCEPTION)
            return
        corr = next(self._corr) & 0xFFFFFFFF
        frames = encode_request(api_key, 0, corr, body, data, self._client_id)
        try:
            link.sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.ZMQError:
            done(None, ErrorCode.NETWORK_EXCEPTION)
            return
        timer = self._server.call_later(timeout_ms, lambda: self._expire(link, corr))
        link.pending[corr] = (done, timer)

    def _read(self, link: _Link) -> None:
        while self._links.get(link.endpoint) is link:
            try:
                frames = link.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                resp = decode_response(frames)
            except FrameError:
                continue
            entry = link.pending.pop(resp.correlation_id, None)
            if entry is None:
                continue
            done, timer = entry
            timer.cancel()
            done(resp, _code(resp.error_code))

    def _watch(self, link: _Link) -> None:
        """Socket monitor events of one link: a closed connection fails what it carried."""
        for event in monitor_events(link.monitor):
            if self._links.get(link.endpoint) is not link:
                return  # closed meanwhile: its requests were failed then
            if event == zmq.EVENT_DISCONNECTED:
                link.lost = True
                # Answers to these would come back on the connection that just closed.
                self._fail(link, ErrorCode.NETWORK_EXCEPTION)
            elif event == zmq.EVENT_CONNECTED:
                link.lost = False

    def forget(self, endpoint: str) -> None:
        """The worker at `endpoint` was replaced: fail its requests now and close the link."""
        link = self._links.pop(endpoint, None)
        if link is not None:
            self._close(link, ErrorCode.NETWORK_EXCEPTION)

    def _expire(self, link: _Link, corr: int) -> None:
        entry = link.pending.pop(corr, None)
        if entry is not None:
            entry[0](None, ErrorCode.REQUEST_TIMED_OUT)

    @staticmethod
    def _fail(link: _Link, code: ErrorCode) -> None:
        pending = list(link.pending.values())
        link.pending.clear()
        for done, timer in pending:
            timer.cancel()
            done(None, code)

    def _close(self, link: _Link, code: ErrorCode) -> None:
        self._server.remove_reader(link.sock)
        self._server.remove_reader(link.monitor)
        self._fail(link, code)
        close_monitored(link.sock, link.monitor)

    def close(self) -> None:
        """Fail what is in flight and close the sockets (the server is stopping)."""
        links, self._links = list(self._links.values()), {}
        for link in links:
            self._close(link, ErrorCode.COORDINATOR_NOT_AVAILABLE)


def _code(raw: int) -> ErrorCode:
    try:
        return ErrorCode(raw)
    except ValueError:
        return ErrorCode.UNKNOWN_SERVER_ERROR

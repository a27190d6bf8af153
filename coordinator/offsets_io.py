"""Requests from the coordinator's server thread to the workers that hold `__consumer_offsets`.

The group coordinator writes commits with Produce acks=-1 and loads its partitions with
Fetch, without blocking the server loop: one DEALER per worker endpoint is registered as a
reader of the `CoordinatorServer`, answers are matched by correlation id, and a server timer
fails a request that got no answer in time (correlation ids are never reused, so a late
answer to a failed request is recognised and dropped).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import zmq

from qnode.coordinator.server import CoordinatorServer
from qnode.transport.errors import ErrorCode
from qnode.transport.frame import FrameError, Response, decode_response, encode_request
from qnode.transport.sockets import dealer_client

# (response or None, error): error is NONE when a response arrived
Done = Callable[[Response | None, ErrorCode], None]


class _Link:
    __slots__ = ("endpoint", "sock", "pending")

    def __init__(self, endpoint: str, sock: zmq.Socket) -> None:
        self.endpoint = endpoint
        self.sock = sock
        self.pending: dict[int, tuple[Done, Any]] = {}


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
            link = self._links[endpoint] = _Link(endpoint, sock)
            self._server.add_reader(sock, lambda: self._read(link))
        return link

    def send(self, endpoint: str, api_key: int, body: dict[str, Any], data: list[Any],
             timeout_ms: int, done: Done) -> None:
        link = self._link(endpoint)
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

    def _expire(self, link: _Link, corr: int) -> None:
        entry = link.pending.pop(corr, None)
        if entry is not None:
            entry[0](None, ErrorCode.REQUEST_TIMED_OUT)

    def close(self) -> None:
        """Fail what is in flight and close the sockets (the server is stopping)."""
        links, self._links = list(self._links.values()), {}
        for link in links:
            pending = list(link.pending.values())
            link.pending.clear()
            for done, timer in pending:
                timer.cancel()
                done(None, ErrorCode.COORDINATOR_NOT_AVAILABLE)
            link.sock.close(0)


def _code(raw: int) -> ErrorCode:
    try:
        return ErrorCode(raw)
    except ValueError:
        return ErrorCode.UNKNOWN_SERVER_ERROR

"""`WorkerRequests` against real ZeroMQ peers: an answer completes its request; a peer whose
connection closes fails its requests at once (socket monitor), and sends to it fail fast
until it is back; `forget` fails what is pending and closes the link."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import zmq

from qnode.coordinator.offsets_io import WorkerRequests
from qnode.coordinator.server import CoordinatorServer
from qnode.transport.api import ApiKey
from qnode.transport.errors import ErrorCode as E
from qnode.transport.frame import decode_request, encode_response
from qnode.transport.sockets import router_server

LONG_TIMEOUT_MS = 60_000  # a request that ends must have ended for another reason
BOUND_MS = 5_000          # the loop is stopped by then whatever happens


@pytest.fixture
def env() -> Any:
    ctx = zmq.Context()
    server = CoordinatorServer(ctx, "tcp://127.0.0.1:0", 1 << 20)
    peer, endpoint = router_server(ctx, "tcp://127.0.0.1:0")
    io = WorkerRequests(server)
    server.call_later(BOUND_MS, server.stop)
    yield server, peer, endpoint, io
    io.close()
    peer.close(0)
    server.close()
    ctx.term()


def _recorder(results: list, then: Callable[[], None] = lambda: None) -> Any:
    def done(resp: Any, err: E) -> None:
        results.append((err, resp.body if resp is not None else None))
        then()
    return done


def _recv(peer: zmq.Socket) -> tuple[bytes, Any]:
    assert peer.poll(2000), "the request did not reach the peer"
    identity, *frames = peer.recv_multipart()
    return identity, decode_request(frames)


def test_answer_completes_request(env) -> None:
    server, peer, endpoint, io = env
    results: list = []

    def answer() -> None:
        identity, req = _recv(peer)
        assert req.body == {"x": 1}
        peer.send_multipart([identity, *encode_response(req.api_key, 0, req.correlation_id,
                                                         {"ok": True})])

    io.send(endpoint, ApiKey.PRODUCE, {"x": 1}, [], LONG_TIMEOUT_MS, _recorder(results,
                                                                              server.stop))
    server.call_later(50, answer)
    server.run()
    assert results == [(E.NONE, {"ok": True})]


def test_closed_connection_fails_pending_at_once(env) -> None:
    server, peer, endpoint, io = env
    results: list = []

    def peer_dies() -> None:
        _recv(peer)  # the request reached the peer, which then dies without answering
        peer.close(0)

    def after_first_failure() -> None:
        # the link is known lost: a new request fails at once instead of queueing
        io.send(endpoint, ApiKey.PRODUCE, {}, [], LONG_TIMEOUT_MS,
                _recorder(results, server.stop))

    io.send(endpoint, ApiKey.PRODUCE, {}, [], LONG_TIMEOUT_MS,
            _recorder(results, after_first_failure))
    server.call_later(50, peer_dies)
    server.run()
    assert [err for err, _ in results] == [E.NETWORK_EXCEPTION, E.NETWORK_EXCEPTION]


def test_forget_fails_pending_and_closes_link(env) -> None:
    server, peer, endpoint, io = env
    results: list = []

    def forget() -> None:
        _recv(peer)
        io.forget(endpoint)
        server.stop()

    io.send(endpoint, ApiKey.FETCH, {}, [], LONG_TIMEOUT_MS, _recorder(results))
    server.call_later(50, forget)
    server.run()
    assert results == [(E.NETWORK_EXCEPTION, None)]
    assert io.endpoints() == []

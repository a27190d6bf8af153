"""NetworkClient over real ZeroMQ: correlation, timeouts, refused and lost connections."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest
import zmq

from qnode.sdk.connection import NetworkClient
from qnode.sdk.errors import NetworkError, NotLeaderError, RequestTimeoutError
from qnode.transport.api import ApiKey
from qnode.transport.frame import decode_request, encode_response


class Peer:
    """A ROUTER that answers each request as `behaviour(request)` says, in its own thread."""

    def __init__(self, mode: str = "echo") -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.mode = mode
        self.seen: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        held = []
        while not self.stop.is_set():
            if not self.sock.poll(20):
                continue
            ident, *frames = self.sock.recv_multipart()
            req = decode_request(frames)
            self.seen.append(req.correlation_id)
            if self.mode == "silent":
                continue
            if self.mode == "reverse":  # answer two at a time, in reverse order
                held.append((ident, req))
                if len(held) < 2:
                    continue
                batch, held = held[::-1], []
            elif self.mode == "close":
                self.sock.close(0)
                return
            else:
                batch = [(ident, req)]
            for ident_, r in batch:
                err = 6 if r.body.get("fail") else 0
                body = {"echo": r.body.get("n"), "data": len(r.data)}
                self.sock.send_multipart([ident_, *encode_response(
                    r.api_key, r.version, r.correlation_id, body, [b"x" * 3], error_code=err)])

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close(0)
        self.ctx.term()


@pytest.fixture
def client() -> Iterator[NetworkClient]:
    c = NetworkClient("test", request_timeout_ms=5000)
    yield c
    c.close()


def test_request_response_with_data_frames(client: NetworkClient) -> None:
    peer = Peer()
    try:
        resp = client.request(peer.endpoint, ApiKey.METADATA, {"n": 1}, [b"a", b"b"])
        assert resp.body == {"echo": 1, "data": 2}
        assert [bytes(f.buffer) for f in resp.data] == [b"xxx"]
    finally:
        peer.close()


def test_answers_out_of_order_reach_their_own_request(client: NetworkClient) -> None:
    peer = Peer("reverse")
    try:
        done: dict[int, int] = {}
        reqs = [client.send(peer.endpoint, ApiKey.METADATA, {"n": i},
                            callback=lambda r: done.__setitem__(r.context, r.response.body["echo"]),
                            context=i) for i in range(4)]
        deadline = time.monotonic() + 5
        while len(done) < 4 and time.monotonic() < deadline:
            client.poll(100)
        assert done == {0: 0, 1: 1, 2: 2, 3: 3}
        assert len({r.correlation_id for r in reqs}) == 4
    finally:
        peer.close()


def test_request_level_error_becomes_an_exception(client: NetworkClient) -> None:
    peer = Peer()
    try:
        with pytest.raises(NotLeaderError):
            client.request(peer.endpoint, ApiKey.PRODUCE, {"fail": True})
    finally:
        peer.close()


def test_timeout_fails_and_rebuilds_the_connection(client: NetworkClient) -> None:
    peer = Peer("silent")
    try:
        t = time.monotonic()
        with pytest.raises(RequestTimeoutError):
            client.request(peer.endpoint, ApiKey.METADATA, {"n": 1}, timeout_ms=200)
        assert 0.15 < time.monotonic() - t < 3
        assert client.in_flight(peer.endpoint) == 0
        peer.mode = "echo"
        assert client.request(peer.endpoint, ApiKey.METADATA, {"n": 2}).body["echo"] == 2
    finally:
        peer.close()


def test_refused_connection_fails_fast(client: NetworkClient) -> None:
    s = zmq.Context.instance().socket(zmq.ROUTER)
    port = s.bind_to_random_port("tcp://127.0.0.1")
    s.close(0)  # nobody listens there now
    t = time.monotonic()
    with pytest.raises(NetworkError):
        client.request(f"tcp://127.0.0.1:{port}", ApiKey.METADATA, {}, timeout_ms=4000)
    assert time.monotonic() - t < 2.5  # the monitor saw the refusal: no 4 s timeout


def test_peer_gone_mid_request_fails_fast(client: NetworkClient) -> None:
    peer = Peer("close")
    try:
        t = time.monotonic()
        with pytest.raises(NetworkError):
            client.request(peer.endpoint, ApiKey.METADATA, {}, timeout_ms=4000)
        assert time.monotonic() - t < 2.5
    finally:
        peer.close()


def test_fire_and_forget_completes_at_once(client: NetworkClient) -> None:
    peer = Peer("silent")
    try:
        req = client.send(peer.endpoint, ApiKey.PRODUCE, {}, expect_response=False)
        assert req.done and req.error is None and client.in_flight(peer.endpoint) == 0
    finally:
        peer.close()


def test_closed_client_refuses(client: NetworkClient) -> None:
    client.close()
    with pytest.raises(NetworkError):
        client.send("tcp://127.0.0.1:1", ApiKey.METADATA, {})


def test_shared_client_lent_between_waits() -> None:
    """A shared client: its owner waits on the sockets' ZMQ_FDs without holding the lock
    (here with a 10 s timeout, so only those fds or the bell can end a wait in time); a
    second thread takes the lock and sends, opening the connection itself. Every answer
    must reach the owner promptly: the connection is registered on the owner's next turn,
    and an answer whose fd signal a send consumed is still read (zmq's ZMQ_FD rule)."""
    peer = Peer()
    c = NetworkClient("test", 5000, shared=True)
    bell = os.eventfd(0, os.EFD_NONBLOCK)
    c.register_fd(bell)
    got: list[int] = []
    stop = threading.Event()

    def owner() -> None:
        with c.lock:
            while not stop.is_set():
                wait_ms = c.wait_ms(10_000)
                c.lock.release()
                try:
                    events = c.wait(wait_ms)
                finally:
                    c.lock.acquire()
                if bell in c.handle(events):
                    os.eventfd_read(bell)

    def lend(n: int) -> None:
        with c.lock:
            c.borrowed = True
            try:
                c.send(peer.endpoint, ApiKey.METADATA, {"n": n},
                       callback=lambda r: got.append(r.response.body["echo"]))
            finally:
                c.borrowed = False
            if c.needs_owner():
                os.eventfd_write(bell, 1)

    def answered(count: int) -> bool:
        deadline = time.monotonic() + 3
        while len(got) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return sorted(got) == list(range(count))

    thread = threading.Thread(target=owner)
    thread.start()
    try:
        time.sleep(0.1)  # the owner is in its wait: the borrower opens the connection
        lend(0)
        assert answered(1)
        for n in range(1, 60):
            lend(n)
            time.sleep(0.002 if n % 3 else 0)
        assert answered(60)
        assert any(isinstance(k, int) for k in c._by_socket)  # polled by its fd
    finally:
        stop.set()
        os.eventfd_write(bell, 1)
        thread.join(5)
        c.close()
        os.close(bell)
        peer.close()


def test_endpoint_zmq_refuses_fails_the_request_and_close_returns() -> None:
    """An endpoint zmq cannot connect to (say, bad metadata) fails that request like a lost
    connection; its half-made sockets are closed, so close() (context term) does not hang."""
    c = NetworkClient(request_timeout_ms=2000)
    req = c.send("tcp://127.0.0.1:notaport", ApiKey.METADATA, {})
    assert req.done and isinstance(req.error, NetworkError)
    assert "notaport" in str(req.error)
    done = threading.Event()
    closer = threading.Thread(target=lambda: (c.close(), done.set()), daemon=True)
    closer.start()
    assert done.wait(10), "close() hung on the refused endpoint's sockets"

"""Socket helpers: random binds, oversized messages disconnect the peer, replies to gone peers."""

from __future__ import annotations

import pytest
import zmq

from qnode.transport.sockets import (
    NOBLOCK,
    RANDOM_PORTS,
    SocketOptions,
    dealer_client,
    has_message,
    recv_frames,
    router_server,
    send_frames,
    split_endpoint,
)


def test_split_endpoint() -> None:
    assert split_endpoint("tcp://127.0.0.1:9700") == ("tcp", "127.0.0.1", 9700)
    assert split_endpoint("tcp://127.0.0.1:0") == ("tcp", "127.0.0.1", 0)
    assert split_endpoint("tcp://127.0.0.1:*") == ("tcp", "127.0.0.1", None)
    with pytest.raises(ValueError):
        split_endpoint("127.0.0.1:9700")
    with pytest.raises(ValueError):
        split_endpoint("tcp://h:port")


def test_router_dealer_round_trip_on_random_port() -> None:
    ctx = zmq.Context()
    srv, ep = router_server(ctx, "tcp://127.0.0.1:0")
    cli = dealer_client(ctx, ep)
    try:
        assert split_endpoint(ep)[2]
        cli.send_multipart([b"h", b"b"])
        assert srv.poll(5000)
        ident, *rest = srv.recv_multipart()
        assert rest == [b"h", b"b"]
        srv.send_multipart([ident, b"r"])
        assert cli.poll(5000) and cli.recv_multipart() == [b"r"]
    finally:
        cli.close(0)
        srv.close(0)
        ctx.term()


def test_oversized_message_is_dropped_and_server_keeps_serving() -> None:
    ctx = zmq.Context()
    srv, ep = router_server(ctx, "tcp://127.0.0.1:0", SocketOptions(max_msg_bytes=1000))
    big, small = dealer_client(ctx, ep), dealer_client(ctx, ep)
    try:
        big.send_multipart([b"h", b"x" * 5000])
        small.send_multipart([b"h", b"ok"])
        assert srv.poll(5000)
        assert srv.recv_multipart()[1:] == [b"h", b"ok"]
        assert not srv.poll(200)  # the oversized one never arrives
        # a reply to a peer that is gone is dropped silently (no ROUTER_MANDATORY)
        srv.send_multipart([b"\x00nobody", b"r"])
    finally:
        big.close(0)
        small.close(0)
        srv.close(0)
        ctx.term()


def test_send_frames_and_recv_frames_carry_every_kind_of_frame() -> None:
    ctx = zmq.Context()
    srv, ep = router_server(ctx, "tcp://127.0.0.1:0")
    cli = dealer_client(ctx, ep)
    try:
        big = bytes(range(256)) * 400  # over pyzmq's copy threshold: sent zero-copy
        send_frames(cli, [b"h", memoryview(b"body"), bytearray(b"ba"), zmq.Frame(b"f"), big])
        assert srv.poll(5000)
        ident, *rest = recv_frames(srv, NOBLOCK)
        assert [f.bytes for f in rest] == [b"h", b"body", b"ba", b"f", big]
        assert not has_message(srv)
        send_frames(srv, [ident, b"one"])  # a single-frame message after the identity
        assert cli.poll(5000)
        assert has_message(cli)
        assert [f.bytes for f in recv_frames(cli)] == [b"one"]
        assert not has_message(cli)
        with pytest.raises(zmq.Again):
            recv_frames(cli, NOBLOCK)
    finally:
        cli.close(0)
        srv.close(0)
        ctx.term()


def test_send_frames_refuses_a_non_buffer_before_sending_anything() -> None:
    ctx = zmq.Context()
    srv, ep = router_server(ctx, "tcp://127.0.0.1:0")
    cli = dealer_client(ctx, ep)
    try:
        with pytest.raises(TypeError):
            send_frames(cli, [b"h", "not bytes", b"x"])
        send_frames(cli, [b"next"])  # nothing half-sent: the next message arrives whole
        assert srv.poll(5000)
        _, *rest = recv_frames(srv)
        assert [f.bytes for f in rest] == [b"next"]
    finally:
        cli.close(0)
        srv.close(0)
        ctx.term()


def test_random_bind_never_takes_an_avoided_port() -> None:
    """A worker binds a random port while its coordinator may not have bound the node's yet:
    it must never take that one (seen in CI: the worker answered the other workers' hellos
    on the coordinator's port, and the coordinator could not bind)."""
    ctx = zmq.Context()
    try:
        window = set(range(60000, 60040))
        avoid = set(RANDOM_PORTS) - window
        for _ in range(5):
            sock, endpoint = router_server(ctx, "tcp://127.0.0.1:*", avoid=avoid)
            assert split_endpoint(endpoint)[2] in window
            sock.close(0)
    finally:
        ctx.term()


def test_worker_reserves_the_nodes_and_peers_bootstrap_ports(tmp_path) -> None:
    from qnode.node.config import load_config
    from qnode.node.worker import WorkerConfig

    node = load_config(None, {"data.dir": str(tmp_path), "listen": "tcp://127.0.0.1:51234",
                              "peers": ["1@tcp://127.0.0.1:51235", "2@tcp://127.0.0.1:51236"]})
    wc = WorkerConfig.from_node_config(node, 0, node.listen)
    assert wc.reserved_ports == [51234, 51235, 51236]
    assert WorkerConfig.from_json(wc.to_json()).reserved_ports == wc.reserved_ports

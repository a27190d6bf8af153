"""Doorbell datagrams: the value's rules, a round trip over a real abstract Unix socket, and
what a receiver does with datagrams that are not answers of its own."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from qnode.transport.doorbell import (
    MAX_RESPONSE_BYTES,
    PREFIX,
    DoorbellError,
    DoorbellReceiver,
    DoorbellSender,
    LocalListener,
    LocalUnavailable,
    parse_doorbell,
    unpack_datagram,
    worker_address,
)
from qnode.transport.frame import FrameError, decode_response, encode_response


@pytest.fixture
def pair() -> Iterator[tuple[DoorbellSender, DoorbellReceiver]]:
    sender, receiver = DoorbellSender(), DoorbellReceiver()
    yield sender, receiver
    sender.close()
    receiver.close()


def test_parse_accepts_id_and_token_and_names_the_abstract_address() -> None:
    address, token = parse_doorbell("123-abc_D:" + "0f" * 16)
    assert address == PREFIX + b"123-abc_D" and token == b"0f" * 16


@pytest.mark.parametrize("value", [
    "", "no-token", ":" + "a" * 32, "id:short", "id:" + "A" * 32, "i d:" + "a" * 32,
    "x" * 65 + ":" + "a" * 32, "id:" + "a" * 65, "../etc:" + "a" * 32,
])
def test_parse_refuses_anything_else_with_the_rule(value: str) -> None:
    with pytest.raises(DoorbellError, match="doorbell must be"):
        parse_doorbell(value)


def test_a_response_round_trips_frame_for_frame(pair) -> None:
    sender, receiver = pair
    address, token = parse_doorbell(receiver.value)
    data = memoryview(b"record batch bytes" * 10)
    frames = encode_response(1, 0, 77, {"topics": [{"name": "t"}]}, [data, b"second"])
    assert sender.send(address, token, frames)
    got = receiver.receive()
    assert len(got) == 1
    resp = decode_response(got[0])
    assert (resp.correlation_id, resp.body) == (77, {"topics": [{"name": "t"}]})
    assert resp.data == [bytes(data), b"second"]
    assert receiver.receive() == []  # one was sent, one came


def test_sender_refuses_what_must_go_through_zmq(pair) -> None:
    sender, receiver = pair
    address, token = parse_doorbell(receiver.value)
    big = encode_response(1, 0, 1, {}, [b"x" * (MAX_RESPONSE_BYTES + 1)])
    assert not sender.send(address, token, big)  # too large for one datagram
    gone = parse_doorbell("nobody-binds-this:" + "a" * 32)[0]
    assert not sender.send(gone, token, encode_response(1, 0, 1, {}))  # no such socket
    assert receiver.receive() == []


def test_a_full_receive_queue_sends_through_zmq_instead(pair) -> None:
    sender, receiver = pair
    address, token = parse_doorbell(receiver.value)
    frames = encode_response(1, 0, 1, {}, [b"x" * 30000])
    sent = 0
    while sender.send(address, token, frames):  # nobody reads: the queue fills up
        sent += 1
        assert sent < 10_000
    assert sent >= 1
    assert len(receiver.receive(limit=10_000)) == sent  # every datagram sent arrives whole


def test_datagrams_without_our_token_or_malformed_are_dropped(pair) -> None:
    sender, receiver = pair
    address, token = parse_doorbell(receiver.value)
    assert sender.send(address, b"f" * 32, encode_response(1, 0, 5, {}))  # someone else's
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        raw.sendto(b"garbage", address)
        raw.sendto(b"QD\x01" + bytes([len(token)]) + token + b"\x00\x02\x00\x00\x00\x09ab", address)
    finally:
        raw.close()
    assert sender.send(address, token, encode_response(1, 0, 6, {}))
    got = receiver.receive(limit=10)
    assert [decode_response(f).correlation_id for f in got] == [6]
    assert receiver.dropped == 3


def test_unpack_refuses_trailing_bytes_and_short_frames() -> None:
    token = b"a" * 16
    head = b"QD\x01\x10" + token
    with pytest.raises(FrameError, match="after the last frame"):
        unpack_datagram(memoryview(head + b"\x00\x00" + b"extra"), token)
    with pytest.raises(FrameError, match="truncated"):
        unpack_datagram(memoryview(head + b"\x00\x01\x00"), token)
    with pytest.raises(FrameError, match="not a doorbell"):
        unpack_datagram(memoryview(b"QX\x01\x00\x00\x00"), token)


def test_a_request_reaches_a_local_listener_with_where_to_answer() -> None:
    listener = LocalListener("tcp://127.0.0.1:1")
    client = DoorbellReceiver()
    try:
        assert listener.address == worker_address("tcp://127.0.0.1:1")
        assert listener.receive() is None  # nothing queued: no exception
        assert client.send_request(listener.address, [b"header", memoryview(b"body")])
        reply, frames = listener.receive()
        assert reply == client.value and [bytes(f) for f in frames] == [b"header", b"body"]
        # the worker answers on the doorbell the request named, through its own socket
        sender = DoorbellSender(per_destination=True)
        try:
            address, token = parse_doorbell(reply)
            assert sender.send(address, token, encode_response(0, 0, 9, {}))
            (answer,) = client.receive()
            assert decode_response(answer).correlation_id == 9
        finally:
            sender.close()
    finally:
        client.close()
        listener.close()


def test_no_local_listener_means_local_unavailable() -> None:
    client = DoorbellReceiver()
    try:
        with pytest.raises(LocalUnavailable):
            client.send_request(worker_address("tcp://127.0.0.1:2"), [b"h"])
        assert not client.send_request(PREFIX + b"x", [b"x" * (MAX_RESPONSE_BYTES + 1)])
    finally:
        client.close()
    assert worker_address("tcp://" + "h" * 100 + ":1") is None  # no room for the name


def test_a_second_listener_for_one_endpoint_is_refused() -> None:
    first = LocalListener("tcp://127.0.0.1:3")
    try:
        with pytest.raises(OSError):
            LocalListener("tcp://127.0.0.1:3")
    finally:
        first.close()


def test_per_destination_sender_forgets_a_gone_doorbell() -> None:
    sender = DoorbellSender(per_destination=True)
    client = DoorbellReceiver()
    address, token = parse_doorbell(client.value)
    try:
        assert sender.send(address, token, encode_response(0, 0, 1, {}))
        client.close()
        assert not sender.send(address, token, encode_response(0, 0, 2, {}))
    finally:
        sender.close()

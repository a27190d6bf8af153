"""Producer and consumer behaviour that needs no node: config checks, unreachable nodes."""

from __future__ import annotations

import time

import pytest

from qnode.sdk import Admin, Consumer, Producer, TopicPartition
from qnode.sdk.errors import (
    ConsumerStateError,
    InvalidConfigError,
    ProducerClosedError,
    QnodeError,
    RequestTimeoutError,
    TransactionError,
)
from qnode.sdk.producer import parse_acks


def dead_endpoint() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize(("given", "want"), [
    (0, 0), (1, 1), (-1, -1), ("all", -1), ("ALL", -1), ("0", 0), ("1", 1), ("-1", -1)])
def test_acks_forms(given: object, want: int) -> None:
    assert parse_acks(given) == want  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs", [
    {"acks": 2}, {"acks": "some"}, {"linger_ms": -1}, {"batch_size": 0},
    {"compression": "snappy"}, {"compression": "brotli"}, {"enable_idempotence": True},
    {"buffer_memory": 0}, {"max_in_flight_requests_per_connection": 0}])
def test_bad_config_is_refused_up_front(kwargs: dict) -> None:
    with pytest.raises(InvalidConfigError):
        Producer(dead_endpoint(), **kwargs)


def test_transactions_are_refused_clearly() -> None:
    with pytest.raises(TransactionError, match="not available"):
        Producer(dead_endpoint(), transactional_id="tx-1")


def test_unreachable_node_fails_send_after_max_block() -> None:
    p = Producer(dead_endpoint(), max_block_ms=300)
    try:
        t = time.monotonic()
        with pytest.raises(RequestTimeoutError, match="is the node"):
            p.send("t", b"v")
        assert 0.25 < time.monotonic() - t < 5
    finally:
        p.close()
    with pytest.raises(ProducerClosedError):
        p.send("t", b"v")


def test_consumer_without_group_refuses_group_calls() -> None:
    c = Consumer(bootstrap=dead_endpoint())
    try:
        with pytest.raises(ConsumerStateError):
            c.subscribe(["t"])
        with pytest.raises(ConsumerStateError):
            c.commit()
        with pytest.raises(ConsumerStateError):
            c.seek(TopicPartition("t", 0), 5)  # not assigned
        c.assign([TopicPartition("t", 0)])
        c.seek(TopicPartition("t", 0), 5)
        assert c.position(TopicPartition("t", 0)) == 5
        assert c.poll(0.2) == []  # node unreachable: no records, no exception
    finally:
        c.close()
    with pytest.raises(ConsumerStateError):
        c.poll(0)


def test_bad_consumer_config() -> None:
    with pytest.raises(QnodeError):
        Consumer(bootstrap=dead_endpoint(), isolation_level="dirty")
    with pytest.raises(QnodeError):
        Consumer(bootstrap=dead_endpoint(), auto_offset_reset="middle")


@pytest.mark.parametrize("bootstrap", [
    "bogus", "tcp://127.0.0.1:notaport", "tcp://:9700", "udp://127.0.0.1:9700",
    "tcp://127.0.0.1:0", "tcp://127.0.0.1:70000", "tcp://127.0.0.1:*", " , "])
def test_bad_bootstrap_is_refused_up_front(bootstrap: str) -> None:
    """Each client names the endpoint at construction (it used to be a zmq error in the
    sender thread, or a CLI that hung at exit on the half-made socket)."""
    for make in (lambda: Producer(bootstrap), lambda: Consumer(bootstrap=bootstrap),
                 lambda: Admin(bootstrap)):
        with pytest.raises(InvalidConfigError, match="bootstrap"):
            make()


@pytest.mark.parametrize(("ts", "error"), [(-5, ValueError), ("x", TypeError),
                                           (1.5, TypeError), (True, TypeError)])
def test_bad_timestamp_is_refused_before_anything_is_queued(ts: object, error: type) -> None:
    """As Kafka's producer: a record's timestamp is ms since the epoch, never negative."""
    p = Producer(dead_endpoint(), max_block_ms=300)
    try:
        with pytest.raises(error, match="timestamp_ms"):
            p.send("t", b"v", timestamp_ms=ts)  # type: ignore[arg-type]
    finally:
        p.close()


def test_seek_refuses_offsets_that_are_not_non_negative_ints() -> None:
    c = Consumer(bootstrap=dead_endpoint())
    try:
        tp = TopicPartition("t", 0)
        c.assign([tp])
        for bad, error in (("5", TypeError), (2.0, TypeError), (True, TypeError),
                           (-1, ValueError)):
            with pytest.raises(error, match="seek offset"):
                c.seek(tp, bad)  # type: ignore[arg-type]
        c.seek(tp, 7)
        assert c.position(tp) == 7
    finally:
        c.close()

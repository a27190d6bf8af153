"""Produce by a same-host worker's local socket, through the SDK's NetworkClient against a real
worker process: order on one connection when a request cannot go by datagram."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from worker_harness import Client, MetadataFeed, WorkerProcess, make_batch

from qnode.sdk.connection import NetworkClient
from qnode.transport.api import ApiKey


def _body(topic: str) -> dict:
    return {"acks": 1, "timeout_ms": 5000,
            "topics": [{"name": topic, "partitions": [{"partition": 0, "frame": 0}]}]}


@pytest.fixture
def client(feed: MetadataFeed, worker: WorkerProcess) -> Iterator[NetworkClient]:
    """A NetworkClient with a doorbell, once the worker serves topic "t"."""
    feed.add_topic("t")
    raw = Client(worker.endpoint)
    c = NetworkClient("local-test", 10000)
    try:
        raw.wait_ready("t", 0)
        assert c.enable_doorbell() is not None
        yield c
    finally:
        c.close()
        raw.close()


def test_a_request_too_large_for_a_datagram_waits_for_the_datagram_one_before_it(
    worker: WorkerProcess, client: NetworkClient
) -> None:
    small = client.send(worker.endpoint, ApiKey.PRODUCE, _body("t"), [make_batch([b"s"])],
                        local=True)
    large = client.send(worker.endpoint, ApiKey.PRODUCE, _body("t"),
                        [make_batch([b"L" * 100_000])], local=True)
    assert small.local and not large.local
    assert client.deferred_sends == 0  # held back: the small one is not answered yet
    while not (small.done and large.done):
        client.poll(100)
    offsets = [r.response.body["topics"][0]["partitions"][0]["base_offset"]
               for r in (small, large)]
    assert offsets == [0, 1]  # appended in the order sent
    assert (client.local_sends, client.deferred_sends) == (1, 1)
    # nothing in flight: a request that fits goes by datagram again
    again = client.send(worker.endpoint, ApiKey.PRODUCE, _body("t"), [make_batch([b"a"])],
                        local=True)
    while not again.done:
        client.poll(100)
    assert again.local and again.error is None and client.local_sends == 2


def test_a_dropped_connection_fails_waiting_requests_too(
    worker: WorkerProcess, client: NetworkClient
) -> None:
    first = client.send(worker.endpoint, ApiKey.PRODUCE, _body("t"), [make_batch([b"1"])],
                        local=True)
    waiting = [
        client.send(worker.endpoint, ApiKey.PRODUCE, _body("t"), [make_batch([b"2"])]),
        client.send(worker.endpoint, ApiKey.PRODUCE, {**_body("t"), "acks": 0},
                    [make_batch([b"3"])], expect_response=False),
    ]
    assert first.local and not any(r.done for r in waiting)  # behind the datagram one
    client.disconnect(worker.endpoint)
    assert all(r.done and r.error is not None for r in [first, *waiting])
    assert client.deferred_sends == 0

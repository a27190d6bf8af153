"""channel.py: what a child reports reaches the parent intact (real PAIR sockets, one process)."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import msgpack
import numpy as np
import pytest
import zmq

from qnode.loadtest.channel import ChildChannel, records_of, report_child_run


@pytest.fixture
def link() -> Iterator[tuple[zmq.Socket, ChildChannel]]:
    # ChildChannel takes SIGINT/SIGTERM over (it is meant for a child process): give them back.
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    ctx = zmq.Context()
    parent = ctx.socket(zmq.PAIR)
    parent.setsockopt(zmq.LINGER, 0)
    port = parent.bind_to_random_port("tcp://127.0.0.1")
    ch = ChildChannel(f"tcp://127.0.0.1:{port}")
    try:
        yield parent, ch
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
        parent.close()
        ctx.term()


def _recv(parent: zmq.Socket) -> dict:
    assert parent.poll(5000), "nothing arrived"
    return msgpack.unpackb(parent.recv(), raw=False)


def test_records_arrive_as_packed_arrays(link: tuple[zmq.Socket, ChildChannel]) -> None:
    parent, ch = link
    for i in range(5):
        ch.record(1000.0 + i, 2.5 * i, 200 + i)
    ch.failure(999.0, 7.0, 200, "NetworkError: gone")
    ch.flush()
    msg = _recv(parent)
    assert msg["op"] == "ev"
    done, rt, size = records_of(msg)
    assert done.tolist() == [1000.0, 1001.0, 1002.0, 1003.0, 1004.0]
    assert rt.tolist() == [0.0, 2.5, 5.0, 7.5, 10.0]
    assert size.tolist() == [200, 201, 202, 203, 204] and size.dtype == np.uint32
    assert msg["fail"] == [[999.0, 7.0, 200, "NetworkError: gone"]]
    ch.flush()  # nothing new: nothing sent
    assert not parent.poll(100)
    ch.close()


def test_done_and_fatal_always_reach_the_runner(link: tuple[zmq.Socket, ChildChannel]) -> None:
    parent, ch = link
    ch.record(1.0, 1.0, 1)

    def boom() -> dict:
        raise KeyError("lost")

    assert report_child_run(ch, boom) == 1
    first, last = _recv(parent), _recv(parent)
    assert first["op"] == "ev" and records_of(first)[0].tolist() == [1.0]  # flushed first
    assert last["op"] == "fatal" and "KeyError: 'lost'" in last["msg"]


def test_done_carries_stats_and_cpu(link: tuple[zmq.Socket, ChildChannel]) -> None:
    parent, ch = link
    assert report_child_run(ch, lambda: {"consumed": 3}) == 0
    msg = _recv(parent)
    assert msg["op"] == "done" and msg["stats"]["consumed"] == 3
    assert msg["stats"]["cpu_s"] > 0

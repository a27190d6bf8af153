"""The zmq latency floor helper: a real echo child, paced round trips, no process left."""

from __future__ import annotations

import time

from qnode.loadtest.raw_echo import echo_round_trips


def test_echo_round_trips_are_paced_and_counted() -> None:
    start = time.perf_counter()
    rtt = echo_round_trips(rate=200.0, count=40, size=64, timeout_s=10)
    elapsed = time.perf_counter() - start
    assert len(rtt) == 40
    assert all(0 < x < 5_000_000 for x in rtt)  # µs, each under 5 s
    assert elapsed >= 40 / 200.0  # paced: 41 messages at 200/s take at least 0.2 s

"""Queued batches still fail at delivery.timeout.ms while their leader's requests are stuck
(the sender checks expiry on a schedule, not on every loop). Real node, workers SIGSTOPped."""

from __future__ import annotations

import os
import signal
import time

import pytest

from qnode.sdk import Admin, Producer
from qnode.sdk.errors import RequestTimeoutError


@pytest.mark.parametrize("linger_ms", [0, 5])
def test_queued_batches_expire_while_the_leader_is_stuck(node, linger_ms: int) -> None:
    with Admin(bootstrap=node.bootstrap) as admin:
        admin.create_topic("stuck", partitions=1)
    with Producer(bootstrap=node.bootstrap, linger_ms=linger_ms, enable_idempotence=False,
                  max_in_flight_requests_per_connection=1, request_timeout_ms=20000,
                  delivery_timeout_ms=1500) as p:
        assert p.send("stuck", value=b"warm").result(30).offset == 0
        stopped = [node.kill_child("worker", w, signal.SIGSTOP) for w in (0, 1)]
        try:
            # v0 in flight (answered or timed out only after request_timeout_ms). With
            # linger.ms=0, v1 is queued behind it (max in flight 1) and v2..v4 held open
            # behind v1; with linger.ms>0, v1..v4 are held open while v0 is unacknowledged.
            # Queued and held batches must all fail at delivery.timeout.ms.
            futures = [p.send("stuck", value=b"v0")]
            _wait(p, open=0, ready=0, unacked_partitions=1)  # v0 sent
            futures.append(p.send("stuck", value=b"v1"))
            if linger_ms == 0:
                _wait(p, open=0, ready=1)  # v1 sealed and queued
            futures += [p.send("stuck", value=b"v%d" % i) for i in range(2, 5)]
            _wait(p, held=1)
            for fut in futures[1:]:
                with pytest.raises(RequestTimeoutError, match="delivery.timeout.ms"):
                    fut.result(10)
        finally:
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)
        p.flush(30)


def _wait(p: Producer, **want: int) -> None:
    """Until the producer's accumulator counts are as wanted (bounded)."""
    end = time.monotonic() + 10
    while any(p.metrics()[k] != v for k, v in want.items()):
        assert time.monotonic() < end, (want, p.metrics())
        time.sleep(0.005)

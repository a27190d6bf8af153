"""Queued batches still fail at delivery.timeout.ms while their leader's requests are stuck
(the sender checks expiry on a schedule, not on every loop). Real node, workers SIGSTOPped."""

from __future__ import annotations

import os
import signal

import pytest

from qnode.sdk import Admin, Producer
from qnode.sdk.errors import RequestTimeoutError


def test_queued_batches_expire_while_the_leader_is_stuck(node) -> None:
    with Admin(bootstrap=node.bootstrap) as admin:
        admin.create_topic("stuck", partitions=1)
    with Producer(bootstrap=node.bootstrap, linger_ms=0, enable_idempotence=False,
                  max_in_flight_requests_per_connection=1, request_timeout_ms=20000,
                  delivery_timeout_ms=1500) as p:
        assert p.send("stuck", value=b"warm").result(30).offset == 0
        stopped = [node.kill_child("worker", w, signal.SIGSTOP) for w in (0, 1)]
        try:
            futures = [p.send("stuck", value=b"v%d" % i) for i in range(5)]
            # The first is in flight (answered or timed out only after request_timeout_ms);
            # the ones queued behind it must fail at delivery.timeout.ms.
            for fut in futures[1:]:
                with pytest.raises(RequestTimeoutError, match="delivery.timeout.ms"):
                    fut.result(10)
        finally:
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)
        p.flush(30)

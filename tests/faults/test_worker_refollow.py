"""kill -9 of a running node's coordinator: the supervisor restarts it, the workers notice the
lost connection and follow the new coordinator's metadata log again, so a topic created right
after the restart is served (produce then fetch) by its worker."""

from __future__ import annotations

import signal
import time

from conftest import RawClient

from qnode.storage.batch_builder import BatchBuilder
from qnode.transport.api import ApiKey

DEADLINE_S = 30.0


def _create(admin: RawClient, name: str) -> int | None:
    body = {"topics": [{"name": name, "num_partitions": 2, "replication_factor": 1}]}
    resp = admin.try_call(ApiKey.CREATE_TOPICS, body, timeout_ms=1000)
    return None if resp is None else resp.body["topics"][0]["error"]


def _produce(client: RawClient, topic: str, partition: int, value: bytes) -> int | None:
    """The partition error of one acks=1 produce (None: no answer in time)."""
    b = BatchBuilder()
    b.append(None, value)
    body = {
        "acks": 1,
        "timeout_ms": 2000,
        "transactional_id": None,
        "topics": [{"name": topic, "partitions": [{"partition": partition, "frame": 0}]}],
    }
    resp = client.try_call(ApiKey.PRODUCE, body, data=(b.build(),), timeout_ms=1000)
    return None if resp is None else resp.body["topics"][0]["partitions"][0]["error"]


def _endpoints(admin: RawClient, topic: str) -> dict[int, str]:
    md = admin.call(ApiKey.METADATA, {"topics": [topic]}).body
    return {p["partition"]: p["endpoint"] for p in md["topics"][0]["partitions"]}


def test_coordinator_kill9_then_new_topic_is_served(node_factory, raw_client_factory) -> None:
    n = node_factory(workers=2)
    admin = raw_client_factory(n.bootstrap)
    assert _create(admin, "before") == 0
    old = n.kill_child("coordinator", sig=signal.SIGKILL)
    n.wait_child_restarted("coordinator", old)
    deadline = time.monotonic() + DEADLINE_S
    while _create(admin, "after") != 0:
        assert time.monotonic() < deadline, "CreateTopics never succeeded after the restart"
        time.sleep(0.05)
    served: set[int] = set()
    while len(served) < 2:
        assert time.monotonic() < deadline, f"only partitions {served} served: {n.log_tail()}"
        for p, endpoint in _endpoints(admin, "after").items():
            if p not in served and _produce(raw_client_factory(endpoint), "after", p, b"v") == 0:
                served.add(p)
        time.sleep(0.02)
    # the topic made before the restart is still served too
    for p, endpoint in _endpoints(admin, "before").items():
        assert _produce(raw_client_factory(endpoint), "before", p, b"w") == 0

"""Group APIs over real ZeroMQ: the coordinator server with the group handlers plugged in,
offsets persisted in real storage logs (one per `__consumer_offsets` partition)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import zmq

from qnode.coordinator.group_coordinator import GroupConfig, GroupCoordinator
from qnode.coordinator.group_handlers import GroupHandlers
from qnode.coordinator.offsets_store import LoadProgress, OffsetsAppender, load_batches
from qnode.coordinator.server import CoordinatorServer
from qnode.sdk.connection import NetworkClient
from qnode.sdk.errors import InvalidRequestError
from qnode.storage.log import Log
from qnode.transport.api import ApiKey
from qnode.transport.errors import ErrorCode as E

PARTITIONS = 3


class LogPartitions:
    """The offsets topic's partitions as real logs in a directory."""

    def __init__(self, root: Path) -> None:
        self.logs = {p: Log.open(root / f"__consumer_offsets-{p}") for p in range(PARTITIONS)}

    def send(self, partition, batch, done) -> None:
        log = self.logs[partition]
        log.append(batch, 0)
        log.high_watermark = log.log_end_offset
        done(E.NONE)

    def load_into(self, coordinator: GroupCoordinator) -> None:
        for p, log in self.logs.items():
            data = log.read(log.log_start_offset, 1 << 30)
            load_batches(b"".join(bytes(s) for s in data.slices), coordinator, LoadProgress())
            coordinator.finish_load(p)

    def close(self) -> None:
        for log in self.logs.values():
            log.close()


class Placement:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def status(self, group_id: str) -> E:
        return E.NOT_COORDINATOR if group_id.startswith("elsewhere") else E.NONE

    def find_coordinator(self, key: str, key_type: int) -> dict:
        return {"error": 0, "node_id": 1, "endpoint": self.endpoint}


class GroupServer:
    """A coordinator server thread serving only the group APIs."""

    def __init__(self, root: Path) -> None:
        self.ctx = zmq.Context()
        self.server = CoordinatorServer(self.ctx, "tcp://127.0.0.1:0", 1 << 20)
        self.parts = LogPartitions(root)
        self.flush_timer = None
        self.appender = OffsetsAppender(self.parts.send)
        self.coordinator = GroupCoordinator(GroupConfig(num_partitions=PARTITIONS), self,
                                            self.server.now_ms)
        self.parts.load_into(self.coordinator)
        handlers = GroupHandlers(self.coordinator, Placement(self.server.endpoint))
        for key, handler in handlers.handlers().items():
            self.server.register(key, lambda call, h=handler: h(call.request.body,
                                                                call.request.client_id,
                                                                call.reply))
        self.server.add_ticker(self.coordinator.next_deadline, self.coordinator.tick)
        self.wake_r, self.wake_w = os.pipe()
        self.server.add_reader(self.wake_r, self.server.stop)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def append(self, partition, records, done) -> None:  # OffsetsWriter, as GroupService does
        self.appender.append(partition, records, done)
        if self.flush_timer is None:
            self.flush_timer = self.server.call_later(0, self._flush)

    def _flush(self) -> None:
        self.flush_timer = None
        self.appender.flush()

    def stop(self) -> None:
        os.write(self.wake_w, b"x")
        self.thread.join(5)
        assert not self.thread.is_alive()
        self.server.close()
        self.parts.close()
        os.close(self.wake_r)
        os.close(self.wake_w)
        self.ctx.term()


@pytest.fixture
def group_server(tmp_path):
    servers = []

    def start() -> GroupServer:
        s = GroupServer(tmp_path)
        servers.append(s)
        return s

    yield start
    for s in servers:
        if s.thread.is_alive():
            s.stop()


@pytest.fixture
def client():
    c = NetworkClient("test-client", request_timeout_ms=5000)
    yield c
    c.close()


def join_body(member_id="", group="g", instance=None):
    return {"group_id": group, "session_timeout_ms": 5000, "rebalance_timeout_ms": 5000,
            "member_id": member_id, "group_instance_id": instance, "protocol_type": "consumer",
            "protocols": [{"name": "range", "metadata": b"m"}]}


def test_full_member_lifecycle_over_the_wire(group_server, client):
    ep = group_server().server.endpoint
    r = client.request(ep, ApiKey.FIND_COORDINATOR, {"key": "g", "key_type": 0}).body
    assert r == {"error": 0, "node_id": 1, "endpoint": ep}
    first = client.request(ep, ApiKey.JOIN_GROUP, join_body()).body
    assert first["error"] == E.MEMBER_ID_REQUIRED and first["member_id"].startswith("test-client")
    mid = first["member_id"]
    joined = client.request(ep, ApiKey.JOIN_GROUP, join_body(mid)).body
    assert joined["error"] == 0 and joined["leader"] == mid and joined["generation_id"] == 1
    assert joined["members"] == [{"member_id": mid, "group_instance_id": None, "metadata": b"m"}]
    synced = client.request(ep, ApiKey.SYNC_GROUP, {
        "group_id": "g", "generation_id": 1, "member_id": mid, "group_instance_id": None,
        "assignments": [{"member_id": mid, "assignment": b"A"}]}).body
    assert synced == {"error": 0, "assignment": b"A"}
    hb = {"group_id": "g", "generation_id": 1, "member_id": mid, "group_instance_id": None}
    assert client.request(ep, ApiKey.HEARTBEAT, hb).body["error"] == 0
    commit = client.request(ep, ApiKey.OFFSET_COMMIT, {
        "group_id": "g", "generation_id": 1, "member_id": mid, "group_instance_id": None,
        "topics": [{"name": "t", "partitions": [{"partition": 0, "offset": 17}]}]}).body
    assert commit == {"topics": [{"name": "t", "partitions": [{"partition": 0, "error": 0}]}]}
    stale = client.request(ep, ApiKey.OFFSET_COMMIT, {
        "group_id": "g", "generation_id": 0, "member_id": mid,
        "topics": [{"name": "t", "partitions": [{"partition": 0, "offset": 99}]}]}).body
    assert stale["topics"][0]["partitions"][0]["error"] == E.ILLEGAL_GENERATION
    fetched = client.request(ep, ApiKey.OFFSET_FETCH, {"group_id": "g", "topics": None}).body
    assert fetched["topics"][0]["partitions"][0]["offset"] == 17
    groups = client.request(ep, ApiKey.LIST_GROUPS, {}).body["groups"]
    assert groups == [{"group_id": "g", "protocol_type": "consumer", "state": "Stable"}]
    desc = client.request(ep, ApiKey.DESCRIBE_GROUPS, {"groups": ["g", "nope"]}).body["groups"]
    assert desc[0]["state"] == "Stable" and desc[0]["members"][0]["assignment"] == b"A"
    assert desc[1]["state"] == "Dead"
    left = client.request(ep, ApiKey.LEAVE_GROUP, {"group_id": "g", "members": [
        {"member_id": mid, "group_instance_id": None}]}).body
    assert left["error"] == 0
    deleted = client.request(ep, ApiKey.DELETE_GROUPS, {"groups": ["g"]}).body
    assert deleted == {"results": [{"group_id": "g", "error": 0}]}


def test_join_is_parked_until_the_barrier_completes(group_server, client):
    ep = group_server().server.endpoint
    a = client.request(ep, ApiKey.JOIN_GROUP, join_body(instance="a")).body
    client.request(ep, ApiKey.SYNC_GROUP, {"group_id": "g", "generation_id": 1,
                                           "member_id": a["member_id"], "assignments": []})
    b_req = client.send(ep, ApiKey.JOIN_GROUP, join_body(instance="b"))
    client.poll(200)
    assert not b_req.done  # parked: a has not rejoined yet
    a2 = client.request(ep, ApiKey.JOIN_GROUP, join_body(a["member_id"], instance="a")).body
    while not b_req.done:
        client.poll(100)
    b = b_req.response.body
    assert a2["generation_id"] == b["generation_id"] == 2 and len(a2["members"]) == 2


def test_malformed_and_misdirected_group_requests(group_server, client):
    ep = group_server().server.endpoint
    with pytest.raises(InvalidRequestError, match="group_id"):
        client.request(ep, ApiKey.JOIN_GROUP, {"session_timeout_ms": 5000, "protocols": []})
    with pytest.raises(InvalidRequestError, match="generation_id"):
        client.request(ep, ApiKey.HEARTBEAT, {"group_id": "g", "generation_id": "one",
                                              "member_id": "m"})
    assert client.request(ep, ApiKey.JOIN_GROUP, join_body(group="")).body["error"] == \
        E.INVALID_GROUP_ID
    body = join_body()
    body["session_timeout_ms"] = 1
    assert client.request(ep, ApiKey.JOIN_GROUP, body).body["error"] == E.INVALID_SESSION_TIMEOUT
    body = join_body()
    body["protocols"] = []
    assert client.request(ep, ApiKey.JOIN_GROUP, body).body["error"] == \
        E.INCONSISTENT_GROUP_PROTOCOL
    assert client.request(ep, ApiKey.HEARTBEAT, {
        "group_id": "elsewhere", "generation_id": 1, "member_id": "m"}).body["error"] == \
        E.NOT_COORDINATOR
    r = client.request(ep, ApiKey.FIND_COORDINATOR, {"key": "g", "key_type": 7}).body
    assert r["error"] == E.INVALID_REQUEST
    sync = client.request(ep, ApiKey.SYNC_GROUP, {"group_id": "g", "generation_id": 1,
                                                  "member_id": "ghost"}).body
    assert sync["error"] == E.UNKNOWN_MEMBER_ID
    # the server is still fine
    assert client.request(ep, ApiKey.LIST_GROUPS, {}).body["error"] == 0


def test_restart_keeps_committed_offsets(group_server, client):
    s = group_server()
    ep = s.server.endpoint
    for i in range(20):
        client.request(ep, ApiKey.OFFSET_COMMIT, {
            "group_id": f"g{i % 4}", "topics": [{"name": "t", "partitions": [
                {"partition": i, "offset": 100 + i, "metadata": "m"}]}]})
    s.stop()
    ep = group_server().server.endpoint
    for i in range(20):
        r = client.request(ep, ApiKey.OFFSET_FETCH, {
            "group_id": f"g{i % 4}", "topics": [{"name": "t", "partitions": [i]}]}).body
        assert r["topics"][0]["partitions"][0]["offset"] == 100 + i
        assert r["topics"][0]["partitions"][0]["metadata"] == "m"

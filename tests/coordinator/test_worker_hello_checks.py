"""WorkerHello refuses a worker of another node, data dir or cluster with a clear message
(a stray worker that reached this node's endpoint must not register its partitions), and
`offsets.topic.segment.bytes` sets the segment size __consumer_offsets is created with."""

from __future__ import annotations

import os

import pytest
from conftest import CoordinatorProcess, RawClient

from qnode.coordinator.meta_properties import read_meta_properties
from qnode.node.config import NodeConfigError, load_config
from qnode.transport.api import ApiKey
from qnode.transport.errors import ErrorCode as E


def _workers(client: RawClient) -> list:
    """Registered worker endpoints: the image, as a worker gets it past the log end."""
    body = client.call(ApiKey.METADATA_LOG_FETCH, {"offset": 10**9, "max_wait_ms": 0}).body
    return body["snapshot"]["workers"]


def _hello(coord: CoordinatorProcess, **fields: object) -> dict:
    body = {"node_id": 0, "worker_id": 0, "endpoint": "tcp://127.0.0.1:1", "pid": os.getpid()}
    return {**body, **fields}


def test_hello_of_another_data_dir_or_cluster_is_refused(coordinator_factory,
                                                         raw_client_factory, tmp_path) -> None:
    coord = coordinator_factory()
    client = raw_client_factory(coord.bootstrap)
    meta = read_meta_properties(coord.data_dir)
    assert meta is not None and meta.node_id == 0

    other_dir = tmp_path / "elsewhere"
    bad = client.call(ApiKey.WORKER_HELLO, _hello(coord, data_dir=str(other_dir)))
    assert bad.error_code == E.INVALID_REQUEST
    assert str(other_dir) in bad.body["message"] and "data dir" in bad.body["message"]
    bad = client.call(ApiKey.WORKER_HELLO, _hello(coord, cluster_id="not-this-cluster"))
    assert bad.error_code == E.INVALID_REQUEST and "not-this-cluster" in bad.body["message"]
    bad = client.call(ApiKey.WORKER_HELLO, _hello(coord, node_id=7))
    assert bad.error_code == E.INVALID_REQUEST and "node 7" in bad.body["message"]
    bad = client.call(ApiKey.WORKER_HELLO, _hello(coord, data_dir=5))
    assert bad.error_code == E.INVALID_REQUEST
    # none of the refused hellos registered an endpoint
    assert _workers(client) == [], "a refused worker was registered"

    # the same dir through another spelling (symlink, trailing part) is this node's
    link = tmp_path / "link"
    link.symlink_to(coord.data_dir)
    ok = client.call(ApiKey.WORKER_HELLO, _hello(coord, data_dir=str(link) + "/.",
                                                 cluster_id=meta.cluster_id))
    assert ok.error_code == 0 and ok.body["error"] == 0
    assert _workers(client) == [[0, 0, "tcp://127.0.0.1:1"]]
    # an old worker that sends neither field is still accepted
    ok = client.call(ApiKey.WORKER_HELLO, _hello(coord, worker_id=1))
    assert ok.error_code == 0 and ok.body["error"] == 0


def test_offsets_topic_segment_bytes(coordinator_factory, raw_client_factory) -> None:
    coord = coordinator_factory(config={"offsets.topic.segment.bytes": 1048576,
                                        "offsets.topic.num.partitions": 1})
    client = raw_client_factory(coord.bootstrap)
    client.call(ApiKey.FIND_COORDINATOR, {"key": "g", "key_type": 0})
    body = {"resources": [{"type": "topic", "name": "__consumer_offsets",
                           "keys": ["segment.bytes", "cleanup.policy"]}]}
    res = client.call(ApiKey.DESCRIBE_CONFIGS, body).body["resources"][0]
    assert res["error"] == 0, res
    configs = {c["name"]: c for c in res["configs"]}
    assert configs["segment.bytes"]["value"] == "1048576"
    assert configs["segment.bytes"]["source"] == "topic"
    assert configs["cleanup.policy"]["value"] == "compact"


@pytest.mark.parametrize("value", [0, 13, 2**31, "big", True])
def test_offsets_topic_segment_bytes_validated(value: object) -> None:
    with pytest.raises(NodeConfigError, match="offsets.topic.segment.bytes"):
        load_config(None, {"offsets.topic.segment.bytes": value})


def test_offsets_topic_segment_bytes_default() -> None:
    assert load_config(None, {}).get("offsets.topic.segment.bytes") == 104857600

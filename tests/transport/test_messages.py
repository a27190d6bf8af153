"""Request body schemas: required keys, types, nested lists, defaults, messages naming keys."""

from __future__ import annotations

import pytest

from qnode.transport.api import WORKER_APIS, ApiKey
from qnode.transport.frame import MalformedRequest, UnsupportedVersion, encode_request
from qnode.transport.messages import REQUEST_SCHEMAS, parse_request


def _produce(**over: object) -> dict:
    body = {"acks": 1, "topics": [{"name": "t", "partitions": [{"partition": 0, "frame": 0}]}]}
    body.update(over)
    return body


def test_every_api_has_a_schema() -> None:
    for key in ApiKey:
        assert (key, 0) in REQUEST_SCHEMAS


def test_valid_produce_gets_defaults() -> None:
    req = parse_request(encode_request(ApiKey.PRODUCE, 0, 1, _produce(extra="ignored")))
    assert req.body["timeout_ms"] == 30000 and req.body["transactional_id"] is None
    assert req.body["extra"] == "ignored"


def test_fetch_defaults_fill_nested_partitions() -> None:
    body = {"topics": [{"name": "t", "partitions": [{"partition": 1, "fetch_offset": 5}]}]}
    req = parse_request(encode_request(ApiKey.FETCH, 0, 1, body), WORKER_APIS)
    part = req.body["topics"][0]["partitions"][0]
    assert part["partition_max_bytes"] == 1048576 and part["current_leader_epoch"] == -1
    assert req.body["isolation_level"] == 0 and req.body["max_wait_ms"] == 500


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"topics": []}, "'acks' is missing"),
        (_produce(acks="1"), "'acks' must be an integer, got str"),
        (_produce(acks=True), "'acks' must be an integer, got bool"),
        (_produce(topics={}), "'topics' must be a list"),
        (_produce(topics=[{"partitions": []}]), "'topics[0].name' is missing"),
        (
            _produce(topics=[{"name": "t", "partitions": [{"partition": 0}, {"partition": 1}]}]),
            "'topics[0].partitions[0].frame' is missing",
        ),
        (
            _produce(topics=[{"name": "t", "partitions": [{"partition": None, "frame": 0}]}]),
            "'topics[0].partitions[0].partition' must be an integer, got nil",
        ),
        (_produce(transactional_id=5), "'transactional_id' must be a string"),
        (_produce(topics=[7]), "'topics[0]' must be a map"),
    ],
)
def test_bad_produce_bodies_name_the_key(body: dict, fragment: str) -> None:
    with pytest.raises(MalformedRequest) as info:
        parse_request(encode_request(ApiKey.PRODUCE, 0, 3, body))
    assert fragment in info.value.message
    assert info.value.header is not None and info.value.header.correlation_id == 3


def test_create_topics_configs_must_be_strings() -> None:
    bad = {"topics": [{"name": "t", "configs": {"retention.ms": 5}}]}
    with pytest.raises(MalformedRequest, match=r"topics\[0\].configs.retention.ms"):
        parse_request(encode_request(ApiKey.CREATE_TOPICS, 0, 1, bad))
    ok = parse_request(encode_request(ApiKey.CREATE_TOPICS, 0, 1, {"topics": [{"name": "t"}]}))
    assert ok.body["topics"][0]["configs"] == {} and ok.body["topics"][0]["num_partitions"] == -1


def test_defaults_are_not_shared_between_requests() -> None:
    a = parse_request(
        encode_request(
            ApiKey.SYNC_GROUP, 0, 1, {"group_id": "g", "generation_id": 1, "member_id": "m"}
        )
    )
    a.body["assignments"].append("x")
    b = parse_request(
        encode_request(
            ApiKey.SYNC_GROUP, 0, 1, {"group_id": "g", "generation_id": 1, "member_id": "m"}
        )
    )
    assert b.body["assignments"] == []


def test_unsupported_before_schema() -> None:
    with pytest.raises(UnsupportedVersion):
        parse_request(encode_request(ApiKey.METADATA, 0, 1, {"topics": 5}), WORKER_APIS)

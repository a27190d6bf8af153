"""Framing: request/response round trips and every malformed-header case."""

from __future__ import annotations

import struct

import msgpack
import pytest
import zmq

from qnode.transport.api import UNPARSEABLE_API_KEY, WORKER_APIS, ApiKey
from qnode.transport.errors import ErrorCode
from qnode.transport.frame import (
    REQUEST_HEADER,
    FrameError,
    MalformedRequest,
    UnsupportedVersion,
    decode_request,
    decode_request_header,
    decode_response,
    encode_request,
    encode_request_header,
    encode_response,
    error_response,
    response_for_error,
)


def test_request_round_trip_keeps_data_frames_untouched() -> None:
    data = [b"\x00" * 70, memoryview(b"abc")]
    frames = encode_request(ApiKey.PRODUCE, 0, 77, {"acks": 1, "topics": []}, data, "cli-é")
    req = decode_request(frames)
    assert (req.api_key, req.version, req.correlation_id, req.client_id) == (0, 0, 77, "cli-é")
    assert req.body == {"acks": 1, "topics": []}
    assert req.data[0] is data[0] and req.data[1] is data[1]


def test_request_round_trip_over_zmq_frames_zero_copy() -> None:
    ctx = zmq.Context.instance()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        port = a.bind_to_random_port("tcp://127.0.0.1")
        b.connect(f"tcp://127.0.0.1:{port}")
        b.send_multipart(encode_request(ApiKey.FETCH, 0, 2**32 - 1, {"x": b"\x01"}, [b"d" * 5000]))
        assert a.poll(5000)
        frames = a.recv_multipart(copy=False)
        req = decode_request(frames, WORKER_APIS)
        assert req.correlation_id == 2**32 - 1 and req.body == {"x": b"\x01"}
        assert isinstance(req.data[0], zmq.Frame) and bytes(req.data[0].buffer) == b"d" * 5000
    finally:
        a.close(0)
        b.close(0)


def test_response_round_trip_and_error_response() -> None:
    resp = decode_response(encode_response(ApiKey.FETCH, 0, 9, {"topics": []}, [b"x"]))
    assert (resp.api_key, resp.correlation_id, resp.error_code, resp.data) == (1, 9, 0, [b"x"])
    hdr = decode_request_header(encode_request_header(ApiKey.METADATA, 0, 5, "c"))
    err = decode_response(error_response(hdr, ErrorCode.INVALID_REQUEST, "bad key 'topics'"))
    assert (err.api_key, err.version, err.correlation_id) == (3, 0, 5)
    assert err.error_code == ErrorCode.INVALID_REQUEST == err.body["error"]
    assert err.body["message"] == "bad key 'topics'"
    anon = decode_response(error_response(None, ErrorCode.INVALID_REQUEST, "garbage"))
    assert (anon.api_key, anon.version, anon.correlation_id) == (UNPARSEABLE_API_KEY, 0, 0)


GOOD = encode_request_header(ApiKey.PRODUCE, 0, 1, "abc")


@pytest.mark.parametrize(
    "header, header_known",
    [
        (b"", False),
        (b"QN", False),
        (GOOD[: REQUEST_HEADER.size - 1], False),
        (b"XX" + GOOD[2:], False),
        (GOOD[:2] + b"\x02" + GOOD[3:], False),
        (GOOD[:-1], True),  # client id truncated
        (GOOD + b"z", True),  # trailing bytes
        (struct.pack(">2sBHHIH", b"QN", 1, 0, 0, 1, 2) + b"\xff\xfe", True),  # bad UTF-8
        (b"\x00" * 4096, False),
    ],
)
def test_malformed_headers_raise_with_what_was_parsed(header: bytes, header_known: bool) -> None:
    with pytest.raises(MalformedRequest) as info:
        decode_request([header, msgpack.packb({})])
    assert (info.value.header is not None) == header_known
    resp = decode_response(response_for_error(info.value))
    assert resp.error_code == ErrorCode.INVALID_REQUEST
    if header_known:
        assert resp.correlation_id == 1 or resp.correlation_id == 0
    else:
        assert resp.api_key == UNPARSEABLE_API_KEY


@pytest.mark.parametrize(
    "frames, fragment",
    [
        ([], "empty"),
        ([GOOD], "no body"),
        ([GOOD, b"\xc1"], "msgpack"),
        ([GOOD, msgpack.packb([1, 2])], "expected a map"),
        ([GOOD, msgpack.packb({}) + b"\x00"], "msgpack"),  # extra data after the map
        ([GOOD, msgpack.packb({1: 2})], "msgpack"),  # non-string key
        ([GOOD, b"\x91" * 100000], "msgpack"),  # absurd nesting
        ([GOOD, b"\xdb\xff\xff\xff\xff"], "msgpack"),  # length past the end
    ],
)
def test_malformed_bodies(frames: list[bytes], fragment: str) -> None:
    with pytest.raises(MalformedRequest) as info:
        decode_request(frames)
    assert fragment in info.value.message


def test_unknown_api_and_version_are_unsupported() -> None:
    with pytest.raises(UnsupportedVersion) as info:
        decode_request(encode_request(ApiKey.METADATA, 0, 4, {}), WORKER_APIS)
    assert info.value.header is not None and info.value.header.correlation_id == 4
    with pytest.raises(UnsupportedVersion, match="version 7"):
        decode_request(encode_request(ApiKey.PRODUCE, 7, 4, {}), WORKER_APIS)
    with pytest.raises(UnsupportedVersion, match="12345"):
        decode_request(encode_request(12345, 0, 4, {}), WORKER_APIS)
    resp = decode_response(
        error_response(
            decode_request_header(encode_request_header(99, 3, 8)),
            ErrorCode.UNSUPPORTED_VERSION,
            "no",
        )
    )
    assert (resp.api_key, resp.version, resp.correlation_id) == (99, 3, 8)


def test_bad_responses_raise_frame_error() -> None:
    good = encode_response(0, 0, 0, {})[0]
    for frames in ([], [b"QN"], [b"x" * 14, msgpack.packb({})], [good, b"\xc1"]):
        with pytest.raises(FrameError):
            decode_response(frames)

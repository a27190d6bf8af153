"""Framing of requests and responses: the fixed header frame, the msgpack body, the data frames.

A request is the multipart `[header, body, data_0, ...]` (a ROUTER sees the peer identity
first; strip it before calling `decode_request`). The header layout is docs/internals.md §1.
Record data frames are passed through untouched (zmq.Frame or memoryview) so the broker never
copies record bytes. Decoding never trusts its input: anything it cannot parse raises
`MalformedRequest` (or `UnsupportedVersion`) carrying what it could read of the header, so the
server can always answer with an error response instead of crashing or dropping the message.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgpack
import zmq

from qnode.transport.api import UNPARSEABLE_API_KEY, VersionRange, api_name
from qnode.transport.errors import ErrorCode

MAGIC = b"QN"
HEADER_VERSION = 1
REQUEST_HEADER = struct.Struct(">2sBHHIH")
RESPONSE_HEADER = struct.Struct(">2sBHHIh")
MAX_CLIENT_ID_BYTES = 0xFFFF
_REQ_SIZE = REQUEST_HEADER.size

_unpack_req = REQUEST_HEADER.unpack_from

# What a frame may be: zmq hands out Frames (copy=False) or bytes; tests and the SDK may build
# memoryviews or bytearrays.
FrameLike = zmq.Frame | bytes | bytearray | memoryview

_packb = msgpack.Packer(use_bin_type=True).pack  # one Packer: no per-call construction cost


class FrameError(Exception):
    """A multipart message that does not follow the wire protocol."""


class RequestError(FrameError):
    """A request the server answers with a request-level error code.

    `header` is what could be parsed of the request header (None when not even that), so the
    error response echoes the api key, version and correlation id when they are known.
    """

    code: ErrorCode = ErrorCode.INVALID_REQUEST

    def __init__(self, message: str, header: RequestHeader | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.header = header


class MalformedRequest(RequestError):
    """Bad magic, truncated header, bad client id, undecodable body... (INVALID_REQUEST)."""

    code = ErrorCode.INVALID_REQUEST


class UnsupportedVersion(RequestError):
    """An API key not served here, or a version outside its range (UNSUPPORTED_VERSION)."""

    code = ErrorCode.UNSUPPORTED_VERSION


class RequestHeader(NamedTuple):  # a tuple: built once per request, so cheap to make
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str


@dataclass(slots=True)
class Request:
    api_key: int
    version: int
    correlation_id: int
    client_id: str
    body: dict[str, Any]
    data: list[Any] = field(default_factory=list)  # zmq.Frame | memoryview | bytes, untouched

    @property
    def header(self) -> RequestHeader:
        return RequestHeader(self.api_key, self.version, self.correlation_id, self.client_id)


@dataclass(slots=True)
class Response:
    api_key: int
    version: int
    correlation_id: int
    error_code: int
    body: dict[str, Any]
    data: list[Any] = field(default_factory=list)


def as_buffer(frame: FrameLike) -> memoryview | bytes:
    """A buffer over a frame's bytes without copying them."""
    if isinstance(frame, zmq.Frame):
        return frame.buffer
    if isinstance(frame, bytes):
        return frame
    return memoryview(frame)


def frame_len(frame: FrameLike) -> int:
    return len(frame.buffer) if isinstance(frame, zmq.Frame) else len(frame)


# ---------------------------------------------------------------------------------------------
# Headers


def encode_request_header(
    api_key: int, api_version: int, correlation_id: int, client_id: str = ""
) -> bytes:
    cid = client_id.encode()
    if len(cid) > MAX_CLIENT_ID_BYTES:
        raise ValueError(f"client id is {len(cid)} bytes, at most {MAX_CLIENT_ID_BYTES}")
    return (
        REQUEST_HEADER.pack(MAGIC, HEADER_VERSION, api_key, api_version, correlation_id, len(cid))
        + cid
    )


def decode_request_header(frame: FrameLike) -> RequestHeader:
    """Parse frame 0 of a request; raise `MalformedRequest` (header None) if it is not one."""
    buf = frame.buffer if isinstance(frame, zmq.Frame) else frame
    size = len(buf)
    if size < _REQ_SIZE:
        raise MalformedRequest(f"request header is {size} bytes, at least {_REQ_SIZE} expected")
    magic, hv, key, ver, corr, cid_len = _unpack_req(buf)
    if magic != MAGIC:
        raise MalformedRequest(f"bad magic {magic!r} in request header, expected {MAGIC!r}")
    if hv != HEADER_VERSION:
        raise MalformedRequest(f"request header version {hv} not supported (only {HEADER_VERSION})")
    if size != _REQ_SIZE + cid_len:
        raise MalformedRequest(
            f"request header says a {cid_len}-byte client id but {size - _REQ_SIZE} bytes follow",
            RequestHeader(key, ver, corr, ""),
        )
    if not cid_len:
        return RequestHeader(key, ver, corr, "")
    try:
        cid = bytes(buf[_REQ_SIZE:]).decode()
    except UnicodeDecodeError:
        raise MalformedRequest(
            "client id is not valid UTF-8", RequestHeader(key, ver, corr, "")
        ) from None
    return RequestHeader(key, ver, corr, cid)


def encode_response_header(
    api_key: int, api_version: int, correlation_id: int, error_code: int = 0
) -> bytes:
    return RESPONSE_HEADER.pack(
        MAGIC, HEADER_VERSION, api_key, api_version, correlation_id, error_code
    )


def decode_response_header(frame: FrameLike) -> tuple[int, int, int, int]:
    """(api_key, api_version, correlation_id, error_code) of a response; FrameError if bad."""
    buf = frame.bytes if isinstance(frame, zmq.Frame) else bytes(frame)
    if len(buf) != RESPONSE_HEADER.size:
        raise FrameError(f"response header is {len(buf)} bytes, expected {RESPONSE_HEADER.size}")
    magic, hv, key, ver, corr, err = RESPONSE_HEADER.unpack(buf)
    if magic != MAGIC or hv != HEADER_VERSION:
        raise FrameError(f"bad response header magic/version {magic!r}/{hv}")
    return key, ver, corr, err


# ---------------------------------------------------------------------------------------------
# Bodies


def encode_body(body: Mapping[str, Any]) -> bytes:
    return _packb(body)


def decode_body(frame: FrameLike) -> dict[str, Any]:
    """Unpack a msgpack map body; ValueError on anything else."""
    try:
        obj = msgpack.unpackb(as_buffer(frame), raw=False)
    except Exception as exc:  # msgpack raises several types (ValueError, TypeError, StackError)
        raise ValueError(f"body is not valid msgpack: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"body is a msgpack {type(obj).__name__}, expected a map")
    return obj


# ---------------------------------------------------------------------------------------------
# Whole messages


def encode_request(
    api_key: int,
    api_version: int,
    correlation_id: int,
    body: Mapping[str, Any],
    data: Iterable[FrameLike] = (),
    client_id: str = "",
) -> list[FrameLike]:
    """The multipart `[header, msgpack(body), *data]` a DEALER sends."""
    return [
        encode_request_header(api_key, api_version, correlation_id, client_id),
        _packb(body),
        *data,
    ]


def check_version(header: RequestHeader, served: Mapping[int, VersionRange]) -> None:
    """Raise `UnsupportedVersion` unless the server serves this API at this version."""
    rng = served.get(header.api_key)
    if rng is None:
        raise UnsupportedVersion(f"API key {header.api_key} is not served here", header)
    lo, hi = rng
    if not lo <= header.api_version <= hi:
        raise UnsupportedVersion(
            f"{api_name(header.api_key)} version {header.api_version} not supported"
            f" (supported {lo}..{hi})",
            header,
        )


def decode_request(
    frames: Sequence[FrameLike], served: Mapping[int, VersionRange] | None = None
) -> Request:
    """Parse `[header, body, *data]` (identity already stripped).

    With `served`, an API or version outside it raises `UnsupportedVersion` before the body is
    touched. Data frames are returned as given, never copied.
    """
    if not frames:
        raise MalformedRequest("empty message")
    header = decode_request_header(frames[0])
    if served is not None:
        check_version(header, served)
    if len(frames) < 2:
        raise MalformedRequest("request has no body frame", header)
    try:
        body = decode_body(frames[1])
    except ValueError as exc:
        raise MalformedRequest(str(exc), header) from None
    return Request(
        header.api_key,
        header.api_version,
        header.correlation_id,
        header.client_id,
        body,
        list(frames[2:]),
    )


def encode_response(
    api_key: int,
    api_version: int,
    correlation_id: int,
    body: Mapping[str, Any],
    data: Iterable[FrameLike] = (),
    error_code: int = 0,
) -> list[FrameLike]:
    """The multipart `[resp_header, msgpack(body), *data]` (prepend the identity on a ROUTER)."""
    return [
        encode_response_header(api_key, api_version, correlation_id, error_code),
        _packb(body),
        *data,
    ]


def error_response(header: RequestHeader | None, code: int, message: str) -> list[FrameLike]:
    """A request-level error response; a None header gives the unparseable-request form."""
    if header is None:
        key, ver, corr = UNPARSEABLE_API_KEY, 0, 0
    else:
        key, ver, corr = header.api_key, header.api_version, header.correlation_id
    return encode_response(
        key, ver, corr, {"error": int(code), "message": message}, error_code=int(code)
    )


def response_for_error(exc: RequestError) -> list[FrameLike]:
    """The error response answering a request that raised `exc` while being decoded."""
    return error_response(exc.header, exc.code, exc.message)


def decode_response(frames: Sequence[FrameLike]) -> Response:
    """Parse `[resp_header, body, *data]` (a DEALER receives exactly this)."""
    if len(frames) < 2:
        raise FrameError(f"response has {len(frames)} frames, at least 2 expected")
    key, ver, corr, err = decode_response_header(frames[0])
    try:
        body = decode_body(frames[1])
    except ValueError as exc:
        raise FrameError(str(exc)) from None
    return Response(key, ver, corr, err, body, list(frames[2:]))

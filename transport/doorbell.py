"""Doorbell: a same-host answer sent as one Unix datagram instead of through zmq.

A client may name, in a request that allows it (Fetch), a doorbell: a Linux abstract Unix
datagram socket it has bound. A server answering such a request with a small response
sends the response's frames as one datagram there, and not through zmq. The answer then
wakes the client's thread directly; through zmq it passes an I/O thread on each side, and
every thread hand-off costs tens of µs on a VM whose idle vCPUs halt (measured: a record's
produce → consumer leg with the consumer's leg as a datagram, p50 143-153 µs vs 223-233 µs
with both legs zmq). If the datagram cannot go (no such socket: another host or network
namespace, a client that closed, a full receive queue), the server answers through zmq as
always: the doorbell is a shortcut, never the only path.

The request's `doorbell` value is "<id>:<token>". The server sends to the abstract address
"\\0qnode-doorbell-<id>" and puts the token in the datagram; the client drops a datagram
without its token. Abstract names are visible to every local user (/proc/net/unix), the
token only inside the client's own requests, so nobody else can make a server deliver an
answer the client would take.

Datagram: b"QD" | u8 version 1 | u8 token length | token | u16 frame count |
(u32 length | bytes) per frame. One datagram is one response: the socket keeps boundaries.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import struct
from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

from qnode.transport.frame import FrameError, FrameLike, as_buffer

MAGIC = b"QD"
VERSION = 1
MAX_RESPONSE_BYTES = 65536  # larger answers go through zmq (a datagram is one copy)
MAX_DATAGRAM = MAX_RESPONSE_BYTES + 4096  # with the framing; what a receiver's buffer holds
PREFIX = b"\0qnode-doorbell-"
WORKER_PREFIX = b"\0qnode-worker-"
_MAX_ADDRESS = 108  # sun_path, the leading NUL of an abstract name included
LOCAL_IN_FLIGHT = 8  # requests a client has in flight by datagram (its queue holds 10)
_HEAD = struct.Struct(">2sBB")
_COUNT = struct.Struct(">H")
_LEN = struct.Struct(">I")
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TOKEN = re.compile(r"[0-9a-f]{16,64}")


class DoorbellError(ValueError):
    """A doorbell value that does not follow "<id>:<token>"."""


class LocalUnavailable(OSError):
    """No worker local socket of that name on this host."""


class Doorbell(NamedTuple):
    """Where a request's answer may go: a client's abstract address, and the token the
    datagram must carry."""

    address: bytes
    token: bytes


def parse_doorbell(value: str) -> Doorbell:
    """The doorbell a request's doorbell value names."""
    ident, sep, token = value.partition(":")
    if not sep or not _ID.fullmatch(ident) or not _TOKEN.fullmatch(token):
        raise DoorbellError(
            'doorbell must be "<id>:<token>", id 1-64 of [A-Za-z0-9_-], token 16-64 '
            f"lowercase hex digits, not {value[:80]!r}")
    return Doorbell(PREFIX + ident.encode(), token.encode())


def pack_datagram(token: bytes, frames: Sequence[FrameLike]) -> list[bytes | memoryview] | None:
    """The parts of one datagram (for sendmsg, no copy), None when it would be too large."""
    parts: list[bytes | memoryview] = [
        _HEAD.pack(MAGIC, VERSION, len(token)), token, _COUNT.pack(len(frames))]
    size = 0
    for frame in frames:
        buf = as_buffer(frame)
        n = len(buf)
        size += n
        parts.append(_LEN.pack(n))
        parts.append(buf)
    total = _HEAD.size + len(token) + _COUNT.size + _LEN.size * len(frames) + size
    if size > MAX_RESPONSE_BYTES or total > MAX_DATAGRAM:
        return None
    return parts


class DoorbellSender:
    """The server's side: datagram sockets for the doorbells it rings.

    Shared (the default, for Fetch answers that may go through zmq instead): one socket. A
    datagram counts against its sender's buffer until read, so one consumer that stops reading
    can make every send fail for a while -- harmless there. `per_destination` (for answers
    that have no zmq path: requests that came by datagram) keeps a connected socket per
    doorbell, so each client's unread answers only fill its own (a client keeps at most
    LOCAL_IN_FLIGHT of them in flight)."""

    def __init__(self, per_destination: bool = False, max_destinations: int = 256) -> None:
        self._sock: socket.socket | None = None
        self._per_destination = per_destination
        self._max = max_destinations
        self._socks: OrderedDict[bytes, socket.socket] = OrderedDict()
        if not per_destination:
            try:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            except OSError:  # no Unix sockets here: every answer goes through zmq
                self._sock = None

    def send(self, address: bytes, token: bytes, frames: Sequence[FrameLike]) -> bool:
        """Send one response; False (nothing sent) when it must go through zmq instead."""
        parts = pack_datagram(token, frames)
        if parts is None:
            return False
        if not self._per_destination:
            if self._sock is None:
                return False
            try:
                self._sock.sendmsg(parts, (), socket.MSG_DONTWAIT, address)
            except OSError:  # gone, elsewhere, or its queue is full: zmq it is
                return False
            return True
        try:
            sock = self._destination(address)
            sock.sendmsg(parts, (), socket.MSG_DONTWAIT)
        except OSError:  # gone (or never there): forget its socket
            dead = self._socks.pop(address, None)
            if dead is not None:
                dead.close()
            return False
        return True

    def _destination(self, address: bytes) -> socket.socket:
        sock = self._socks.get(address)
        if sock is not None:
            self._socks.move_to_end(address)
            return sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        self._socks[address] = sock
        if len(self._socks) > self._max:
            self._socks.popitem(last=False)[1].close()
        return sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for sock in self._socks.values():
            sock.close()
        self._socks.clear()


def worker_address(endpoint: str) -> bytes | None:
    """The abstract address of the local socket of the worker serving `endpoint` on this host
    (None when the name would not fit a Unix socket address). Keyed by the endpoint a client
    connects to: in one network namespace only the worker bound to that TCP endpoint binds
    this name, as only it can listen there."""
    name = WORKER_PREFIX + endpoint.encode()
    return name if len(name) <= _MAX_ADDRESS else None


class LocalListener:
    """A worker's local socket: Produce requests of same-host clients, one datagram each,
    whose token field is the client's doorbell value (where the answer goes)."""

    def __init__(self, endpoint: str) -> None:
        address = worker_address(endpoint)
        if address is None:
            raise OSError(f"endpoint {endpoint!r} too long for a local socket name")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._sock.bind(address)
        except OSError:
            self._sock.close()
            raise
        self._sock.setblocking(False)
        self.address = address

    def fileno(self) -> int:
        return self._sock.fileno()

    def receive(self) -> tuple[str, list[memoryview]] | None:
        """One request: (the doorbell value to answer, its frames); None when none is queued.
        Raises FrameError for a datagram that is not one."""
        try:
            data = self._sock.recv(MAX_DATAGRAM + 1)
        except (BlockingIOError, InterruptedError):
            return None
        if len(data) > MAX_DATAGRAM:
            raise FrameError(f"local request datagram over {MAX_DATAGRAM} bytes")
        reply, frames = unpack_datagram(data, None)
        try:
            return reply.decode("ascii"), frames
        except UnicodeDecodeError:
            raise FrameError("local request with a non-ASCII doorbell") from None

    def close(self) -> None:
        self._sock.close()


class DoorbellReceiver:
    """The client's side: its bound socket, and the value its requests carry."""

    def __init__(self) -> None:
        ident = f"{os.getpid()}-{secrets.token_hex(8)}"
        self.token = secrets.token_hex(16).encode()
        self.value = f"{ident}:{self.token.decode()}"
        self.dropped = 0  # datagrams that were not answers of ours
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._sock.bind(PREFIX + ident.encode())
        except OSError:
            self._sock.close()
            raise
        self._sock.setblocking(False)

    def fileno(self) -> int:
        return self._sock.fileno()

    def send_request(self, address: bytes, frames: Sequence[FrameLike]) -> bool:
        """Send a request to a same-host worker's local socket; its answer comes here. False:
        not sent (too large, or the worker's queue is full). Raises `LocalUnavailable` when no
        worker socket of that name exists here (another host, or the worker is gone)."""
        parts = pack_datagram(self.value.encode(), frames)
        if parts is None:
            return False
        try:
            self._sock.sendmsg(parts, (), socket.MSG_DONTWAIT, address)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            raise LocalUnavailable(str(exc)) from None
        return True

    def receive(self, limit: int = 1) -> list[list[memoryview]]:
        """Up to `limit` queued answers, each as its frames (views of one bytes object); other
        datagrams are dropped and counted. One by default: called when a poll said readable,
        one is there, and the fd stays readable while more are (no receive that fails, which
        cost a syscall and an exception per call)."""
        out: list[list[memoryview]] = []
        sock = self._sock
        for _ in range(limit):
            try:
                data = sock.recv(MAX_DATAGRAM + 1)
            except (BlockingIOError, InterruptedError):
                break
            if len(data) > MAX_DATAGRAM:  # cut short: not one a server of ours sent
                self.dropped += 1
                continue
            try:
                out.append(unpack_datagram(data, self.token)[1])
            except FrameError:
                self.dropped += 1
        return out

    def close(self) -> None:
        self._sock.close()


def unpack_datagram(data: bytes, token: bytes | None) -> tuple[bytes, list[memoryview]]:
    """(token, frames) of one datagram, the frames as views of `data`; with `token` given, a
    datagram carrying another is refused."""
    if len(data) < _HEAD.size:
        raise FrameError(f"doorbell datagram of {len(data)} bytes")
    magic, version, tlen = _HEAD.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise FrameError(f"not a doorbell datagram (magic {magic!r}, version {version})")
    at = _HEAD.size
    got = data[at:at + tlen]
    if token is not None and got != token:
        raise FrameError("doorbell datagram with another token")
    at += tlen
    view = memoryview(data)
    try:
        (count,) = _COUNT.unpack_from(data, at)
        at += _COUNT.size
        frames = []
        for _ in range(count):
            (n,) = _LEN.unpack_from(data, at)
            at += _LEN.size
            if at + n > len(data):
                raise FrameError("doorbell datagram shorter than its frames")
            frames.append(view[at:at + n])
            at += n
    except struct.error as exc:
        raise FrameError(f"truncated doorbell datagram: {exc}") from None
    if at != len(data):
        raise FrameError(f"{len(data) - at} bytes after the last frame of a doorbell datagram")
    return got, frames

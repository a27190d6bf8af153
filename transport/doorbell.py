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
from collections.abc import Sequence

from qnode.transport.frame import FrameError, FrameLike, as_buffer

MAGIC = b"QD"
VERSION = 1
MAX_RESPONSE_BYTES = 65536  # larger answers go through zmq (a datagram is one copy)
MAX_DATAGRAM = MAX_RESPONSE_BYTES + 4096  # with the framing; what a receiver's buffer holds
PREFIX = b"\0qnode-doorbell-"
_HEAD = struct.Struct(">2sBB")
_COUNT = struct.Struct(">H")
_LEN = struct.Struct(">I")
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TOKEN = re.compile(r"[0-9a-f]{16,64}")


class DoorbellError(ValueError):
    """A doorbell value that does not follow "<id>:<token>"."""


def parse_doorbell(value: str) -> tuple[bytes, bytes]:
    """The (abstract address, token) a request's doorbell value names."""
    ident, sep, token = value.partition(":")
    if not sep or not _ID.fullmatch(ident) or not _TOKEN.fullmatch(token):
        raise DoorbellError(
            'doorbell must be "<id>:<token>", id 1-64 of [A-Za-z0-9_-], token 16-64 '
            f"lowercase hex digits, not {value[:80]!r}")
    return PREFIX + ident.encode(), token.encode()


class DoorbellSender:
    """The server's side: one unbound datagram socket for every doorbell it rings."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        try:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        except OSError:  # no Unix sockets here: every answer goes through zmq
            self._sock = None

    def send(self, address: bytes, token: bytes, frames: Sequence[FrameLike]) -> bool:
        """Send one response; False (nothing sent) when it must go through zmq instead."""
        sock = self._sock
        if sock is None:
            return False
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
            return False
        try:
            sock.sendmsg(parts, (), socket.MSG_DONTWAIT, address)
        except OSError:  # gone, elsewhere, or its queue is full: zmq it is
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


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
                out.append(unpack_datagram(data, self.token))
            except FrameError:
                self.dropped += 1
        return out

    def close(self) -> None:
        self._sock.close()


def unpack_datagram(data: bytes, token: bytes) -> list[memoryview]:
    """The frames of one doorbell datagram carrying `token`, as views of `data`."""
    if len(data) < _HEAD.size:
        raise FrameError(f"doorbell datagram of {len(data)} bytes")
    magic, version, tlen = _HEAD.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise FrameError(f"not a doorbell datagram (magic {magic!r}, version {version})")
    at = _HEAD.size
    if data[at:at + tlen] != token:
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
    return frames

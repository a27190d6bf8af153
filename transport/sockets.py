"""ZeroMQ socket helpers: servers (ROUTER) and clients (DEALER) set up the same way everywhere.

Servers cap message size (`socket.request.max.bytes`: zmq disconnects a peer past it), keep
linger short so a stopping process never hangs on unsent replies, and leave ROUTER_MANDATORY
off so a reply to a client that went away is dropped instead of raising in the server loop.
Clients reconnect with backoff on their own (zmq does it; we only bound the interval).
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

DEFAULT_MAX_MSG_BYTES = 104857600  # socket.request.max.bytes in node.toml
DEFAULT_HWM = 100_000

# Plain ints: pyzmq's flags are enum members, and `SNDMORE | flags` on them costs an enum
# construction per frame, more than the send itself on small frames.
SNDMORE = int(zmq.SNDMORE)
NOBLOCK = int(zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_BUFFER_TYPES = frozenset((bytes, memoryview, zmq.Frame))


@dataclass(frozen=True, slots=True)
class SocketOptions:
    max_msg_bytes: int = DEFAULT_MAX_MSG_BYTES
    sndhwm: int = DEFAULT_HWM
    rcvhwm: int = DEFAULT_HWM
    linger_ms: int = 0
    reconnect_ivl_ms: int = 50
    reconnect_ivl_max_ms: int = 2000
    tcp_keepalive: bool = True


def send_frames(sock: zmq.Socket, frames: Sequence[Any], flags: int = 0) -> None:
    """`send_multipart(frames, flags, copy=False)` for the hot paths, at half its cost.

    Every frame is checked to be a buffer before the first is sent (as pyzmq does), so a bad
    frame can never leave half a multipart message queued. zmq takes a multipart message
    atomically: only the first frame can fail with EAGAIN (NOBLOCK, peer at its HWM).
    Frames under pyzmq's copy threshold (64 KiB) are copied, larger ones sent zero-copy.
    """
    for f in frames:
        if f.__class__ not in _BUFFER_TYPES:
            memoryview(f)  # TypeError now, before anything is queued
    send = sock.send
    last = len(frames) - 1
    more = flags | SNDMORE
    for i in range(last):
        send(frames[i], more, False)
    send(frames[last], flags, False)


def recv_frames(sock: zmq.Socket, flags: int = 0) -> list[zmq.Frame]:
    """`recv_multipart(flags, copy=False)` without a getsockopt(RCVMORE) per frame: a
    received Frame knows whether more follow. Raises zmq.Again (NOBLOCK, nothing queued)."""
    recv = sock.recv
    frame = recv(flags, False)
    frames = [frame]
    while frame.more:  # the rest of a multipart message is already there: never blocks
        frame = recv(flags, False)
        frames.append(frame)
    return frames


def has_message(sock: zmq.Socket) -> bool:
    """True when a message is queued on `sock`: what a drain loop asks before each further
    receive, as a NOBLOCK recv that raises zmq.Again costs five times more."""
    return bool(sock.getsockopt(_EVENTS) & _POLLIN)


def split_endpoint(endpoint: str) -> tuple[str, str, int | None]:
    """`tcp://host:port` → ("tcp", host, port); port None for `*` or a missing port."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        raise ValueError(f"endpoint {endpoint!r} is not of the form scheme://host:port")
    host, colon, port = rest.rpartition(":")
    if not colon:
        return scheme, rest, None
    if port in ("*", ""):
        return scheme, host, None
    if not port.isdigit():
        raise ValueError(f"endpoint {endpoint!r} has a bad port {port!r}")
    return scheme, host, int(port)


def _common(sock: zmq.Socket, opts: SocketOptions) -> None:
    sock.setsockopt(zmq.LINGER, opts.linger_ms)
    sock.setsockopt(zmq.SNDHWM, opts.sndhwm)
    sock.setsockopt(zmq.RCVHWM, opts.rcvhwm)
    if opts.tcp_keepalive:
        sock.setsockopt(zmq.TCP_KEEPALIVE, 1)


RANDOM_PORTS = range(49152, 65536)  # the IANA dynamic range, as pyzmq's bind_to_random_port


def bind_random(sock: zmq.Socket, host: str = "127.0.0.1", avoid: Collection[int] = ()) -> str:
    """Bind `sock` to a free port on `host`, none of `avoid` (never bound even for a moment:
    a peer could connect to it meanwhile); return the endpoint clients should connect to."""
    if all(p in avoid for p in RANDOM_PORTS):
        raise zmq.ZMQBindError(f"every port of {RANDOM_PORTS} is to be avoided")
    for _ in range(100):  # bind attempts; an avoided port is drawn again, not tried
        port = random.choice(RANDOM_PORTS)
        while port in avoid:
            port = random.choice(RANDOM_PORTS)
        try:
            sock.bind(f"tcp://{host}:{port}")
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EADDRINUSE:
                raise
            continue
        return f"tcp://{host}:{port}"
    raise zmq.ZMQBindError(f"no free port on {host} after 100 tries")


def router_server(
    ctx: zmq.Context, bind: str, opts: SocketOptions | None = None,
    avoid: Collection[int] = (),
) -> tuple[zmq.Socket, str]:
    """A ROUTER bound to `bind`; `tcp://host:0` or `tcp://host:*` takes a free port, never
    one in `avoid` (ports other servers of the node are about to bind: a worker that took its
    coordinator's port before the coordinator bound it made the node fail to start).

    Returns the socket and the endpoint actually bound (with the real port).
    """
    opts = opts or SocketOptions()
    sock = ctx.socket(zmq.ROUTER)
    try:
        _common(sock, opts)
        sock.setsockopt(zmq.MAXMSGSIZE, opts.max_msg_bytes)
        scheme, host, port = split_endpoint(bind)
        if scheme == "tcp" and not port:
            endpoint = bind_random(sock, host, avoid)
        else:
            sock.bind(bind)
            endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    except BaseException:
        sock.close(0)
        raise
    return sock, endpoint


def dealer_client(
    ctx: zmq.Context,
    endpoint: str,
    opts: SocketOptions | None = None,
    identity: bytes | None = None,
) -> zmq.Socket:
    """A DEALER connected to `endpoint`, reconnecting with bounded backoff."""
    opts = opts or SocketOptions()
    sock = ctx.socket(zmq.DEALER)
    try:
        _common(sock, opts)
        sock.setsockopt(zmq.RECONNECT_IVL, opts.reconnect_ivl_ms)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, opts.reconnect_ivl_max_ms)
        if identity is not None:
            sock.setsockopt(zmq.IDENTITY, identity)
        sock.connect(endpoint)
    except BaseException:
        sock.close(0)
        raise
    return sock


def monitor_events(monitor: zmq.Socket) -> Iterator[int]:
    """The events queued on a socket monitor (`get_monitor_socket`), without blocking; ends
    when none is left or the monitor is closed."""
    while True:
        try:
            msg = monitor.recv_multipart(zmq.NOBLOCK)
        except zmq.ZMQError:  # Again: drained; anything else: the monitor is gone
            return
        yield parse_monitor_message(msg)["event"]


def close_monitored(sock: zmq.Socket, monitor: zmq.Socket, linger: int | None = 0) -> None:
    """Close a socket and its monitor (linger None: the socket's own LINGER option)."""
    try:
        sock.disable_monitor()
    except zmq.ZMQError:
        pass  # already stopped, or the context is going away
    monitor.close(0)
    sock.close(linger)

"""The latency floor of zmq on this machine: raw pyzmq through one middle process.

`qnode bench e2e` prints this beside its figure. A record's end-to-end path crosses two zmq
legs with a process in the middle (producer → worker → consumer); a DEALER → ROUTER echo in a
child process → DEALER round trip, paced at the same rate, crosses the same two legs with
nothing done in the middle. The gap between the two is what qnode itself costs; the floor is
what any broker speaking zmq pays here (I/O-thread hand-offs on both sides of each leg).

    python -m qnode.loadtest.raw_echo [--rate 1000] [--count 3000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
import time

import zmq

_ECHO = textwrap.dedent(
    """
    import sys, zmq
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    print(router.bind_to_random_port("tcp://127.0.0.1"), flush=True)
    while True:
        frames = router.recv_multipart(copy=False)
        router.send_multipart(frames, copy=False)
        if frames[-1].bytes == b"end":
            break
    router.close(1000)
    ctx.term()
    """
)


class EchoError(RuntimeError):
    """The echo child did not start or stopped answering."""


def echo_round_trips(rate: float, count: int, size: int = 100,
                     timeout_s: float = 10.0) -> list[float]:
    """Round-trip times (µs) of `count` messages of `size` bytes sent at `rate` per second
    (paced by sleeping, as the e2e bench paces its producer) through an echo child process."""
    proc = subprocess.Popen([sys.executable, "-c", _ECHO], stdout=subprocess.PIPE, text=True)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            raise EchoError("the echo process did not start")
        sock.connect(f"tcp://127.0.0.1:{int(line)}")
        payload = b"x" * size
        out: list[float] = []
        clock = time.perf_counter_ns
        interval = 1.0 / rate
        for i in range(count + 1):  # the first message connects: not part of the sample
            start = time.perf_counter()
            t0 = clock()
            sock.send(payload)
            if not sock.poll(int(timeout_s * 1000)):
                raise EchoError(f"no echo within {timeout_s} s")
            sock.recv(copy=False)
            if i:
                out.append((clock() - t0) / 1000.0)
            left = interval - (time.perf_counter() - start)
            if left > 0:
                time.sleep(left)
        sock.send(b"end")
        sock.poll(int(timeout_s * 1000))
        return out
    finally:
        sock.close(0)
        ctx.term()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--count", type=int, default=3000)
    args = ap.parse_args(argv)
    rtt = sorted(echo_round_trips(args.rate, args.count))
    pick = [rtt[min(len(rtt) - 1, int(len(rtt) * q))] for q in (0.5, 0.99, 0.999)]
    print(f"raw pyzmq echo at {args.rate:,.0f}/s: p50 {pick[0]:.0f} µs, p99 {pick[1]:.0f} µs, "
          f"p999 {pick[2]:.0f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())

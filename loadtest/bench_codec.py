"""Benchmark of the RecordBatch v2 codec: encode and decode records/s and MB/s per codec.

Single process, one core, pure Python. Figures are the best of --repeat runs.
- encode: what a producer does per record, `BatchBuilder.try_append` until batch.size is
  reached, then `build()` (compression, header, CRC-32C). "clock" reads the wall clock per
  record (timestamp_ms=None, as a producer does); "ts" passes the timestamp in.
- decode: storage's reference reader per batch, CRC check + decompression + every record
  decoded into a `DecodedRecord` (offset, timestamp, key, value, headers); "tuples" stops at
  plain tuples (`Batch.record_tuples`).
- consumer: what the SDK's consumer does, CRC check + decompression + `sdk.Record`s handed
  out 500 at a time (max.poll.records) by `sdk.record_reader.BatchDecoder`, each dropped
  before the next 500 are made, as an application that processes a poll and moves on.
- broker: `validate_batches` + `stamp` over the same batches (no per-record work), in MB/s.

    .venv/bin/python -m qnode.loadtest.bench_codec [--records N] [--value-size B]
        [--key-size K] [--batch-size BYTES] [--codecs none,lz4,zstd,gzip] [--repeat R]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from typing import TypeVar

from qnode.sdk.record_reader import BatchDecoder
from qnode.sdk.types import Record
from qnode.storage.batch_builder import BatchBuilder
from qnode.storage.batch_reader import iter_records, read_batches
from qnode.storage.compression import decompress
from qnode.storage.record_batch import (
    COMPRESSION_MASK,
    HEADER_SIZE,
    check_crc,
    iter_batches,
    stamp,
    validate_batches,
)

T = TypeVar("T")
_WORDS = [b"click", b"view", b"cart", b"order", b"refund", b"login", b"logout", b"search"]


def make_values(n: int, size: int, seed: int = 7) -> list[bytes]:
    """JSON-like events padded to `size` bytes: compressible the way real payloads are."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        v = b'{"id":%d,"user":"u%06d","event":"%s","amount":%d.%02d,"note":"' % (
            i, rnd.randrange(10**6), rnd.choice(_WORDS), rnd.randrange(10**4), rnd.randrange(100))
        pad = size - len(v) - 2
        v += bytes(rnd.choices(b"abcdefghijklmnopqrstuvwxyz ", k=max(0, pad))) + b'"}'
        out.append(v[:size])
    return out


def encode(values: list[bytes], key: bytes | None, codec: str, batch_size: int,
           ts: int | None = None) -> list[bytes]:
    out = []
    builder = BatchBuilder(codec, batch_size=batch_size)
    append = builder.try_append
    for v in values:
        if append(key, v, None, ts) < 0:
            out.append(builder.build())
            builder = BatchBuilder(codec, batch_size=batch_size)
            append = builder.try_append
            append(key, v, None, ts)
    out.append(builder.build())
    return out


def decode(batches: list[bytes]) -> int:
    n = 0
    for data in batches:
        for _ in iter_records(data):
            n += 1
    return n


def decode_tuples(batches: list[bytes]) -> int:
    n = 0
    for data in batches:
        for batch in read_batches(data):
            n += len(batch.record_tuples())
    return n


def decode_consumer(batches: list[bytes], poll_size: int = 500) -> int:
    n = 0
    for data in batches:
        for hdr in iter_batches(data):
            check_crc(data, hdr)
            section = data[hdr.position + HEADER_SIZE:hdr.end]
            if hdr.attributes & COMPRESSION_MASK:
                section = decompress(hdr.attributes & COMPRESSION_MASK, section)
            dec = BatchDecoder(section, hdr.record_count, hdr.base_offset, hdr.base_timestamp,
                               "bench", 0)
            while not dec.done:
                out: list[Record] = []
                dec.take(out, poll_size)
                n += len(out)
    return n


def broker(batches: list[bytes]) -> int:
    n = 0
    for data in batches:
        buf = bytearray(data)
        info = validate_batches(buf)
        for h in info.batches:
            stamp(buf, h.position, n, 0)
        n += info.record_count
    return n


def best_of(fn: Callable[[], T], repeat: int) -> tuple[float, T]:
    best = float("inf")
    result: T | None = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    assert result is not None
    return best, result


def main() -> None:
    ap = argparse.ArgumentParser(description="RecordBatch v2 codec benchmark")
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--value-size", type=int, default=100)
    ap.add_argument("--key-size", type=int, default=0, help="0 = null keys")
    ap.add_argument("--batch-size", type=int, default=16384, help="producer batch.size")
    ap.add_argument("--codecs", default="none,lz4,zstd,gzip")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    values = make_values(args.records, args.value_size)
    key = b"k" * args.key_size if args.key_size else None
    r = args.records
    mb = r * args.value_size / 1e6
    print(f"{r} records, {args.value_size} B values, "
          f"key {'null' if key is None else f'{args.key_size} B'}, batch.size {args.batch_size}, "
          f"best of {args.repeat}; rec/s (value MB/s)")
    print(f"{'codec':6} {'encode clock':>20} {'encode ts':>20} {'decode':>20} "
          f"{'decode tuples':>20} {'consumer':>20} {'broker MB/s':>12} {'B/rec':>6}")
    now = time.time_ns() // 1_000_000
    for codec in args.codecs.split(","):
        t_enc, batches = best_of(lambda c=codec: encode(values, key, c, args.batch_size),
                                 args.repeat)
        t_ts, _ = best_of(lambda c=codec: encode(values, key, c, args.batch_size, now),
                          args.repeat)
        t_dec, n = best_of(lambda b=batches: decode(b), args.repeat)
        t_tup, n2 = best_of(lambda b=batches: decode_tuples(b), args.repeat)
        t_sdk, n4 = best_of(lambda b=batches: decode_consumer(b), args.repeat)
        t_brk, n3 = best_of(lambda b=batches: broker(b), args.repeat)
        assert n == n2 == n3 == n4 == r, (n, n2, n3, n4, r)
        size = sum(len(b) for b in batches)

        def cell(t: float) -> str:
            return f"{r / t:>11,.0f} ({mb / t:5.1f})"

        print(f"{codec:6} {cell(t_enc):>20} {cell(t_ts):>20} {cell(t_dec):>20} "
              f"{cell(t_tup):>20} {cell(t_sdk):>20} {size / 1e6 / t_brk:12,.0f} {size / r:6.1f}")


if __name__ == "__main__":
    main()

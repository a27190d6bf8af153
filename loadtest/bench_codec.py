"""Benchmark of the RecordBatch v2 codec: encode and decode records/s and MB/s per codec.

Single process, one core, pure Python. Encode = BatchBuilder.append for every record plus
build(); decode = CRC check + decompression + decoding every record into DecodedRecord.
Broker path = validate_batches + stamp on the built batches (what a worker does per append).

    .venv/bin/python -m qnode.loadtest.bench_codec [--records N] [--value-size B]
        [--batch-size BYTES] [--codecs none,lz4,zstd,gzip] [--key-size K]
"""

from __future__ import annotations

import argparse
import os
import time

from qnode.storage.batch_builder import BatchBuilder
from qnode.storage.batch_reader import iter_records
from qnode.storage.record_batch import stamp, validate_batches


def _values(n: int, size: int) -> list[bytes]:
    # Half random, half repeated text: compressible like real payloads, not trivially so.
    base = os.urandom(size // 2)
    return [base + (b"%08d" % i * (size // 16 + 1))[: size - len(base)] for i in range(n)]


def encode(values: list[bytes], key: bytes | None, codec: str, batch_size: int,
           ts: int | None = None) -> list[bytes]:
    """What a producer does: try_append until batch.size, build, start the next batch."""
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


def broker(batches: list[bytes]) -> int:
    n = 0
    for data in batches:
        buf = bytearray(data)
        info = validate_batches(buf)
        for h in info.batches:
            stamp(buf, h.position, n, 0)
        n += info.record_count
    return n


def _best(fn, repeat: int):  # type: ignore[no-untyped-def]
    best = float("inf")
    result = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--value-size", type=int, default=100)
    ap.add_argument("--key-size", type=int, default=0, help="0 = null keys")
    ap.add_argument("--batch-size", type=int, default=1 << 20)
    ap.add_argument("--codecs", default="none,lz4,zstd,gzip")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    values = _values(args.records, args.value_size)
    key = b"k" * args.key_size if args.key_size else None
    mb = args.records * args.value_size / 1e6
    print(f"{args.records} records of {args.value_size} B values, "
          f"key {'null' if key is None else f'{args.key_size} B'}, batch.size {args.batch_size}, "
          f"best of {args.repeat}")
    print(f"{'codec':6} {'encode rec/s':>13} {'MB/s':>7} {'enc+ts rec/s':>13} "
          f"{'decode rec/s':>13} {'MB/s':>7} {'broker rec/s':>13} {'bytes/rec':>9}")
    now = time.time_ns() // 1_000_000
    for codec in args.codecs.split(","):
        t_enc, batches = _best(lambda c=codec: encode(values, key, c, args.batch_size),
                               args.repeat)
        t_enc_ts, _ = _best(
            lambda c=codec: encode(values, key, c, args.batch_size, now), args.repeat)
        t_dec, n = _best(lambda b=batches: decode(b), args.repeat)
        assert n == args.records, (n, args.records)
        t_brk, n2 = _best(lambda b=batches: broker(b), args.repeat)
        assert n2 == args.records
        size = sum(len(b) for b in batches)
        r = args.records
        print(f"{codec:6} {r / t_enc:13,.0f} {mb / t_enc:7.1f} {r / t_enc_ts:13,.0f} "
              f"{r / t_dec:13,.0f} {mb / t_dec:7.1f} {r / t_brk:13,.0f} {size / r:9.1f}")


if __name__ == "__main__":
    main()

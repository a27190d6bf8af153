"""Compression codecs of RecordBatch v2 (attributes bits 0-2).

A compressed batch compresses its records section only; the 61-byte header stays plain so
the broker can validate and stamp a batch without ever decompressing it. The codec ids are
Kafka's: none 0, gzip 1, snappy 2, lz4 3, zstd 4. lz4 uses the LZ4 *frame* format, as Kafka
does since KIP-57. Snappy is recognised but not supported (no well-kept pure binding in our
dependency set): it is refused with a clear `UnsupportedCompressionError`.
"""

from __future__ import annotations

import gzip
import zlib
from enum import IntEnum

import lz4.frame
import zstandard

from qnode.storage.errors import CorruptRecordError, InvalidRecordError


class UnsupportedCompressionError(InvalidRecordError):
    """A codec id this build cannot read or write (snappy, or ids 5-7)."""


class Compression(IntEnum):
    """Codec id as stored in attributes bits 0-2."""

    NONE = 0
    GZIP = 1
    SNAPPY = 2
    LZ4 = 3
    ZSTD = 4

    @classmethod
    def parse(cls, value: Compression | str | int | None) -> Compression:
        """Accept a codec by Kafka config name ("lz4"), id, or member; None means NONE."""
        if value is None:
            return cls.NONE
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                raise UnsupportedCompressionError(
                    f"compression {value!r} is not one of none, gzip, lz4, zstd"
                ) from None
        try:
            return cls(value)
        except ValueError:
            raise UnsupportedCompressionError(
                f"compression id {value!r} is not one of 0 (none), 1 (gzip), 3 (lz4), 4 (zstd)"
            ) from None


SUPPORTED = frozenset({Compression.NONE, Compression.GZIP, Compression.LZ4, Compression.ZSTD})

# Decompressed records sections are bounded so a tiny "zip bomb" batch cannot exhaust memory.
DEFAULT_MAX_DECOMPRESSED = 256 * 1024 * 1024


def check_supported(codec: int) -> Compression:
    """The codec for id `codec`, or UnsupportedCompressionError (snappy, 5-7)."""
    if codec == Compression.SNAPPY:
        raise UnsupportedCompressionError(
            "snappy compression is not supported by qnode; use lz4, zstd or gzip"
        )
    if codec not in SUPPORTED:
        raise UnsupportedCompressionError(f"unknown compression codec id {codec}")
    return Compression(codec)


def compress(codec: int, data: bytes | bytearray | memoryview, level: int | None = None) -> bytes:
    """Compress a records section with `codec` (NONE returns the bytes unchanged)."""
    c = check_supported(codec)
    if c is Compression.NONE:
        return bytes(data)
    if c is Compression.LZ4:
        # Kafka's reader (Lz4BlockInputStream) decompresses each block on its own, with no
        # dictionary from the previous one: blocks must be independent, 64 KB as Kafka writes.
        return lz4.frame.compress(
            data,
            compression_level=level or 0,
            block_size=lz4.frame.BLOCKSIZE_MAX64KB,
            block_linked=False,
            store_size=False,
        )
    if c is Compression.ZSTD:
        return zstandard.ZstdCompressor(level=3 if level is None else level).compress(data)
    # gzip framing (header + trailer), as Kafka writes it; mtime 0 keeps output reproducible.
    return gzip.compress(data, compresslevel=6 if level is None else level, mtime=0)


def decompress(
    codec: int, data: bytes | bytearray | memoryview, max_size: int = DEFAULT_MAX_DECOMPRESSED
) -> bytes:
    """Decompress a records section; damaged input raises CorruptRecordError, never another type."""
    c = check_supported(codec)
    if c is Compression.NONE:
        return bytes(data)
    try:
        if c is Compression.LZ4:
            out = _lz4_decompress(data, max_size)
        elif c is Compression.ZSTD:
            out = _zstd_decompress(data, max_size)
        else:
            out = _gzip_decompress(data, max_size)
    except CorruptRecordError:
        raise
    except Exception as exc:  # each binding has its own error types; all mean "damaged"
        name = c.name.lower()
        raise CorruptRecordError(f"{name} records section does not decompress: {exc}") from exc
    return out


def _lz4_decompress(data: bytes | bytearray | memoryview, max_size: int) -> bytes:
    dec = lz4.frame.LZ4FrameDecompressor()
    out = dec.decompress(data, max_length=max_size + 1)
    if len(out) > max_size:
        raise CorruptRecordError(f"lz4 records section expands past {max_size} bytes")
    if not dec.eof:
        raise CorruptRecordError("lz4 records section is truncated")
    return out


def _zstd_decompress(data: bytes | bytearray | memoryview, max_size: int) -> bytes:
    # A frame may declare its content size: refuse an oversized claim before allocating it,
    # and bound the output of frames that declare nothing. Truncation raises ZstdError.
    declared = zstandard.frame_content_size(data)
    if declared > max_size:
        raise CorruptRecordError(f"zstd records section declares {declared} bytes, over {max_size}")
    return zstandard.ZstdDecompressor().decompress(data, max_output_size=max_size)


def _gzip_decompress(data: bytes | bytearray | memoryview, max_size: int) -> bytes:
    # Several concatenated gzip members are one stream (as java.util.zip reads them).
    out: list[bytes] = []
    total = 0
    rest = bytes(data)
    while True:
        dobj = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        chunk = dobj.decompress(rest, max_size + 1 - total)
        total += len(chunk)
        out.append(chunk)
        if total > max_size:
            raise CorruptRecordError(f"gzip records section expands past {max_size} bytes")
        if not dobj.eof:
            raise CorruptRecordError("gzip records section is truncated")
        rest = dobj.unused_data
        if not rest:
            return b"".join(out)

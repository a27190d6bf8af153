"""Compression codecs: Kafka ids and framings, damage is CorruptRecordError, bounded output."""

from __future__ import annotations

import gzip
import os

import lz4.frame
import pytest
import zstandard

from qnode.storage.compression import (
    Compression,
    UnsupportedCompressionError,
    compress,
    decompress,
)
from qnode.storage.errors import CorruptRecordError, InvalidRecordError

DATA = os.urandom(3000) + b"compressible " * 2000
CODECS = [Compression.GZIP, Compression.LZ4, Compression.ZSTD]


def test_kafka_ids_and_names() -> None:
    assert [int(c) for c in Compression] == [0, 1, 2, 3, 4]
    assert Compression.parse("lz4") is Compression.LZ4
    assert Compression.parse(" ZSTD ") is Compression.ZSTD
    assert Compression.parse(None) is Compression.NONE
    assert Compression.parse(1) is Compression.GZIP
    for bad in ("brotli", 9, -1):
        with pytest.raises(UnsupportedCompressionError):
            Compression.parse(bad)


@pytest.mark.parametrize("codec", [Compression.NONE, *CODECS])
def test_roundtrip(codec: Compression) -> None:
    z = compress(codec, DATA)
    assert decompress(codec, z) == DATA
    assert decompress(codec, memoryview(bytearray(z))) == DATA
    assert decompress(codec, compress(codec, b"")) == b""


def test_standard_framings() -> None:
    """Other Kafka clients must read ours: gzip member, LZ4 frame (KIP-57), zstd frame."""
    assert compress(Compression.GZIP, DATA)[:2] == b"\x1f\x8b"
    assert gzip.decompress(compress(Compression.GZIP, DATA)) == DATA
    lz = compress(Compression.LZ4, DATA * 10)
    assert lz[:4] == bytes.fromhex("04224d18")
    # FLG: version 01, independent blocks (Kafka's reader needs them); BD: 64 KB blocks
    assert lz[4] & 0xC0 == 0x40 and lz[4] & 0x20 and lz[5] == 0x40
    assert lz4.frame.decompress(compress(Compression.LZ4, DATA)) == DATA
    assert compress(Compression.ZSTD, DATA)[:4] == bytes.fromhex("28b52ffd")
    assert zstandard.ZstdDecompressor().decompress(compress(Compression.ZSTD, DATA)) == DATA


def test_reads_foreign_output() -> None:
    assert decompress(Compression.GZIP, gzip.compress(DATA, 9)) == DATA
    assert decompress(Compression.GZIP, gzip.compress(b"ab") + gzip.compress(b"cd")) == b"abcd"
    assert decompress(Compression.LZ4, lz4.frame.compress(DATA, store_size=True)) == DATA
    no_size = zstandard.ZstdCompressor(write_content_size=False).compress(DATA)
    assert decompress(Compression.ZSTD, no_size) == DATA


def test_snappy_refused_clearly() -> None:
    for fn in (lambda: compress(2, b"x"), lambda: decompress(2, b"x")):
        with pytest.raises(UnsupportedCompressionError, match="snappy") as err:
            fn()
        assert isinstance(err.value, InvalidRecordError)


@pytest.mark.parametrize("codec", CODECS)
def test_damage_is_corrupt(codec: Compression) -> None:
    z = compress(codec, DATA)
    for bad in (b"", z[:3], z[:-1], z[: len(z) // 2], b"not compressed at all" * 3):
        with pytest.raises(CorruptRecordError):
            decompress(codec, bad)
    for pos in range(0, len(z), max(1, len(z) // 97)):
        buf = bytearray(z)
        buf[pos] ^= 0x5A
        try:
            out = decompress(codec, bytes(buf))
        except CorruptRecordError:
            continue
        # some flips (e.g. a gzip header's mtime) are harmless to the payload
        assert len(out) <= 10 * len(DATA)


@pytest.mark.parametrize("codec", CODECS)
def test_output_is_bounded(codec: Compression) -> None:
    bomb = compress(codec, b"\x00" * 5_000_000)
    assert len(bomb) < 300_000
    with pytest.raises(CorruptRecordError, match="past|over"):
        decompress(codec, bomb, max_size=1_000_000)
    assert len(decompress(codec, bomb, max_size=5_000_000)) == 5_000_000


def test_zstd_frame_without_size_is_bounded() -> None:
    bomb = zstandard.ZstdCompressor(write_content_size=False).compress(b"\x00" * 5_000_000)
    with pytest.raises(CorruptRecordError):
        decompress(Compression.ZSTD, bomb, max_size=1_000_000)

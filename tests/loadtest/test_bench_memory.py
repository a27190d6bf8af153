"""bench_memory's own logic: sizes, /proc parsing, the verdict. The node run is the bench."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest

from qnode.loadtest.bench_memory import (
    GiB,
    MemSample,
    MiB,
    Row,
    backlog_bytes,
    parse_size,
    read_smaps_rollup,
    read_verdict,
    render,
    sample,
    segment_mappings,
    verdict,
)


def test_parse_size_units() -> None:
    assert parse_size("5GiB") == 5 * GiB
    assert parse_size("512MiB") == 512 * MiB
    assert parse_size("1.5G") == 1_500_000_000
    assert parse_size("1000") == 1000
    assert parse_size(" 64 kib ") == 65536
    with pytest.raises(ValueError, match="not a size"):
        parse_size("5 parsecs")
    with pytest.raises(ValueError):
        parse_size("")


def test_smaps_rollup_sees_anonymous_growth_of_this_process() -> None:
    before = read_smaps_rollup(os.getpid())
    assert before["Rss"] > 0 and "Anonymous" in before and "Pss" in before
    blob = bytearray(64 * MiB)  # touched: zero-filled by bytearray
    for i in range(0, len(blob), 4096):
        blob[i] = 1
    after = read_smaps_rollup(os.getpid())
    assert after["Anonymous"] - before["Anonymous"] >= 60 * MiB
    del blob


def test_mapped_segment_files_are_counted_apart_from_anonymous(tmp_path: Path) -> None:
    seg = tmp_path / "t-0" / f"{0:020d}.log"
    seg.parent.mkdir()
    seg.write_bytes(os.urandom(4 * MiB))
    other = tmp_path / "notes.bin"
    other.write_bytes(b"x" * MiB)
    n0, _ = segment_mappings(os.getpid())
    with open(seg, "rb") as f, open(other, "rb") as g:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        mm2 = mmap.mmap(g.fileno(), 0, access=mmap.ACCESS_READ)
        base = sample(os.getpid())
        total = sum(mm[i] for i in range(0, len(mm), 4096))  # fault every page in
        s = sample(os.getpid())
        n, size = segment_mappings(os.getpid())
        mm.close()
        mm2.close()
    assert total >= 0
    assert n == n0 + 1  # the segment, not the other file
    assert size >= 4 * MiB
    assert s.pss_file - base.pss_file >= 3 * MiB  # page cache, not anonymous
    assert s.anon - base.anon < 2 * MiB
    assert backlog_bytes(tmp_path, "t") == 4 * MiB
    assert backlog_bytes(tmp_path, "u") == 0


def _ms(anon_mib: float, file_mib: float = 1.0, maps: int = 2) -> MemSample:
    a, f = int(anon_mib * MiB), int(file_mib * MiB)
    return MemSample(rss=a + f, pss=a + f, anon=a, pss_file=f, pss_shmem=0, uss=a,
                     mapped_files=maps, mapped_bytes=maps * MiB, fds=10)


def test_verdict_measures_from_one_gib_to_the_end_of_the_write_phase() -> None:
    pids = {"supervisor": 1, "coordinator": 2, "worker-0": 3}
    rows = [
        Row(0, {"supervisor": _ms(20), "coordinator": _ms(15), "worker-0": _ms(10)}, pids),
        Row(GiB // 2, {"supervisor": _ms(20), "coordinator": _ms(15), "worker-0": _ms(30)}, pids),
        Row(GiB, {"supervisor": _ms(20), "coordinator": _ms(15), "worker-0": _ms(40)}, pids),
        Row(5 * GiB, {"supervisor": _ms(21), "coordinator": _ms(15), "worker-0": _ms(50)},
            {**pids, "worker-0": 9}),
        # read-back rows: file-backed growth, judged apart
        Row(5 * GiB, {"supervisor": _ms(21), "coordinator": _ms(15),
                      "worker-0": _ms(50, file_mib=2000, maps=300)}, {**pids, "worker-0": 9},
            read=5 * GiB),
    ]
    v = verdict(rows)
    assert v.from_backlog == GiB and v.to_backlog == 5 * GiB
    assert v.anon_growth == 11 * MiB
    assert (v.worst_process, v.worst_growth) == ("worker-0", 10 * MiB)
    assert v.restarted == ["worker-0"]
    assert "+11.0 MiB" in v.line() and "restarted" in v.line()
    rv = read_verdict(rows)
    assert "file-backed PSS +1999.0 MiB" in rv and "anonymous +0.0 MiB" in rv
    table = render(rows)
    assert table.splitlines()[0].startswith("backlog GiB | read GiB | sup anon/PSS")
    assert len(table.splitlines()) == 1 + len(rows) + 1
    with pytest.raises(ValueError):
        verdict([])

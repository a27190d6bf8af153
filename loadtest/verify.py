"""Exactly-once-per-group check: every acknowledged record consumed exactly once by each group.

Producers append the id of every record the broker acknowledged to `acked/p<index>.ids`;
consumers append the id of every record they processed to `consumed/<group>/c<index>.ids`
(ids are the u64 in each payload, see payload.py). After a scenario the verifier compares:

- **missing**: acknowledged but never consumed by the group (data loss) -> failure;
- **duplicates**: consumed more than once by the group -> failure;
- **unacknowledged**: consumed but never acknowledged (a send whose answer was lost, e.g.
  to a killed worker, yet whose data landed) -> reported, allowed (at-least-once on send).

`python -m qnode.loadtest.verify IDS_DIR [--group G ...]` prints the report, exit 1 on failure.
"""

from __future__ import annotations

import argparse
import sys
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ACKED_DIR = "acked"
CONSUMED_DIR = "consumed"
SAMPLE = 10


class VerificationError(AssertionError):
    """An acknowledged record was lost or consumed twice."""


class IdLog:
    """Appends record ids (u64, native order) to a file; buffered, flushed on demand."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = open(path, "ab")  # noqa: SIM115 - lives as long as the log
        self._buf = array("Q")
        self.count = 0

    def append(self, record_id: int) -> None:
        self._buf.append(record_id)
        self.count += 1
        if len(self._buf) >= 65536:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            self._buf.tofile(self._file)
            self._buf = array("Q")
        self._file.flush()

    def close(self) -> None:
        self.flush()
        self._file.close()


def acked_log(ids_dir: Path, producer_index: int) -> IdLog:
    return IdLog(ids_dir / ACKED_DIR / f"p{producer_index}.ids")


def consumed_log(ids_dir: Path, group: str, consumer_index: int) -> IdLog:
    return IdLog(ids_dir / CONSUMED_DIR / group / f"c{consumer_index}.ids")


def _read_ids(paths: list[Path]) -> np.ndarray:
    parts = [np.fromfile(p, dtype=np.uint64) for p in sorted(paths)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)


@dataclass
class GroupResult:
    group: str
    consumed: int
    distinct: int
    missing: int
    duplicates: int
    unacknowledged: int
    missing_sample: list[int] = field(default_factory=list)
    duplicate_sample: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.duplicates == 0


@dataclass
class Verification:
    acked: int
    groups: list[GroupResult]

    @property
    def ok(self) -> bool:
        return bool(self.groups) and all(g.ok for g in self.groups)

    def lines(self) -> list[str]:
        out = [f"acknowledged records: {self.acked}"]
        if not self.groups:
            out.append("FAIL: no consumer group consumed anything")
        for g in self.groups:
            verdict = "OK" if g.ok else "FAIL"
            out.append(
                f"group {g.group}: {verdict} consumed={g.consumed} distinct={g.distinct} "
                f"missing={g.missing} duplicates={g.duplicates} "
                f"unacknowledged-but-consumed={g.unacknowledged}"
            )
            if g.missing:
                out.append(f"  missing ids (producer<<40|seq), first: {g.missing_sample}")
            if g.duplicates:
                out.append(f"  duplicated ids, first: {g.duplicate_sample}")
        return out

    def raise_if_failed(self) -> None:
        if not self.ok:
            raise VerificationError("exactly-once check failed:\n" + "\n".join(self.lines()))


def verify(ids_dir: Path, groups: list[str] | None = None) -> Verification:
    """Compare the acknowledged ids with each group's consumed ids (see the module doc)."""
    acked = np.unique(_read_ids(list((ids_dir / ACKED_DIR).glob("*.ids"))))
    consumed_root = ids_dir / CONSUMED_DIR
    names = set(groups or [])
    if consumed_root.is_dir():
        names |= {p.name for p in consumed_root.iterdir() if p.is_dir()}
    results = []
    for group in sorted(names):
        consumed = _read_ids(list((consumed_root / group).glob("*.ids")))
        ids, counts = np.unique(consumed, return_counts=True)
        missing = np.setdiff1d(acked, ids, assume_unique=True)
        dups = ids[counts > 1]
        unacked = np.setdiff1d(ids, acked, assume_unique=True)
        results.append(
            GroupResult(
                group=group,
                consumed=int(consumed.size),
                distinct=int(ids.size),
                missing=int(missing.size),
                duplicates=int(dups.size),
                unacknowledged=int(unacked.size),
                missing_sample=[int(x) for x in missing[:SAMPLE]],
                duplicate_sample=[int(x) for x in dups[:SAMPLE]],
            )
        )
    return Verification(acked=int(acked.size), groups=results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ids_dir", type=Path)
    parser.add_argument("--group", action="append", default=None)
    args = parser.parse_args(argv)
    result = verify(args.ids_dir, args.group)
    print("\n".join(result.lines()))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())

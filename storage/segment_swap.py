"""Crash-safe replacement of a run of segments by one cleaned segment, and its recovery.

The cleaner writes the new segment's files under `<base>.<ext>.cleaned`, fsyncs them, then
`commit_swap` runs these steps (a crash may stop it after any of them):

1. rename every index `.cleaned` → `.swap`, then `<base>.log.cleaned` → `<base>.log.swap`.
   That last rename is the commit point: before it the old segments are the truth, after it
   the swap segment is. fsync the directory.
2. delete the old segments' files (all extensions).
3. rename `<base>.log.swap` to `<base>.log`, then the index `.swap` files; fsync.

`recover_interrupted_clean(dir)`, which `Log.open` calls before listing segments, finishes
or rolls back whatever a crash left, telling the cases apart by which files exist:

- `<base>.log.swap` present: committed, step 3 not begun. Every final-named file of a
  segment whose base offset lies in [base, end of the swap's last batch) is old: deleted;
  then all `.swap` files of `base` are renamed into place.
- index `.swap` files without a `.log.swap`: if `<base>.log.cleaned` still exists the swap
  was never committed and they are deleted; otherwise step 3 had renamed the log and they
  are renamed into place (step 2 already deleted the old indexes).
- every remaining `*.cleaned` file is deleted (never committed: the old segments are intact).

The cleaned segment always ends at the same offset as the run it replaces (the cleaner
keeps the run's last batch, emptied if need be), so the range test in recovery removes
exactly the old run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from qnode.storage.record_batch import valid_prefix

LOG_SUFFIX = ".log"
INDEX_SUFFIXES = (".index", ".timeindex", ".txnindex")
SEGMENT_SUFFIXES = (LOG_SUFFIX, *INDEX_SUFFIXES)
CLEANED = ".cleaned"
SWAP = ".swap"

_FILE_RE = re.compile(r"^(\d{20})(\.log|\.index|\.timeindex|\.txnindex)(\.cleaned|\.swap)?$")

# A test or fault-injection hook: called with the name of each step before it runs.
StepHook = Callable[[str], None]


def segment_path(directory: Path, base: int, suffix: str, state: str = "") -> Path:
    return directory / f"{base:020d}{suffix}{state}"


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _scan(directory: Path) -> list[tuple[int, str, str, Path]]:
    """(base, suffix, state, path) of every segment-related file, in name order."""
    out = []
    for name in sorted(os.listdir(directory)):
        m = _FILE_RE.match(name)
        if m:
            out.append((int(m.group(1)), m.group(2), m.group(3) or "", directory / name))
    return out


def _noop(_: str) -> None:
    pass


def commit_swap(directory: Path, new_base: int, old_bases: Iterable[int],
                hook: StepHook = _noop) -> None:
    """Replace the segments `old_bases` by the fsynced `<new_base>.*.cleaned` files."""
    directory = Path(directory)
    olds = sorted(old_bases)
    cleaned = [s for s in SEGMENT_SUFFIXES
               if segment_path(directory, new_base, s, CLEANED).exists()]
    if LOG_SUFFIX not in cleaned:
        raise FileNotFoundError(segment_path(directory, new_base, LOG_SUFFIX, CLEANED))
    indexes = [s for s in cleaned if s != LOG_SUFFIX]
    hook("rename-cleaned-to-swap")
    for s in indexes:
        os.replace(segment_path(directory, new_base, s, CLEANED),
                   segment_path(directory, new_base, s, SWAP))
    hook("commit")
    os.replace(segment_path(directory, new_base, LOG_SUFFIX, CLEANED),
               segment_path(directory, new_base, LOG_SUFFIX, SWAP))
    fsync_dir(directory)
    for base in olds:
        hook("delete-old")
        for s in SEGMENT_SUFFIXES:
            segment_path(directory, base, s).unlink(missing_ok=True)
    hook("rename-log-swap")
    os.replace(segment_path(directory, new_base, LOG_SUFFIX, SWAP),
               segment_path(directory, new_base, LOG_SUFFIX))
    for s in indexes:
        hook("rename-index-swap")
        os.replace(segment_path(directory, new_base, s, SWAP), segment_path(directory, new_base, s))
    fsync_dir(directory)
    hook("done")


def _swap_end_offset(path: Path) -> int | None:
    """Next offset after the last whole batch of a swap file (None if it has none)."""
    data = path.read_bytes()
    _, headers = valid_prefix(data)
    return headers[-1].next_offset if headers else None


def recover_interrupted_clean(directory: str | os.PathLike[str]) -> list[str]:
    """Finish or roll back a clean interrupted by a crash; returns what was done, for logs."""
    directory = Path(directory)
    actions: list[str] = []
    files = _scan(directory)
    log_swaps = [(base, path) for base, suffix, state, path in files
                 if state == SWAP and suffix == LOG_SUFFIX]
    for base, swap_path in log_swaps:
        end = _swap_end_offset(swap_path)
        if end is None:
            # commit_swap fsyncs whole batches before committing, so this was never ours to
            # roll forward; the old segments stay.
            swap_path.unlink()
            actions.append(f"deleted empty {swap_path.name}")
            continue
        for b, _, state, path in _scan(directory):
            if not state and base <= b < end:
                path.unlink()
                actions.append(f"deleted replaced {path.name}")
        os.replace(swap_path, segment_path(directory, base, LOG_SUFFIX))
        for suffix in INDEX_SUFFIXES:
            p = segment_path(directory, base, suffix, SWAP)
            if p.exists():
                os.replace(p, segment_path(directory, base, suffix))
        actions.append(f"completed swap of {swap_path.name} (offsets {base}..{end - 1})")
    for base, suffix, state, path in _scan(directory):
        if state != SWAP:
            continue
        if segment_path(directory, base, LOG_SUFFIX, CLEANED).exists():
            path.unlink()
            actions.append(f"deleted uncommitted {path.name}")
        else:
            os.replace(path, segment_path(directory, base, suffix))
            actions.append(f"renamed {path.name} into place")
    for _, _, state, path in _scan(directory):
        if state == CLEANED:
            path.unlink()
            actions.append(f"deleted uncommitted {path.name}")
    if actions:
        fsync_dir(directory)
    return actions

"""The work directory of a build: shards, resume, the lock, and the atomic publish.

Layout beside the output directory ``OUT``::

    .OUT.lock                     exclusive lock held by the build (rank 0 under torchrun)
    .OUT.partial/work.json        settings the shards were made with
    .OUT.partial/shards/shard-<first corpus row>.parquet   (each records its window's digest)
    .OUT.partial/final/           the new version: index, id map, manifest

When ``final`` is complete it becomes a version of OUT in one atomic step (:mod:`tpsearch.layout`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

from typing import Iterator

from filelock import FileLock, Timeout

from .. import layout
from ..errors import ConfigMismatch, InputError
from ..manifest import diff_settings
from .writer import shard_meta

_SHARD_PREFIX, _SHARD_SUFFIX = "shard-", ".parquet"


def shard_name(start: int) -> str:
    return f"{_SHARD_PREFIX}{start:012d}{_SHARD_SUFFIX}"


def shard_start(path: Path) -> int:
    """The first corpus row of a shard, from its name."""
    return int(path.name[len(_SHARD_PREFIX):-len(_SHARD_SUFFIX)])


class BuildLock:
    """An exclusive lock on one output path (filelock), naming its holder to whoever is refused.

    ``wait`` is how many seconds to wait for another holder (0: refuse at once, as builds do;
    updates wait, so two writers of one index take turns instead of one failing)."""

    def __init__(self, out: Path, wait: float = 0):
        self.path = out.parent / f".{out.name}.lock"
        self.holder = out.parent / f".{out.name}.lock.holder"
        self.wait = wait
        self._lock = FileLock(str(self.path), timeout=wait)

    def __enter__(self) -> "BuildLock":
        try:
            self._lock.acquire()
        except Timeout:
            try:
                who = self.holder.read_text().strip()
            except OSError:
                who = "another process"
            waited = f" for {self.wait:g} s" if self.wait else ""
            raise InputError(f"another build or update is writing {self.path.name[1:-5]} ({who})"
                             f"{waited}; wait for it to finish, or choose another --out") from None
        self.holder.write_text(f"pid {os.getpid()} on {socket.gethostname()}, since "
                               f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
        return self

    def __exit__(self, *exc) -> None:
        self.holder.unlink(missing_ok=True)
        self._lock.release()


class WorkDir:
    """Shards of one build, resumable; the finished index is published from ``final``."""

    def __init__(self, out: Path):
        self.out = out
        self.root = out.parent / f".{out.name}.partial"
        self.shards = self.root / "shards"
        self.final = self.root / "final"
        self.marker = self.root / "work.json"

    def prepare(self, settings: dict, fresh: bool, discard_other: bool = False) -> None:
        """Create the work directory, or check that its shards were made with ``settings``.
        ``discard_other`` (updates): work of an interrupted build or update made with other
        settings is discarded instead of refused (nobody was told it succeeded; the same
        update run again finds its own shards and resumes)."""
        if self.root.exists() and fresh:
            shutil.rmtree(self.root)
        if self.marker.is_file():
            try:
                recorded = json.loads(self.marker.read_text())
            except (OSError, ValueError):
                recorded = {"unreadable": True}  # a marker cut short by a crash
            diffs = diff_settings(recorded, settings) if isinstance(recorded, dict) else ["?"]
            if diffs and discard_other:
                shutil.rmtree(self.root)
                diffs = []
            if diffs:
                raise ConfigMismatch(
                    f"{self.root} holds shards of an interrupted build made with other settings ("
                    + "; ".join(diffs[:4]) + "); rerun with --fresh to discard them")
        self.shards.mkdir(parents=True, exist_ok=True)
        if not self.marker.is_file():
            tmp = self.marker.with_suffix(".tmp")
            tmp.write_text(json.dumps(settings, indent=1))
            os.replace(tmp, self.marker)

    def shard_path(self, start: int) -> Path:
        return self.shards / shard_name(start)

    def complete_shards(self) -> list[Path]:
        """Finished shards in corpus order (leftover temporary files are ignored)."""
        return sorted(self.shards.glob(f"{_SHARD_PREFIX}*{_SHARD_SUFFIX}"))

    def missing_windows(self, num_rows: int, size: int) -> list[tuple[int, int]]:
        """Runs of consecutive windows (start, stop) that have no shard yet."""
        done = {shard_start(p) for p in self.complete_shards()}
        return missing_windows(num_rows, size, done)

    def drop_stale(self, windows: Iterator[tuple[int, str]]) -> list[int]:
        """Remove the shards whose window content changed since they were written (or that
        record none); ``windows`` yields (first corpus row, digest of its content now) for
        the windows that have a shard. Returns the first rows of the shards removed."""
        stale = []
        for start, digest in windows:
            path = self.shard_path(start)
            try:
                recorded = shard_meta(path).get("source_sha256")
            except (OSError, ValueError, KeyError, TypeError):
                recorded = None
            if recorded != digest:
                path.unlink(missing_ok=True)
                stale.append(start)
        return stale

    def fresh_final(self) -> Path:
        if self.final.exists():
            shutil.rmtree(self.final)
        self.final.mkdir()
        return self.final

    def publish(self, version: str, keep_shards: bool = False) -> str | None:
        """Make ``final`` the current version of OUT (one atomic step: see
        :func:`tpsearch.layout.publish`), then drop the work dir (or, with ``keep_shards``,
        all of it but the shards and their settings). Returns the version it replaced."""
        segments = self.root / "segments"  # a sharded build's segments (rank_assembly)
        previous = layout.publish(self.out, self.final, version, self.root,
                                  segments if segments.is_dir() else None)
        if not keep_shards:
            shutil.rmtree(self.root)
        return previous

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def split_windows(runs: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """Runs of consecutive windows cut into single windows of ``size`` rows (the last shorter)."""
    return [(a, min(a + size, b)) for lo, b in runs for a in range(lo, b, size)]


def missing_windows(num_rows: int, size: int, done: set[int]) -> list[tuple[int, int]]:
    """Runs of consecutive windows (start, stop) whose start is not in ``done``."""
    runs: list[tuple[int, int]] = []
    for start in range(0, num_rows, size):
        if start in done:
            continue
        stop = min(start + size, num_rows)
        if runs and runs[-1][1] == start:
            runs[-1] = (runs[-1][0], stop)
        else:
            runs.append((start, stop))
    return runs

"""Follower: the part of assembly that needs no vectors, done on each shard while encoding goes on.

The id map, the lexical index's units and the documents' first sentences (the transform's
query sample) depend on the shards' rows only, not on the fitted transform, so a one-process
build hands every shard it writes to a :class:`ShardFollower`, which takes them in corpus order
in a thread of its own. Where the index will be a graph, the follower also fills it
(:mod:`tpsearch.pipeline.prefill`: the transform fitted on the first passages). When encoding
ends, assembly fits the transform and fills the index, or keeps the graph filled meanwhile.
On a GPU build the thread runs on the otherwise idle CPU; measured on 2 CPU cores
(``benchmarks/bench_build.py``, side by side) the tables alone paid even where the encoder keeps both cores
busy: the build kept 89.8% of the bare encoder's throughput with it and 83.7% without.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

from .assembler import AssemblyOptions, ShardTables, needs_first_sentences
from .prefill import GraphPrefill
from .workdir import WorkDir
from .writer import read_vectors

log = logging.getLogger("tpsearch")

FOLLOW_DIR = "follow"


class ShardFollower:
    """Feeds ``expected`` shards, in that order, to a :class:`ShardTables` as each is written
    (those already on disk, from an interrupted run, right away)."""

    def __init__(self, expected: list[Path], tables: ShardTables,
                 prefill: GraphPrefill | None = None):
        self.expected, self.tables, self.prefill = expected, tables, prefill
        self._ready = {p for p in expected if p.is_file()}
        self._cond = threading.Condition()
        self._stop = self._encoded = False
        self._error: BaseException | None = None
        self.seconds = 0.0  # spent on the shards (not waiting for them)
        self.graph_seconds = 0.0  # of which adding them to the prefilled graph
        self._thread = threading.Thread(target=self._run, name="tpsearch-follow", daemon=True)
        self._thread.start()

    @classmethod
    def for_build(cls, work: WorkDir, num_rows: int, shard_rows: int,
                  opts: AssemblyOptions, prefill: GraphPrefill | None = None) -> "ShardFollower":
        """A follower of every window of a one-process build, writing into the work dir
        (and, with ``prefill``, filling the graph index)."""
        root = work.root / FOLLOW_DIR
        shutil.rmtree(root, ignore_errors=True)  # an interrupted run's tables are redone
        root.mkdir(parents=True)
        expected = [work.shard_path(start) for start in range(0, num_rows, shard_rows)]
        tables = ShardTables(opts, root / "ids.parquet", needs_first_sentences(opts))
        return cls(expected, tables, prefill)

    def written(self, path: Path) -> None:
        """The encoder finished ``path``."""
        with self._cond:
            self._ready.add(path)
            self._cond.notify()

    def _run(self) -> None:
        try:
            for path in self.expected:
                with self._cond:
                    while path not in self._ready and not (self._stop or self._encoded):
                        self._cond.wait()
                    if path not in self._ready:  # stopped, or encoding ended without it
                        return
                t0 = time.perf_counter()
                self.tables.add(path)
                if self.prefill is not None:
                    t1 = time.perf_counter()
                    self.prefill.add(read_vectors(path))
                    self.graph_seconds += time.perf_counter() - t1
                self.seconds += time.perf_counter() - t0
        except BaseException as exc:  # raised in the build's thread by result()
            self._error = exc
        finally:
            self.tables.close()

    def result(self) -> ShardTables | None:
        """After encoding: the tables of every expected shard, or None if some shard never
        came (assembly then makes them itself). An error of the follower is raised here."""
        with self._cond:
            self._encoded = True
            self._cond.notify()
        self._thread.join()
        if self._error is not None:
            raise self._error
        if not self.tables.covers(self.expected):
            log.info("shard tables made while encoding cover %d of %d shards: assembly "
                     "makes them", len(self.tables.shards), len(self.expected))
            return None
        return self.tables

    def cancel(self) -> None:
        """Stop following (the build failed); waits for the shard in hand."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join()

"""Inverted lists on disk, written without holding them in memory or in a memory map.

FAISS's ``OnDiskInvertedLists`` keeps an IVF index's lists in one file that searches memory-map.
Filling it through FAISS (``index.add``, or ``merge_ondisk`` from partial indexes) writes
through that map, so every page of the file becomes resident in the building process: at
10 million vectors the build's peak resident set was 2.2x the vectors' bytes. Here the file is
written in two passes instead:

1. :meth:`ListWriter.add` assigns each batch to its lists and encodes it (the index's own
   quantizer and codec, so the codes equal what ``index.add`` stores) and appends (list, id,
   code) records to a run file, counting each list's length;
2. :meth:`ListWriter.finish` sizes every list exactly (``set_all_lists_sizes``: one slot per
   list, no growth, no spare capacity), then reads the run file back a chunk at a time, sorts
   the chunk by list and writes each list's part with ``pwrite``, never through the map.

Each list holds its vectors in the order they were added, as ``index.add`` leaves them, so the
on-disk index answers exactly as the in-memory one. RAM: one chunk (and its sort) at a time,
plus a few numbers per list. Disk: the run file beside the lists file until it is done.
"""

from __future__ import annotations

import os
from pathlib import Path

import faiss
import numpy as np

from .index import (apply_chain, c_stdout_silenced, mapped_list_bytes, release_mapped_lists,
                    transform_chain)

#: Bytes of run records :meth:`ListWriter.finish` reads, sorts and writes out at a time.
DEFAULT_CHUNK_BYTES = 256 << 20
#: Bytes of an on-disk index's lists a searcher reads through the memory map before it
#: releases the mapped pages (:class:`MappedLists`).
MAPPED_LISTS_CAP = 256 << 20


class ListWriter:
    """Fills a trained, empty IVF index (bare or behind a transform chain), its inverted lists
    in a file on disk: vectors through :meth:`add` (ids: their row numbers, 0, 1, ... in the
    order added) or encoded entries through :meth:`add_codes`. ``work``: a directory for the
    run file (removed by :meth:`finish`)."""

    def __init__(self, index, work: Path, chunk_bytes: int = DEFAULT_CHUNK_BYTES):
        self.index = index
        self.chain, self.ivf = transform_chain(index), faiss.extract_index_ivf(index)
        if not self.ivf.is_trained:
            raise ValueError("the IVF index must be trained before its lists are written")
        if self.ivf.ntotal:
            raise ValueError(f"the IVF index holds {self.ivf.ntotal} vectors already")
        self.code_size = int(self.ivf.code_size)
        self.record = np.dtype([("list", "<i8"), ("id", "<i8"), ("code", "u1", (self.code_size,))])
        self.chunk = max(1, chunk_bytes // self.record.itemsize)
        self.counts = np.zeros(self.ivf.nlist, dtype=np.int64)
        self.n = 0
        self.chunks_written = 0  # run-file chunks sorted and written out by finish()
        work.mkdir(parents=True, exist_ok=True)
        self.work = work
        self.run_path = work / "lists.run"
        self._run = open(self.run_path, "wb")

    def add(self, vecs: np.ndarray) -> None:
        """Assign and encode a batch (ids: the next row numbers) and append its records."""
        x = np.ascontiguousarray(apply_chain(self.chain, vecs), dtype=np.float32)
        n = len(x)
        if not n:
            return
        lists = np.ascontiguousarray(self.ivf.quantizer.assign(x, 1).ravel(), dtype=np.int64)
        codes = np.empty((n, self.code_size), dtype=np.uint8)
        self.ivf.encode_vectors(n, faiss.swig_ptr(x), faiss.swig_ptr(lists),
                                faiss.swig_ptr(codes))
        self.add_codes(lists, np.arange(self.n, self.n + n, dtype=np.int64), codes)

    def add_codes(self, lists: np.ndarray, ids: np.ndarray, codes: np.ndarray) -> None:
        """Append entries already encoded by this index's codec (a merge copies them from
        segments that share it): each goes to the end of its list."""
        rec = np.empty(len(ids), dtype=self.record)
        rec["list"], rec["id"], rec["code"] = lists, ids, codes
        rec.tofile(self._run)
        self.counts += np.bincount(np.asarray(lists, dtype=np.int64), minlength=len(self.counts))
        self.n += len(ids)

    def finish(self, data_file: Path):
        """Write the lists into ``data_file`` and hand them to the index (which owns them
        from then on); returns the index, holding every vector added."""
        self._run.close()
        lists = faiss.OnDiskInvertedLists(self.ivf.nlist, self.code_size, str(data_file))
        sizes = np.ascontiguousarray(self.counts, dtype=np.uint64)
        entry = self.code_size + 8  # a list: its codes, then its ids (int64)
        starts = np.concatenate([[0], np.cumsum(self.counts * entry)[:-1]])
        # Each list's capacity is its size, laid out one after another (as FAISS's own
        # merge_from_multiple does); then the file is created at its full size and mapped.
        lists.set_all_lists_sizes(faiss.swig_ptr(sizes))
        with c_stdout_silenced():  # FAISS printf()s as it sizes the file
            # (an empty file cannot be mapped: no entries still get one entry's bytes)
            lists.update_totsize(max(int((self.counts * entry).sum()), entry))
        filled = np.zeros_like(self.counts)
        self.chunks_written = 0
        fd = os.open(data_file, os.O_WRONLY)
        try:
            with open(self.run_path, "rb") as run:
                while True:
                    rec = np.fromfile(run, dtype=self.record, count=self.chunk)
                    if not len(rec):
                        break
                    rec = rec[np.argsort(rec["list"], kind="stable")]
                    present, first, many = np.unique(rec["list"], return_index=True,
                                                     return_counts=True)
                    for j, a, m in zip(present.tolist(), first.tolist(), many.tolist()):
                        at, cap = int(starts[j]), int(self.counts[j])
                        pos = int(filled[j])
                        os.pwrite(fd, rec["code"][a:a + m].tobytes(), at + pos * self.code_size)
                        os.pwrite(fd, rec["id"][a:a + m].tobytes(),
                                  at + cap * self.code_size + pos * 8)
                        filled[j] += m
                    self.chunks_written += 1
        finally:
            os.close(fd)
        os.remove(self.run_path)
        try:
            self.work.rmdir()
        except OSError:  # something else lives there: leave it
            pass
        self.ivf.replace_invlists(lists, True)
        lists.thisown = False  # the index owns it now
        self.ivf.ntotal = self.n
        self.index.ntotal = self.n
        return self.index

    def abort(self) -> None:
        """Close and remove the run file (the lists file, if any, is the caller's)."""
        self._run.close()
        self.run_path.unlink(missing_ok=True)


class MappedLists:
    """A searcher's account of an on-disk index's mapped lists: searches read lists through
    FAISS's memory map, and every page read stays in the process's resident set, so a server
    answering queries long enough would hold the whole file. After searches that read about
    ``cap`` bytes (estimated: queries x nprobe x the mean list's bytes) the mapped pages are
    released (:func:`~tpsearch.index.release_mapped_lists`); the file's pages stay in the page
    cache while memory allows, so hot lists are faulted back in without disk reads."""

    def __init__(self, index, per_list: float, cap: int = MAPPED_LISTS_CAP):
        self.index, self.cap, self.read = index, cap, 0.0
        self.per_list = per_list  # mean bytes of one list
        self.releases = 0

    @classmethod
    def of(cls, index, cap: int = MAPPED_LISTS_CAP) -> "MappedLists | None":
        """The account of ``index`` if its lists are on disk, else None."""
        per_list = mapped_list_bytes(index)
        return None if per_list is None else cls(index, per_list, cap)

    def searched(self, queries: int, nprobe: int) -> None:
        """Count a search of ``queries`` queries probing ``nprobe`` lists each."""
        self.read += queries * nprobe * self.per_list
        if self.read >= self.cap:
            self.read = 0.0
            release_mapped_lists(self.index)
            self.releases += 1


__all__ = ["ListWriter", "MappedLists", "DEFAULT_CHUNK_BYTES", "MAPPED_LISTS_CAP"]

"""Merging IVF segments list by list: segments that share one coarse quantizer and codec (the
segments of a sharded build start from one trained index) are merged by copying each inverted
list's codes, without assigning or encoding a vector again and without training anew; the
merged segment keeps that quantizer, so it can be merged again the same way. Lists on disk
(``--index ivf-disk``/``ivfpq-disk``) are read through their memory map (released after each
segment) and written into the merged segment's own lists file by
:class:`~tpsearch.ondisk.ListWriter`, a chunk at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import faiss
import numpy as np


def _emptied(index) -> bytes:
    """The index without its vectors (its transform chain, quantizer and codec), serialised.
    Its lists are swapped for empty ones while it is written, not copied and emptied: a copy of
    an index whose lists are on disk would map the same file, and emptying it would empty the
    file."""
    ivf = faiss.extract_index_ivf(index)
    saved, own, counts = ivf.invlists, ivf.own_invlists, (index.ntotal, ivf.ntotal)
    empty = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.own_invlists = False  # the swap must not delete the index's own lists
    ivf.replace_invlists(empty, False)
    index.ntotal = ivf.ntotal = 0
    try:
        return faiss.serialize_index(index).tobytes()
    finally:
        ivf.replace_invlists(saved, own)
        index.ntotal, ivf.ntotal = counts


LISTS = (faiss.ArrayInvertedLists, faiss.OnDiskInvertedLists)


def shared_layout(indexes: Sequence):
    """The first index emptied (its transform chain, coarse quantizer and codec, with empty
    lists in memory) when every index is an IVF index, its lists in memory or on disk, whose
    emptied form equals it byte for byte, so their lists can be concatenated into it; None
    otherwise."""
    try:
        ivfs = [faiss.extract_index_ivf(x) for x in indexes]
    except RuntimeError:  # not IVF (Flat, HNSW)
        return None
    if not ivfs or any(not isinstance(faiss.downcast_InvertedLists(v.invlists), LISTS)
                       for v in ivfs):
        return None
    first = _emptied(indexes[0])
    if any(_emptied(x) != first for x in indexes[1:]):
        return None
    return faiss.deserialize_index(np.frombuffer(first, dtype=np.uint8))


def _kept_entries(indexes: Sequence, kept: Sequence[np.ndarray | None]):
    """(list number, new ids, codes) of each non-empty list of each index in turn, the ids
    renumbered as :func:`merge_ivf_lists` says and the dropped entries left out; after each
    index, a (None, index, None) marker (its lists may be released)."""
    offset = 0
    for index, keep in zip(indexes, kept):
        ivf = faiss.extract_index_ivf(index)
        n = ivf.ntotal
        keep = np.ones(n, bool) if keep is None else np.asarray(keep, bool)
        if len(keep) != n:
            raise ValueError(f"a mask of {len(keep)} rows for an index of {n} vectors")
        renumber = np.full(n, -1, np.int64)
        renumber[keep] = offset + np.arange(int(keep.sum()), dtype=np.int64)
        source, size = ivf.invlists, ivf.invlists.code_size
        for list_no in range(ivf.nlist):
            m = source.list_size(list_no)
            if not m:
                continue
            ids = renumber[faiss.rev_swig_ptr(source.get_ids(list_no), m)]
            codes = faiss.rev_swig_ptr(source.get_codes(list_no), m * size).reshape(m, size)
            take = ids >= 0
            if take.any():
                yield list_no, np.ascontiguousarray(ids[take]), np.ascontiguousarray(codes[take])
        offset += int(keep.sum())
        yield None, index, None


def merge_ivf_lists(layout, indexes: Sequence, kept: Sequence[np.ndarray | None]):
    """``layout`` (from :func:`shared_layout`, empty) filled with the kept vectors of
    ``indexes``, in order: vector ``r`` of index ``i``, if ``kept[i][r]`` (None: all kept),
    becomes number ``offset_i + (kept vectors of index i before r)``, as if the kept vectors had
    been added in that order."""
    target = faiss.extract_index_ivf(layout)
    lists = target.invlists
    total = 0
    for list_no, ids, codes in _kept_entries(indexes, kept):
        if list_no is not None:
            lists.add_entries(list_no, len(ids), faiss.swig_ptr(ids), faiss.swig_ptr(codes))
            total += len(ids)
    target.ntotal = layout.ntotal = total
    return layout


def merge_ivf_lists_on_disk(layout, indexes: Sequence, kept: Sequence[np.ndarray | None],
                            data_file: Path, work: Path, chunk_bytes: int | None = None):
    """:func:`merge_ivf_lists` into a new lists file ``data_file`` (memory-mapped when the
    index is searched), written by :class:`~tpsearch.ondisk.ListWriter`: the merged codes are
    never in RAM or in a memory map together, and each source's mapped pages are released
    once it is copied, so merging segments larger than memory stays within a chunk of RAM."""
    from .index import release_mapped_lists
    from .ondisk import DEFAULT_CHUNK_BYTES, ListWriter

    writer = ListWriter(layout, work, chunk_bytes or DEFAULT_CHUNK_BYTES)
    try:
        for list_no, ids, codes in _kept_entries(indexes, kept):
            if list_no is None:
                release_mapped_lists(ids)  # the index just copied
            else:
                writer.add_codes(np.full(len(ids), list_no, np.int64), ids, codes)
    except BaseException:
        writer.abort()
        raise
    return writer.finish(data_file)


__all__ = ["shared_layout", "merge_ivf_lists", "merge_ivf_lists_on_disk"]

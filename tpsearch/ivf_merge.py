"""Merging IVF segments list by list: segments that share one coarse quantizer and codec (the
segments of a sharded build start from one trained index) are merged by copying each inverted
list's codes, without assigning or encoding a vector again and without training anew; the
merged segment keeps that quantizer, so it can be merged again the same way. Lists on disk
(``--index ivf-disk``/``ivfpq-disk``) are read through their memory map and written one list at
a time into the merged segment's own lists file."""

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


def lists_on_disk(layout, path: Path):
    """``layout`` (empty, from :func:`shared_layout`) with its inverted lists in a new file at
    ``path`` (FAISS's ``OnDiskInvertedLists``, memory-mapped), for :func:`merge_ivf_lists` to
    fill one list at a time: the merged codes never sit in RAM together."""
    ivf = faiss.extract_index_ivf(layout)
    lists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(path))
    ivf.replace_invlists(lists, True)
    lists.thisown = False  # the index owns it now
    return layout


def merge_ivf_lists(layout, indexes: Sequence, kept: Sequence[np.ndarray | None]):
    """``layout`` (from :func:`shared_layout`, empty) filled with the kept vectors of
    ``indexes``, in order: vector ``r`` of index ``i``, if ``kept[i][r]`` (None: all kept),
    becomes number ``offset_i + (kept vectors of index i before r)``, as if the kept vectors had
    been added in that order."""
    out = layout
    target = faiss.extract_index_ivf(out)
    lists = target.invlists
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
                ids_kept = np.ascontiguousarray(ids[take])
                codes_kept = np.ascontiguousarray(codes[take])
                lists.add_entries(list_no, len(ids_kept), faiss.swig_ptr(ids_kept),
                                  faiss.swig_ptr(codes_kept))
        offset += int(keep.sum())
    target.ntotal = offset
    out.ntotal = offset
    return out


__all__ = ["shared_layout", "lists_on_disk", "merge_ivf_lists"]

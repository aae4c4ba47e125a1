"""Merging IVF segments list by list: segments that share one coarse quantizer and codec (the
segments of a sharded build start from one trained index) are merged by copying each inverted
list's codes, without assigning or encoding a vector again and without training anew; the
merged segment keeps that quantizer, so it can be merged again the same way."""

from __future__ import annotations

from typing import Sequence

import faiss
import numpy as np


def _copy(index):
    """A deep copy through FAISS's serialisation (``clone_index`` refuses some transforms)."""
    return faiss.deserialize_index(faiss.serialize_index(index))


def _emptied(index) -> bytes:
    """The index without its vectors (its transform chain, quantizer and codec), serialised."""
    empty = _copy(index)
    empty.reset()
    return faiss.serialize_index(empty).tobytes()


def shared_layout(indexes: Sequence):
    """The first index emptied (its transform chain, coarse quantizer and codec) when every
    index is an in-memory IVF index whose emptied form equals it byte for byte, so their lists
    can be concatenated into it; None otherwise."""
    try:
        ivfs = [faiss.extract_index_ivf(x) for x in indexes]
    except RuntimeError:  # not IVF (Flat, HNSW)
        return None
    if not ivfs or any(not isinstance(faiss.downcast_InvertedLists(v.invlists),
                                      faiss.ArrayInvertedLists) for v in ivfs):
        return None  # lists on disk: merged by FAISS's on-disk merge instead
    first = _emptied(indexes[0])
    if any(_emptied(x) != first for x in indexes[1:]):
        return None
    return faiss.deserialize_index(np.frombuffer(first, dtype=np.uint8))


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


__all__ = ["shared_layout", "merge_ivf_lists"]

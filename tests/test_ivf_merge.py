"""Merging IVF segments list by list (tpsearch.ivf_merge) against adding the kept vectors anew."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from tpsearch.ivf_merge import merge_ivf_lists, shared_layout


def _vectors(n, d=16, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("factory", ["IVF8,Flat", "IVF8,PQ4", "PCA8,IVF8,Flat"])
def test_merged_lists_equal_the_kept_vectors_added_in_order(factory):
    train = _vectors(2000, seed=1)
    trained = faiss.index_factory(16, factory, faiss.METRIC_INNER_PRODUCT)
    trained.train(train)
    parts = [_vectors(n, seed=s) for n, s in ((300, 2), (200, 3), (150, 4))]
    indexes = []
    for x in parts:
        idx = faiss.clone_index(trained)
        idx.add(x)
        indexes.append(idx)
    layout = shared_layout(indexes)
    assert layout is not None
    rng = np.random.default_rng(5)
    kept = [rng.random(len(x)) > 0.3 for x in parts]
    kept[1] = None  # a segment without deletions
    merged = merge_ivf_lists(layout, indexes, kept)
    want = faiss.clone_index(trained)
    want.add(np.concatenate([x if k is None else x[k] for x, k in zip(parts, kept)]))
    assert merged.ntotal == want.ntotal
    q = _vectors(20, seed=6)
    for index in (merged, want):
        faiss.extract_index_ivf(index).nprobe = 8
    dm, im = merged.search(q, 10)
    dw, iw = want.search(q, 10)
    np.testing.assert_array_equal(im, iw)
    np.testing.assert_allclose(dm, dw, rtol=1e-5, atol=1e-6)


def test_indexes_with_other_quantizers_or_not_ivf_do_not_share_lists():
    a = faiss.index_factory(16, "IVF8,Flat", faiss.METRIC_INNER_PRODUCT)
    b = faiss.index_factory(16, "IVF8,Flat", faiss.METRIC_INNER_PRODUCT)
    a.train(_vectors(1000, seed=1))
    b.train(_vectors(1000, seed=2))
    assert shared_layout([a, b]) is None
    assert shared_layout([a, faiss.IndexFlatIP(16)]) is None
    assert shared_layout([a, faiss.clone_index(a)]) is not None

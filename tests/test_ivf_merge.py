"""Merging IVF segments list by list (tpsearch.ivf_merge) against adding the kept vectors anew."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from tpsearch.ivf_merge import merge_ivf_lists, merge_ivf_lists_on_disk, shared_layout


def _vectors(n, d=16, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def assert_answers_as_added_anew(merged, trained, parts, kept) -> None:
    """``merged`` holds the kept vectors of ``parts`` in order: the same ids and distances as
    ``trained`` with them added anew (every list probed)."""
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
    assert_answers_as_added_anew(merged, trained, parts, kept)


def test_indexes_with_other_quantizers_or_not_ivf_do_not_share_lists():
    a = faiss.index_factory(16, "IVF8,Flat", faiss.METRIC_INNER_PRODUCT)
    b = faiss.index_factory(16, "IVF8,Flat", faiss.METRIC_INNER_PRODUCT)
    a.train(_vectors(1000, seed=1))
    b.train(_vectors(1000, seed=2))
    assert shared_layout([a, b]) is None
    assert shared_layout([a, faiss.IndexFlatIP(16)]) is None
    assert shared_layout([a, faiss.clone_index(a)]) is not None


def _on_disk(trained, x, folder):
    """``x`` in an index whose lists live in ``folder``/index.ivfdata, read back memory-mapped."""
    from faiss.contrib.ondisk import merge_ondisk

    folder.mkdir()
    part = faiss.clone_index(trained)
    part.add(x)
    faiss.write_index(part, str(folder / "part.faiss"))
    index = faiss.clone_index(trained)
    merge_ondisk(index, [str(folder / "part.faiss")], str(folder / "index.ivfdata"))
    faiss.write_index(index, str(folder / "index.faiss"))
    (folder / "part.faiss").unlink()
    return faiss.read_index(str(folder / "index.faiss"), faiss.IO_FLAG_ONDISK_SAME_DIR)


def test_lists_on_disk_merge_into_a_new_file_and_leave_the_segments_alone(tmp_path):
    import hashlib

    train = _vectors(2000, seed=1)
    trained = faiss.index_factory(16, "IVF8,Flat", faiss.METRIC_INNER_PRODUCT)
    trained.train(train)
    parts = [_vectors(n, seed=s) for n, s in ((300, 2), (250, 3))]
    indexes = [_on_disk(trained, x, tmp_path / f"seg{i}") for i, x in enumerate(parts)]
    digest = lambda: [hashlib.sha256((tmp_path / f"seg{i}" / "index.ivfdata").read_bytes()).hexdigest()
                      for i in range(2)]
    before = digest()
    layout = shared_layout(indexes)
    assert layout is not None
    assert shared_layout([indexes[0], faiss.clone_index(trained)]) is not None  # memory or disk
    kept = [np.random.default_rng(7).random(300) > 0.25, None]
    (tmp_path / "merged").mkdir()
    # chunks of ~40 entries: the merged lists are written out in several sorted chunks
    merged = merge_ivf_lists_on_disk(layout, indexes, kept, tmp_path / "merged" / "index.ivfdata",
                                     tmp_path / "merged" / ".lists", chunk_bytes=40 * (16 + 64))
    faiss.write_index(merged, str(tmp_path / "merged" / "index.faiss"))
    assert sorted(p.name for p in (tmp_path / "merged").iterdir()) == ["index.faiss",
                                                                      "index.ivfdata"]
    assert digest() == before  # the segments' own lists are read, never written
    assert [ix.ntotal for ix in indexes] == [300, 250]  # and still hold every vector
    reread = faiss.read_index(str(tmp_path / "merged" / "index.faiss"),
                              faiss.IO_FLAG_ONDISK_SAME_DIR)
    assert isinstance(faiss.downcast_InvertedLists(faiss.extract_index_ivf(reread).invlists),
                      faiss.OnDiskInvertedLists)
    assert_answers_as_added_anew(reread, trained, parts, kept)

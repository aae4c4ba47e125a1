"""Incremental builds: a build into an existing index encodes only new and changed documents,
keeps the fitted transform, and gives what a full build of the new corpus gives."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import config, corpus_texts, version_dir, write_corpus
from tpsearch import Searcher
from tpsearch.errors import ConfigMismatch, IndexDamaged
from tpsearch.pipeline import build_index


def corpora(tmp_path):
    texts = corpus_texts(60)
    a = write_corpus(tmp_path / "a.parquet", 60, texts=texts)
    # B: 10 documents removed, one changed, three added, the rest unchanged (and reordered)
    ids = [f"doc-{i}" for i in range(59, 9, -1)] + [f"new-{i}" for i in range(3)]
    new_texts = [texts[int(i[4:])] if i.startswith("doc-") else f"brand new text {i}." for i in ids]
    new_texts[ids.index("doc-17")] = "a changed document about rivers."
    b = write_corpus(tmp_path / "b.parquet", len(ids), ids=ids, texts=new_texts)
    return a, b, ids, new_texts


def test_an_update_encodes_only_the_delta_and_equals_a_full_build(tmp_path, tiny_model_dir):
    model = tiny_model_dir("llama")
    a, b, ids, texts = corpora(tmp_path)
    cfg = config(tmp_path, model, a, lexical=True, mode="hybrid", transform="none",
                 passage_tokens=24, passage_overlap=4)
    first = build_index(cfg)
    cfg.corpus = str(b)
    res = build_index(cfg)
    u = res.manifest.update
    assert (u.added, u.changed, u.removed, u.kept) == (3, 1, 10, 49)
    assert u.base == first.manifest.version and res.manifest.replaces == first.manifest.version
    assert res.encoded_documents == 4  # only the added and changed documents were encoded
    full_cfg = config(tmp_path, model, b, lexical=True, mode="hybrid", transform="none",
                      passage_tokens=24, passage_overlap=4)
    full_cfg.out = str(tmp_path / "full")
    full = build_index(full_cfg)
    s, f = Searcher.open(res.out), Searcher.open(full.out)
    assert s.idmap.ids == f.idmap.ids and s.idmap.texts == f.idmap.texts
    np.testing.assert_allclose(s.index.reconstruct_n(0, s.index.ntotal),
                               f.index.reconstruct_n(0, f.index.ntotal), atol=1e-5)
    for q in ("river", texts[5], "brand new text"):
        for mode in ("dense", "lexical", "hybrid"):
            got, want = s.search(q, k=8, mode=mode), f.search(q, k=8, mode=mode)
            assert [h.id for h in got] == [h.id for h in want], (q, mode)
            assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-4)


def test_the_fitted_transform_is_kept_unless_refit(tmp_path, tiny_model_dir):
    import faiss

    model = tiny_model_dir("llama")
    a, b, *_ = corpora(tmp_path)
    cfg = config(tmp_path, model, a, lexical=True, mode="hybrid", transform="center")
    first = build_index(cfg)

    def mean(out):
        raw = faiss.read_index(str(version_dir(out) / "index.faiss"))
        outer = faiss.downcast_index(raw)
        return faiss.vector_to_array(faiss.downcast_VectorTransform(outer.chain.at(0)).mean)

    before = mean(first.out)
    shift = np.load(version_dir(first.out) / "query_shift.npy")
    cfg.corpus = str(b)
    res = build_index(cfg)
    assert res.manifest.update.transform == "kept" and res.manifest.update.drift > 0
    np.testing.assert_array_equal(mean(res.out), before)
    np.testing.assert_array_equal(np.load(version_dir(res.out) / "query_shift.npy"), shift)
    cfg.refit = True
    again = build_index(cfg)
    assert again.manifest.update.transform == "fitted"
    assert not np.allclose(mean(again.out), before)
    assert [h.base for h in again.manifest.history] == [first.manifest.version]


def test_other_settings_are_refused_and_overwrite_rebuilds(tmp_path, tiny_model_dir):
    model = tiny_model_dir("llama")
    a, b, *_ = corpora(tmp_path)
    cfg = config(tmp_path, model, a)
    build_index(cfg)
    cfg.corpus = str(b)
    cfg.model.tp_layers = (1, 3)
    with pytest.raises(ConfigMismatch, match="tp_layers.*--overwrite rebuilds"):
        build_index(cfg)
    res = build_index(cfg, overwrite=True)
    assert res.manifest.update is None and res.encoded_documents == 53


def test_an_index_without_a_store_or_with_a_damaged_one_is_refused(tmp_path, tiny_model_dir):
    model = tiny_model_dir("llama")
    a, b, *_ = corpora(tmp_path)
    cfg = config(tmp_path, model, a)
    out = build_index(cfg).out
    store = sorted((version_dir(out) / "store").glob("shard-*.parquet"))
    store[0].write_bytes(store[0].read_bytes()[:-10] + b"x" * 10)
    cfg.corpus = str(b)
    with pytest.raises(IndexDamaged, match="store/shard-.*does not match"):
        build_index(cfg)
    m = json.loads((version_dir(out) / "manifest.json").read_text())
    m.pop("store")
    (version_dir(out) / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexDamaged, match="built before tpsearch 0.3.*--overwrite"):
        build_index(cfg)
    assert Searcher.open(out).manifest.documents == 60  # the index itself still serves

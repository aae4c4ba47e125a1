"""The graph index filled while a one-process build encodes (tpsearch.pipeline.prefill)."""

from __future__ import annotations

from dataclasses import replace

import faiss
import numpy as np
import pytest

from helpers import assert_same_hits, config, version_dir, write_corpus
from tpsearch import Searcher
from tpsearch.index import IndexPlan
from tpsearch.pipeline import assembler, build_index, prefill
from tpsearch.pipeline.prefill import GraphPrefill
from tpsearch.pipeline.runner import BuildParts
from tpsearch.pipeline.workdir import WorkDir
from tpsearch.pipeline.writer import read_vectors
from tpsearch.transform import TransformSettings

from test_follower import long_texts

HNSW = IndexPlan("HNSW32,Flat", "test")
OPTIONS = dict(index="hnsw", transform="center", lexical=True, mode="hybrid")


def _prefill(after: int = 50, expected: int = 0, plan=HNSW) -> GraphPrefill:
    return GraphPrefill(lambda n, dim: plan, expected, prefill.fitter(
        TransformSettings("center", embed_filter=None), lambda: None), after=after, threads=1)


def _vectors(n: int, seed: int = 0, shift: float = 0.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, 16)) + shift).astype(np.float32)


def test_graph_holds_every_vector_behind_the_prefix_fitted_transform():
    # A mean of 1,000 vectors from the same distribution moves ~0.03 of their spread.
    p, x = _prefill(after=1000), _vectors(3000)
    for part in np.array_split(x, 7):  # shards of ~429: the fit waits for the 1,000th vector
        p.add(part)
    got, why = p.take(x, lambda dim: HNSW, 3000)
    assert got is not None, why
    assert got.fitted_on == 1000 and "first 1000 passages" in why
    np.testing.assert_allclose(got.mean, x[:1000].mean(0), rtol=1e-5, atol=1e-6)
    inner = faiss.downcast_index(faiss.downcast_index(got.index).index)
    stored = inner.storage.reconstruct_n(0, inner.ntotal)
    np.testing.assert_allclose(stored, got.fitted.apply(x), atol=1e-6)  # all, in order


@pytest.mark.parametrize("case", ["too few", "moved", "other plan", "not a graph", "missing",
                                  "trained codes"])
def test_graph_is_not_kept_where_its_rules_say_no(case):
    x = _vectors(300)
    plan = {"not a graph": IndexPlan("Flat", "test"),
            "trained codes": IndexPlan("HNSW32,SQ8", "test")}.get(case, HNSW)
    p = _prefill(after=400 if case == "too few" else 50, plan=plan)
    for part in np.array_split(x, 6):
        p.add(part)
    sample = _vectors(200, seed=1, shift=1.0) if case == "moved" else x[::2]
    final = {"other plan": IndexPlan("IVF16,Flat", "test"), "trained codes": plan}.get(case, HNSW)
    got, why = p.take(sample, lambda dim: final, 301 if case == "missing" else 300)
    assert got is None
    assert {"too few": "encoding ended before 400", "moved": "mean moved",
            "other plan": "need IVF16,Flat", "not a graph": "not a graph",
            "missing": "holds 300 of 301", "trained codes": "trains its codes first"}[case] in why


def test_build_fills_the_graph_while_encoding(tmp_path, tiny_model_dir, monkeypatch):
    model = tiny_model_dir("llama")
    # 64 passages estimate the mean far worse than the 20,000 the rule is set for
    monkeypatch.setattr(prefill, "MAX_DRIFT", 1.0)
    corpus = write_corpus(tmp_path / "c.parquet", 240, texts=long_texts(240))
    cfg = config(tmp_path, model, corpus, **OPTIONS)
    res = build_index(cfg, keep_shards=True, parts=BuildParts(prefill_after=64))
    m = res.manifest
    assert "graph_while_encoding" in m.build.stage_seconds
    assert m.transform.fitted_on == 64 and "filled while encoding" in m.transform.note
    assert m.index.factory == "HNSW32,Flat"
    # The index holds every shard's vectors, in id-map order, behind the transform fitted on
    # the first 64 of them.
    raw = np.concatenate([read_vectors(p) for p in WorkDir(tmp_path / "index").complete_shards()])
    index = faiss.read_index(str(next(version_dir(res.out).rglob("index.faiss"))))
    outer = faiss.downcast_index(index)
    mean = faiss.vector_to_array(faiss.downcast_VectorTransform(outer.chain.at(0)).mean)
    np.testing.assert_allclose(mean, raw[:64].mean(0), rtol=1e-5, atol=1e-6)
    expected = raw
    for i in range(outer.chain.size()):
        expected = outer.chain.at(i).apply(expected)
    inner = faiss.downcast_index(outer.index)
    np.testing.assert_allclose(inner.storage.reconstruct_n(0, inner.ntotal), expected, atol=1e-5)
    hits = Searcher.open(res.out).search("alpha river stone", k=5, mode="hybrid")
    assert len(hits) == 5


def test_graph_moved_a_little_keeps_its_links_with_vectors_reseated():
    p, x = _prefill(after=100), _vectors(2000)
    x[1000:] += 0.5  # a corpus sorted by something the vectors see: the prefix's mean is off
    for part in np.array_split(x, 10):
        p.add(part)
    got, why = p.take(x[::4], lambda dim: HNSW, 2000)
    assert got is not None and got.reseat and prefill.MAX_DRIFT < got.drift, why
    assert "links" in why and "re-seated" in why
    uniform = prefill.fitter(TransformSettings("center", embed_filter=None), lambda: None)(x[::4])
    index, store = prefill.reseat(got, uniform)
    for part in np.array_split(x, 3):
        store(uniform.apply(part))
    inner = faiss.downcast_index(faiss.downcast_index(index).index)
    np.testing.assert_allclose(inner.storage.reconstruct_n(0, inner.ntotal), uniform.apply(x),
                               atol=1e-6)
    # searched through the old links, the re-seated graph finds the exact neighbours
    faiss.downcast_index(index.index).hnsw.efSearch = 256
    queries = x[::97]
    _, found = index.search(queries, 10)
    exact = uniform.apply(x) @ uniform.apply(queries).T
    want = np.argsort(-exact, axis=0)[:10].T
    assert np.mean([len(set(f) & set(w)) / 10 for f, w in zip(found, want)]) >= 0.95


@pytest.mark.parametrize("case", ["re-seated", "rebuilt", "re-seated, recall too low"])
def test_graph_whose_mean_moved_ends_as_without_the_prefill(case, tmp_path, tiny_model_dir,
                                                            monkeypatch):
    """However the graph filled while encoding ends (links kept and vectors re-seated, or
    rebuilt), the index holds the vectors, transform and hits of a build without the prefill."""
    model = tiny_model_dir("llama")
    corpus = write_corpus(tmp_path / "c.parquet", 160, texts=long_texts(160))
    monkeypatch.setattr(prefill, "MAX_DRIFT", -1.0)  # any move is too far to keep as it is
    if case == "rebuilt":
        monkeypatch.setattr(prefill, "MAX_RESEAT_DRIFT", -1.0)
    if case == "re-seated, recall too low":
        monkeypatch.setattr(assembler, "TARGET_RECALL", 1.01)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    refit = build_index(config(tmp_path / "a", model, corpus, **OPTIONS),
                        parts=BuildParts(prefill_after=64))
    plain = build_index(config(tmp_path / "b", model, corpus, **OPTIONS),
                        parts=BuildParts(prefill_after=0))
    assert "graph_while_encoding" in refit.manifest.build.stage_seconds
    assert "graph_while_encoding" not in plain.manifest.build.stage_seconds
    note = refit.manifest.transform.note
    assert {"re-seated": "kept its links, its vectors re-seated",
            "rebuilt": "graph rebuilt", "re-seated, recall too low": "re-seated, then rebuilt"
            }[case] in note
    assert replace(refit.manifest.transform, note=None) == replace(plain.manifest.transform,
                                                                   note=None)
    stored = []
    for res in (refit, plain):
        index = faiss.read_index(str(next(version_dir(res.out).rglob("index.faiss"))))
        inner = faiss.downcast_index(faiss.downcast_index(index).index)
        stored.append(inner.storage.reconstruct_n(0, inner.ntotal))
    np.testing.assert_allclose(stored[0], stored[1], atol=1e-5)
    a, b = Searcher.open(refit.out), Searcher.open(plain.out)
    for query in ("alpha river", "stone cloud north 7", "harbour light"):
        for mode in ("dense", "hybrid"):
            assert_same_hits(a.search(query, k=8, mode=mode, efSearch=512),
                             b.search(query, k=8, mode=mode, efSearch=512))


def test_graph_threads_leave_the_encoders_cores(monkeypatch):
    monkeypatch.setattr(prefill.os, "cpu_count", lambda: 16)
    assert prefill.spare_threads(16, on_gpu=False) == 1  # never none
    assert prefill.spare_threads(12, on_gpu=False) == 4
    assert prefill.spare_threads(16, on_gpu=True) == 14  # the GPU's feeder and the tokeniser

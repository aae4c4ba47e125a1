"""The query adapter: a linear map for query vectors fitted at build time on the corpus' own
first sentences (pseudo-queries) and their documents; documents are untouched."""

from __future__ import annotations

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest

from helpers import corpus_texts, version_dir, write_corpus
from tpsearch import IndexWriter, Searcher
from tpsearch.config import BuildConfig, ModelConfig
from tpsearch.errors import IndexDamaged
from tpsearch.passages import sentence_spans
from tpsearch.pipeline import build_index
from tpsearch.query_adapter import (AdapterSettings, affine_part, apply_query_map,
                                    document_targets, fit_adapter, input_space_map)
from tpsearch.transform import TransformSettings, fit_transform

DOCS = 120  # above the adapter's minimum of pseudo-queries (100)


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("kind", ["center", "whiten"])
def test_the_stored_map_becomes_w_behind_the_index_chain(kind):
    """What the searcher applies in the encoder's space is, after the index's own chain,
    exactly the fitted map of the chain's output (with the embed filter, and whitening)."""
    rng = np.random.default_rng(0)
    docs = rng.normal(size=(3000, 48)).astype(np.float32)
    unembedding = rng.normal(size=(300, 48)).astype(np.float32)
    fitted = fit_transform(docs, docs[:50] + 1, TransformSettings(kind, 24, None, (3, 2)),
                           unembedding)
    w = (np.eye(fitted.out_dim) + 0.2 * rng.normal(size=(fitted.out_dim,) * 2)).astype(np.float32)
    m = input_space_map(fitted.chain, w, 48)
    x = rng.normal(size=(7, 48)).astype(np.float32)
    lin, c = affine_part(fitted.chain, 48)
    np.testing.assert_allclose(fitted.apply(apply_query_map(x, m)), unit((x @ lin + c) @ w),
                               atol=1e-5)


def test_fitting_pulls_pseudo_queries_to_their_own_documents():
    rng = np.random.default_rng(1)
    targets = unit(rng.normal(size=(200, 16))).astype(np.float32)
    mix = np.eye(16) + 0.9 * rng.normal(size=(16, 16))  # queries: a distorted view of the docs
    queries = unit(targets @ mix + 0.05 * rng.normal(size=(200, 16))).astype(np.float32)

    def top1(q):
        return float(np.mean(np.argmax(q @ targets.T, axis=1) == np.arange(len(q))))

    w = fit_adapter(queries, targets)
    assert top1(unit(queries @ w)) > top1(queries) + 0.2
    stiff = fit_adapter(queries, targets, AdapterSettings(pull=1e4))
    np.testing.assert_allclose(stiff, np.eye(16), atol=1e-2)  # the pull keeps W near I
    with pytest.raises(ValueError, match="pseudo-queries"):
        fit_adapter(queries[:5], targets)
    # several pseudo-queries per document: labels name each one's document
    np.testing.assert_array_equal(fit_adapter(queries, targets, labels=np.arange(200)), w)
    twice = fit_adapter(np.vstack([queries, queries]), targets, labels=np.tile(np.arange(200), 2))
    assert top1(unit(queries @ twice)) > top1(queries) + 0.2
    with pytest.raises(ValueError, match="labels"):
        fit_adapter(queries, targets, labels=np.arange(5))


def _docs(n: int) -> list[str]:
    base = corpus_texts(2 * n)
    return [f"{base[2 * i]}. Unique{i} happens. {base[2 * i + 1]}." for i in range(n)]


def _build(tmp_path, model_dir, corpus, out: str, **kw):
    model = ModelConfig(model=str(model_dir), device="cpu", batch_size=8, dtype="float32")
    return build_index(BuildConfig(corpus=str(corpus), out=str(tmp_path / out), model=model,
                                   passage_tokens=64, passage_overlap=4, transform="center",
                                   shard_rows=32, **kw))


@pytest.fixture(scope="module")
def adapted(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("adapter")
    texts = _docs(DOCS)
    corpus = write_corpus(tmp / "c.parquet", DOCS, texts=texts)
    model = tiny_model_dir("llama")
    return (_build(tmp, model, corpus, "with"), _build(tmp, model, corpus, "without",
                                                       query_adapter=False), texts, tmp, model)


def test_a_build_fits_the_map_on_each_documents_first_sentences_and_passages(adapted):
    """The stored map is the one fitted on (pseudo-query under the query prompt, the unit mean
    of that document's passages through the index's chain) for every document, its
    pseudo-queries being the first sentence of its first passage and up to three sentences
    after it there: the pairs line up across shards (32 rows each), whatever the passages'
    count."""
    res, *_ = adapted
    t = res.manifest.transform
    s = Searcher.open(res.out)
    assert s.query_map.shape == (res.manifest.dim + 1, res.manifest.dim)
    ids = pq.read_table(version_dir(res.out) / "ids.parquet").to_pydict()
    owner = np.array([int(i.split("-")[1]) for i in ids["id"]])
    assert np.bincount(owner).max() > 1  # some documents have several passages
    raw = faiss.read_index(str(version_dir(res.out) / "index.faiss"))  # owns the chain
    index = faiss.downcast_index(raw)
    chain = [index.chain.at(i) for i in range(index.chain.size())]

    def through(x):
        x = np.ascontiguousarray(x, dtype=np.float32)
        for vt in chain:
            x = vt.apply(x)
        return x

    # the sentences of each document's first passage (a sentence over the passage budget is
    # cut at words: its first piece)
    heads = {o: x for o, n, x in zip(owner, ids["passage"], ids["text"]) if n == 0}
    spans = [list(sentence_spans(heads[i])) for i in range(DOCS)]
    firsts = [heads[i][a:b] for i in range(DOCS) for a, b in spans[i][:1]]
    more = [(heads[i][a:b], i) for i in range(DOCS) for a, b in spans[i][1:4]]
    assert 0 < len(more) <= 3 * DOCS and t.query_map_file == "query_map.npy"
    assert t.adapter_pairs == DOCS + len(more)
    texts = firsts + [x for x, _ in more]
    q = through(s.query_encoder.encode(texts) + s.query_shift)
    targets = document_targets(through(s.encoder.encode(ids["text"])), owner, DOCS)
    labels = np.r_[np.arange(DOCS), [i for _, i in more]]
    want = input_space_map(chain, fit_adapter(q, targets, labels=labels), res.manifest.dim)
    np.testing.assert_allclose(s.query_map, want, atol=2e-3)
    # the query shift is still the first sentences' own: the others do not move its mean
    shift = s.query_shift
    docs_mean = faiss.vector_to_array(faiss.downcast_VectorTransform(chain[0]).mean)
    np.testing.assert_allclose(shift, docs_mean - s.query_encoder.encode(firsts).mean(0),
                               atol=2e-4)


def test_the_map_changes_query_vectors_only(adapted):
    """Documents are stored the same with or without the adapter; dense search applies the
    map after the shift, and scores are those of the mapped query."""
    res, plain, texts, _, _ = adapted
    a, b = Searcher.open(res.out), Searcher.open(plain.out)
    assert b.query_map is None and plain.manifest.transform.query_map_file is None
    np.testing.assert_array_equal(a.index.reconstruct_n(0, a.index.ntotal),
                                  b.index.reconstruct_n(0, b.index.ntotal))
    np.testing.assert_array_equal(a.query_shift, b.query_shift)
    q = texts[7][:40]
    vec = a.encode_queries([q])
    mapped = apply_query_map(vec + a.query_shift, a.query_map)
    want, _ = b.index.search(np.ascontiguousarray(mapped), 5)
    got = [h.score for h in a.search(q, k=5, mode="dense", passages=True)]
    np.testing.assert_allclose(got, want[0], atol=1e-5)
    unmapped = [h.score for h in b.search(q, k=5, mode="dense", passages=True)]
    assert not np.allclose(got, unmapped, atol=1e-4)


def test_an_update_keeps_the_map_and_a_refit_fits_it_again(adapted):
    res, _, texts, tmp, model = adapted
    before = (version_dir(res.out) / "query_map.npy").read_bytes()
    corpus = write_corpus(tmp / "d.parquet", DOCS + 5, texts=texts + _docs(DOCS + 5)[DOCS:])
    update = _build(tmp, model, corpus, "with")
    assert update.manifest.update.added == 5
    assert update.manifest.transform.adapter_pairs == res.manifest.transform.adapter_pairs
    assert (version_dir(update.out) / "query_map.npy").read_bytes() == before
    assert len(Searcher.open(update.out).search("Unique122 happens", k=3, mode="dense")) == 3
    with IndexWriter(update.out, device="cpu", merge_policy=False) as w:  # a segment commit
        w.upsert([{"id": "seg-1", "text": "A segment about the harbour light."}])
        w.delete(["doc-3"])
        w.commit()
    after = Searcher.open(update.out)
    assert len(after.segments) == 2 and after.manifest.transform.query_map_file == "query_map.npy"
    assert (version_dir(update.out) / "query_map.npy").read_bytes() == before
    assert after.search("harbour light", k=1, mode="dense")[0].id
    refit = _build(tmp, model, corpus, "with", refit=True)
    t = refit.manifest.transform  # fitted again on the 125 documents' pseudo-queries
    assert t.query_samples == DOCS + 5 and t.adapter_pairs > t.query_samples
    assert (version_dir(refit.out) / "query_map.npy").read_bytes() != before


def test_few_documents_or_example_queries_fit_no_adapter(tmp_path, tiny_model_dir):
    model = tiny_model_dir("llama")
    small = write_corpus(tmp_path / "s.parquet", 40, texts=_docs(40))
    t = _build(tmp_path, model, small, "small").manifest.transform
    assert t.query_map_file is None and "query adapter skipped: 40 first sentences" in t.note
    examples = tmp_path / "q.txt"
    examples.write_text("where is the river\nwhat is alpha\n")
    corpus = write_corpus(tmp_path / "c.parquet", DOCS, texts=_docs(DOCS))
    t = _build(tmp_path, model, corpus, "examples", query_examples=str(examples)).manifest.transform
    assert t.query_map_file is None and t.query_stats.startswith("examples:")


def test_a_damaged_map_is_refused_naming_the_file(adapted, tmp_path):
    import shutil

    res, *_ = adapted
    copy = tmp_path / "copy"
    shutil.copytree(res.out, copy)
    path = version_dir(copy) / "query_map.npy"
    np.save(path, np.zeros((3, 3), np.float32))
    with pytest.raises(IndexDamaged, match="query_map.npy"):
        Searcher.open(copy, verify=False)

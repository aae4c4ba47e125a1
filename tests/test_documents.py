"""Retrieval on documents: passages, the fitted transform, lexical and hybrid search."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from helpers import version_dir, corpus_texts, write_corpus
from tpsearch import Searcher
from tpsearch.cli import main
from tpsearch.config import BuildConfig, ModelConfig
from tpsearch.embedfilter import kept_basis, parse_filter
from tpsearch.errors import ConfigMismatch, InputError
from tpsearch.fusion import DEFAULT_LEXICAL_WEIGHT, fuse, lexical_weight_for
from tpsearch.passages import PassageSettings, split_passages
from tpsearch.pipeline import build_index
from tpsearch.transform import TransformSettings, fit_transform, partial_whitening


def words(texts):
    return [len(t.split()) for t in texts]


# ---------------------------------------------------------------------------- splitting
DOC = ("The river rises in the hills. It runs north for forty miles! Does it flood? "
       "Farmers say it floods every spring.\nA second paragraph starts here. It has two sentences.")


def test_passages_respect_the_budget_and_map_back_exactly():
    ps = split_passages(DOC, 12, 0, words)
    assert len(ps) > 1
    for p in ps:
        assert DOC[p.start:p.end] == DOC[p.start:p.end].strip() and p.end > p.start
        assert len(DOC[p.start:p.end].split()) <= 12
    # Without overlap, the passages cover every word of the document once, in order.
    assert " ".join(DOC[p.start:p.end] for p in ps).split() == DOC.split()
    assert [p.number for p in ps] == list(range(len(ps)))


def test_overlap_repeats_whole_sentences_and_always_advances():
    ps = split_passages(DOC, 14, 6, words)
    for a, b in zip(ps, ps[1:]):
        assert b.start > a.start
        assert b.start < a.end  # the next passage starts inside the previous one
        assert DOC[b.start:a.end].strip()  # ... with the sentences they share
    assert ps[-1].end == len(DOC)


def test_one_huge_sentence_is_cut_without_tokenising_it_whole():
    text = " ".join(f"w{i}" for i in range(200_000))  # ~1.3 M characters, no punctuation
    seen = []

    def count(texts):
        seen.extend(len(t) for t in texts)
        return words(texts)

    ps = split_passages(text, 64, 8, count)
    assert max(seen) <= 64 * 6 + 1  # the counter only ever saw small pieces
    assert all(len(text[p.start:p.end].split()) <= 64 for p in ps)
    assert ps[0].start == 0 and ps[-1].end == len(text)


def test_a_word_longer_than_the_budget_is_cut_at_characters():
    text = "x" * 5000
    ps = split_passages(text, 10, 0, lambda ts: [len(t) for t in ts])
    assert "".join(text[p.start:p.end] for p in ps) == text
    assert all(p.end - p.start <= 10 for p in ps)


@pytest.mark.parametrize("text", ["", "   ", "\n\n\t", None])
def test_empty_documents_have_no_passages(text):
    assert split_passages(text, 16, 4, words) == []


def test_passage_settings_are_validated():
    with pytest.raises(InputError):
        PassageSettings(4, 0)
    with pytest.raises(InputError):
        PassageSettings(64, 64)


# ---------------------------------------------------------------------------- the index
def _config(tmp_path, model_dir, corpus, out="index", **kw):
    model = ModelConfig(model=str(model_dir), device="cpu", batch_size=8, dtype="float32")
    base = dict(passage_tokens=40, passage_overlap=8, transform="center", shard_rows=16)
    return BuildConfig(corpus=str(corpus), out=str(tmp_path / out), model=model, **{**base, **kw})


def long_docs(n):
    """Documents of several sentences, each with a word found nowhere else."""
    base = corpus_texts(n * 3)
    return [f"{base[3 * i]}. {base[3 * i + 1]}. Unique{i}word appears here. {base[3 * i + 2]}."
            for i in range(n)]


@pytest.fixture(scope="module")
def doc_index(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("docs")
    texts = long_docs(30)
    corpus = write_corpus(tmp / "c.parquet", 30, texts=texts,
                          title=[f"Title {i}" for i in range(30)])
    res = build_index(_config(tmp, tiny_model_dir("llama"), corpus, title_column="title"))
    return res, texts, tmp


def test_id_map_holds_passages_with_exact_spans(doc_index):
    res, texts, _ = doc_index
    m = res.manifest
    assert m.vectors > m.documents == 30 and m.passages.to_dict() == {"max_tokens": 40, "overlap": 8}
    t = pq.read_table(version_dir(res.out) / "ids.parquet").to_pydict()
    assert set(t) >= {"id", "passage", "start", "end", "corpus_row", "text"}
    for doc_id, row, a, b, text in zip(t["id"], t["corpus_row"], t["start"], t["end"], t["text"]):
        assert doc_id == f"doc-{row}" and texts[row][a:b] == text
    # passages of a document are numbered 0, 1, ... in order
    by_doc = {}
    for doc_id, p in zip(t["id"], t["passage"]):
        by_doc.setdefault(doc_id, []).append(p)
    assert all(ps == list(range(len(ps))) for ps in by_doc.values())


def test_search_returns_documents_scored_by_their_best_passage(doc_index):
    res, texts, _ = doc_index
    s = Searcher.open(res.out)
    enc = s.encoder
    hits = s.search(texts[4][:60], k=5, mode="dense")
    assert len(hits) == 5 and len({h.id for h in hits}) == 5
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    raw = s.search(texts[4][:60], k=50, mode="dense", passages=True)
    best = {}
    for h in raw:
        best.setdefault(h.id, h)
    assert [(h.id, h.passage) for h in hits] == [(h.id, h.passage) for h in list(best.values())[:5]]
    assert all(abs(h.score - best[h.id].score) < 1e-5 for h in hits)
    for h in hits:
        row = int(h.id.split("-")[1])
        assert texts[row][h.start:h.end] == h.text
    assert len(s.search("anything", k=1000, mode="dense")) == 30  # k is capped at the documents
    assert enc is s.encoder


def flattening(x, power=0.15, shrink=0.05):
    """Partial whitening by hand: ``V diag((l / l_max)^-power) V^T`` for the eigenpairs of the
    centred vectors' covariance, shrunk toward their mean variance."""
    x = np.asarray(x, np.float64)
    cov = x.T @ x / len(x)
    cov = (1 - shrink) * cov + shrink * np.trace(cov) / len(cov) * np.eye(len(cov))
    lam, v = np.linalg.eigh(cov)
    return (v * (lam / lam.max()) ** -power) @ v.T


def test_transform_is_applied_to_documents_and_queries(doc_index):
    """Scores must equal <l2((q - mu_q) M), l2((d - mu_d) M)> with mu_q = mu_d - shift and M
    the partial whitening of the centred passages: skipping the transform on either side, or
    the whitening, changes them."""
    res, texts, _ = doc_index
    s = Searcher.open(res.out)
    m = s.manifest
    assert m.transform.kind == "center" and m.transform.query_stats == "first-sentences"
    assert m.transform.whiten_power == 0.15
    assert s.query_shift is not None and float(np.abs(s.query_shift).max()) > 0
    t = pq.read_table(version_dir(res.out) / "ids.parquet").to_pydict()
    titles = [f"Title {r}" for r in t["corpus_row"]]
    docs = s.encoder.encode([f"{a}. {b}" for a, b in zip(titles, t["text"])])
    index = faiss.read_index(str(version_dir(res.out) / "index.faiss"))
    mu_d = faiss.vector_to_array(faiss.downcast_VectorTransform(
        faiss.downcast_index(index).chain.at(0)).mean)
    mu_q = mu_d - s.query_shift

    def l2(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    flat = flattening(docs - mu_d)
    q = s.query_encoder.encode(["a man is playing"])[0]
    want = np.sort(l2((docs - mu_d) @ flat) @ l2((q - mu_q) @ flat))[::-1][:5]
    got = [h.score for h in s.search("a man is playing", k=5, mode="dense", passages=True)]
    np.testing.assert_allclose(got, want, atol=1e-4)
    no_query_side = np.sort(l2((docs - mu_d) @ flat) @ l2((q - mu_d) @ flat))[::-1][:5]
    assert not np.allclose(got, no_query_side, atol=1e-4)
    no_doc_side = np.sort(docs @ l2(q - mu_q))[::-1][:5]
    assert not np.allclose(got, no_doc_side, atol=1e-4)
    not_flattened = np.sort(l2(docs - mu_d) @ l2(q - mu_q))[::-1][:5]
    assert not np.allclose(got, not_flattened, atol=1e-4)


def test_lexical_and_hybrid_modes(doc_index):
    res, _, _ = doc_index
    s = Searcher.open(res.out)
    assert res.manifest.lexical.rows == res.manifest.documents
    assert res.manifest.lexical.unit == "document"
    assert res.manifest.default_mode == "hybrid"
    for i in (3, 17):
        lex = s.search(f"unique{i}word", k=3, mode="lexical")
        assert lex[0].id == f"doc-{i}" and "Unique" in lex[0].text
        assert s.search(f"unique{i}word", k=3)[0].id == f"doc-{i}"  # hybrid, the default
    assert s.search("zzzz nothing matches", k=3, mode="lexical") == []
    with pytest.raises(InputError):
        s.search("x", mode="sparse")
    out = CliRunner().invoke(main, ["search", str(res.out), "unique5word", "--mode", "lexical",
                                    "-k", "2", "--json"])
    assert out.exit_code == 0, out.output
    hits = json.loads(out.output)["hits"]
    assert hits[0]["id"] == "doc-5" and hits[0]["start"] is not None
    out = CliRunner().invoke(main, ["search", str(res.out), "unique5word", "--passages", "--json"])
    assert out.exit_code == 0 and len(json.loads(out.output)["hits"]) == 10


def test_a_dense_only_index_refuses_lexical_mode(tmp_path, tiny_model_dir):
    corpus = write_corpus(tmp_path / "c.parquet", 12, texts=long_docs(12))
    res = build_index(_config(tmp_path, tiny_model_dir("llama"), corpus, lexical=False,
                              mode="dense", transform="none"))
    s = Searcher.open(res.out)
    assert s.manifest.lexical is None and s.query_shift is None
    assert len(s.search("river", k=3)) == 3
    with pytest.raises(InputError, match="no lexical index"):
        s.search("river", mode="hybrid")


def test_whitening_reduces_the_dimension_and_falls_back_when_too_few(tmp_path, tiny_model_dir):
    corpus = write_corpus(tmp_path / "c.parquet", 30, texts=long_docs(30))
    res = build_index(_config(tmp_path, tiny_model_dir("llama"), corpus, transform="whiten",
                              transform_dim=16))
    m = res.manifest
    assert m.transform.kind == "whiten" and m.transform.dim == 16 and m.dim == 64
    raw = faiss.read_index(str(version_dir(res.out) / "index.faiss"))
    index = faiss.downcast_index(raw)
    assert index.d == 64 and faiss.downcast_index(index.index).d == 16
    assert len(Searcher.open(res.out).search("river", k=3, mode="dense")) == 3
    small = write_corpus(tmp_path / "s.parquet", 4, texts=long_docs(4))
    res = build_index(_config(tmp_path, tiny_model_dir("llama"), small, out="w", transform="whiten",
                              transform_dim=64))
    assert res.manifest.vectors < 4 * 64
    assert res.manifest.transform.kind == "center" and "whitening" in res.manifest.transform.note


def test_example_queries_set_the_query_mean(tmp_path, tiny_model_dir):
    corpus = write_corpus(tmp_path / "c.parquet", 12, texts=long_docs(12))
    examples = tmp_path / "q.txt"
    examples.write_text("where does the river flood\nwho plays the guitar\n")
    res = build_index(_config(tmp_path, tiny_model_dir("llama"), corpus,
                              query_examples=str(examples)))
    assert res.manifest.transform.query_stats == f"examples:{examples}"
    assert res.manifest.transform.query_samples == 2


def test_other_transform_reuses_shards_and_other_passages_refuse(tmp_path, tiny_model_dir):
    llama = tiny_model_dir("llama")
    corpus = write_corpus(tmp_path / "c.parquet", 20, texts=long_docs(20))
    first = build_index(_config(tmp_path, llama, corpus), keep_shards=True)
    assert first.encoded_documents == 20
    again = build_index(_config(tmp_path, llama, corpus, transform="none"), overwrite=True,
                        keep_shards=True)
    assert again.encoded_documents == 0 and again.manifest.transform.kind == "none"
    with pytest.raises(ConfigMismatch, match="passages"):
        build_index(_config(tmp_path, llama, corpus, passage_tokens=60), overwrite=True)


def test_whole_documents_are_rebuilt_from_overlapping_passages():
    from tpsearch.pipeline.assembler import document_texts

    docs = [DOC, "One short document.", "x " * 300]
    t = {k: [] for k in ("row", "passage", "start", "end", "title", "text")}
    for row, doc in enumerate(docs):
        for p in split_passages(doc, 14, 6, words):
            for k, v in zip(t, (row, p.number, p.start, p.end, f"T{row}" if row else None,
                                doc[p.start:p.end])):
                t[k].append(v)
    rebuilt = document_texts(t)
    assert [" ".join(r.split()) for r in rebuilt] == [
        " ".join(DOC.split()), "T1. One short document.", "T2. " + " ".join(("x " * 300).split())]


def test_lexical_rows_can_be_passages(tmp_path, tiny_model_dir):
    corpus = write_corpus(tmp_path / "c.parquet", 12, texts=long_docs(12))
    res = build_index(_config(tmp_path, tiny_model_dir("llama"), corpus, lexical_unit="passage"))
    assert res.manifest.lexical.unit == "passage"
    assert res.manifest.lexical.rows == res.manifest.vectors
    s = Searcher.open(res.out)
    hit = s.search("unique7word", k=1, mode="lexical")[0]
    assert hit.id == "doc-7" and "Unique7word" in hit.text


def test_passage_lexical_rows_fill_k_documents(tmp_path, tiny_model_dir):
    """Every document shares the query word in several passages: k documents come back, not
    just the documents of the first k passages."""
    texts = [" ".join(f"River bank {i} sentence {j}." for j in range(12)) for i in range(8)]
    corpus = write_corpus(tmp_path / "c.parquet", 8, texts=texts)
    res = build_index(_config(tmp_path, tiny_model_dir("llama"), corpus, lexical_unit="passage"))
    assert res.manifest.vectors >= 16
    hits = Searcher.open(res.out).search("river", k=5, mode="lexical")
    assert len(hits) == 5 and len({h.id for h in hits}) == 5


# ---------------------------------------------------------------------------- EmbedFilter
def test_kept_basis_is_the_svd_edge_spectrum_complement():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((300, 24)) * np.linspace(3, 0.1, 24)  # distinct singular values
    basis = kept_basis(w, 3, 2)
    assert basis.shape == (24, 19)
    _, _, vt = np.linalg.svd(w, full_matrices=False)
    drop = np.concatenate([vt[:3], vt[-2:]])
    np.testing.assert_allclose(basis @ basis.T, np.eye(24) - drop.T @ drop, atol=1e-5)
    np.testing.assert_allclose(basis.T @ basis, np.eye(19), atol=1e-5)
    with pytest.raises(InputError):
        kept_basis(w, 20, 4)
    assert parse_filter("16:16") == (16, 16) and parse_filter("none") is None
    for bad in ("16", "a:b", "-1:2", "0:0x"):
        with pytest.raises(InputError):
            parse_filter(bad)


@pytest.mark.parametrize("power", [0.0, 0.3])
def test_embed_filter_in_the_index_equals_the_hand_computation(tmp_path, tiny_model_dir, power):
    """Index vectors = l2(B^T (x - mu) M), B the kept singular directions of the model's tied
    unembedding, M the partial whitening of the filtered vectors (identity at power 0); queries
    go through the same chain; the dimension shrinks by top + bottom."""
    texts = long_docs(20)
    corpus = write_corpus(tmp_path / "c.parquet", 20, texts=texts)
    res = build_index(_config(tmp_path, tiny_model_dir("gpt2"), corpus, embed_filter="4:3",
                              whiten_power=power))
    m = res.manifest
    assert m.transform.embed_filter == [4, 3] and m.transform.out_dim == m.dim - 7
    assert m.transform.whiten_power == power
    s = Searcher.open(res.out)
    t = pq.read_table(version_dir(res.out) / "ids.parquet").to_pydict()
    docs = s.encoder.encode(t["text"])
    raw = faiss.read_index(str(version_dir(res.out) / "index.faiss"))  # owns the chain
    mu_d = faiss.vector_to_array(faiss.downcast_VectorTransform(
        faiss.downcast_index(raw).chain.at(0)).mean)
    enc = s.encoder
    w = enc.model.get_input_embeddings().weight.detach().numpy()[: enc.model.config.vocab_size]
    w = np.delete(w, enc.placeholder_id, axis=0) if enc.placeholder_id < len(w) else w
    b = kept_basis(w, 4, 3)

    def l2(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    q = s.query_encoder.encode(["a man is playing"])[0]
    mu_q = mu_d - s.query_shift
    flat = flattening((docs - mu_d) @ b, power) if power else np.eye(b.shape[1])
    want = np.sort(l2((docs - mu_d) @ b @ flat) @ l2((q - mu_q) @ b @ flat))[::-1][:5]
    got = [h.score for h in s.search("a man is playing", k=5, mode="dense", passages=True)]
    np.testing.assert_allclose(got, want, atol=1e-4)
    unfiltered = np.sort(l2((docs - mu_d) @ flattening(docs - mu_d, power))
                         @ l2((q - mu_q) @ flattening(docs - mu_d, power)))[::-1][:5]
    assert not np.allclose(got, unfiltered, atol=1e-4)


def test_partial_whitening_flattens_the_spectrum_and_refuses_bad_powers():
    """The fitted map lifts the flat directions relative to the dominant one by the power law
    (their variance ratio shrinks from r to r^(1 - 2p)), keeps directions a small sample does
    not span finite, and is skipped, with a note, for vectors that do not vary."""
    rng = np.random.default_rng(0)
    scales = np.geomspace(10.0, 0.1, 16)  # variance ratio 1e4 between first and last
    x = rng.normal(size=(4000, 16)) * scales
    x -= x.mean(0)
    lt = partial_whitening(x, 0.25, shrink=0.0)
    y = lt.apply(np.ascontiguousarray(x, dtype=np.float32))
    var = np.linalg.eigvalsh(np.cov(y.T))
    assert var.max() / var.min() == pytest.approx(1e4 ** 0.5, rel=0.15)
    few = rng.normal(size=(5, 16))  # rank 5 of 16: the shrinkage keeps the rest finite
    few_lt = partial_whitening(few - few.mean(0), 0.15)  # held: .A is a view into it
    m = faiss.vector_to_array(few_lt.A)
    assert np.isfinite(m).all() and np.abs(m).max() < 10
    assert partial_whitening(np.zeros((10, 16)), 0.15) is None
    fitted = fit_transform(np.ones((10, 16), np.float32), None, TransformSettings())
    assert fitted.whiten_power == 0.0 and "partial whitening skipped" in fitted.note
    for bad in (-0.1, 0.6):
        with pytest.raises(InputError, match="whiten power"):
            TransformSettings(whiten_power=bad)


def test_embed_filter_is_skipped_and_said_without_an_output_head(tmp_path, tiny_model_dir):
    corpus = write_corpus(tmp_path / "c.parquet", 20, texts=long_docs(20))
    res = build_index(_config(tmp_path, tiny_model_dir("llama"), corpus, embed_filter="4:4"))
    t = res.manifest.transform
    assert t.embed_filter is None and t.out_dim == res.manifest.dim
    assert "embed filter skipped" in t.note


def test_lexical_weight_by_document_length():
    """The dev sets' mean BM25 lengths give the weights chosen on them; shorter texts less
    lexical weight, within 0.25..0.65; an unknown length the fixed default."""
    assert [lexical_weight_for(x) for x in (6.65, 56.26, 184.9)] == [0.26, 0.49, 0.61]
    grid = [lexical_weight_for(x) for x in np.geomspace(1, 1e6, 50)]
    assert grid == sorted(grid) and grid[0] == 0.25 and grid[-1] == 0.65
    for unknown in (None, 0.0, float("nan")):
        assert lexical_weight_for(unknown) == DEFAULT_LEXICAL_WEIGHT


def test_zscore_fusion_by_hand():
    dense = [(0, 0, 0.9), (1, 1, 0.5), (2, 2, 0.4)]
    lexical = [(2, 2, 12.0), (3, 3, 3.0)]
    got = {d: s for d, _, s in fuse(dense, lexical, "zscore", 0.6)}
    zd = (np.array([0.9, 0.5, 0.4]) - 0.6) / np.std([0.9, 0.5, 0.4])
    lex = np.array([12.0, 3.0, 0.0])  # padded with a zero to the dense list's length
    zl = (lex - lex.mean()) / lex.std()
    want = {0: 0.4 * zd[0] + 0.6 * zl[2], 1: 0.4 * zd[1] + 0.6 * zl[2],
            2: 0.4 * zd[2] + 0.6 * zl[0], 3: 0.4 * zd.min() + 0.6 * zl[1]}
    assert got == pytest.approx(want)
    assert [d for d, _, _ in fuse(dense, lexical, "zscore", 0.6)] == sorted(want, key=lambda d: -want[d])
    # one lexical match among many dense candidates stands out (not its list's mean)
    many = [(i, i, 1.0 - 0.01 * i) for i in range(30)]
    assert fuse(many, [(17, 17, 2.0)], "zscore", 0.6)[0][0] == 17

"""The decoder reranker: query likelihood against a hand computation, batching independence,
the mixed order, and Searcher/CLI wiring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from helpers import config, corpus_texts, write_corpus
from tpsearch import Searcher, TPEncoder
from tpsearch.cli import main
from tpsearch.errors import InputError
from tpsearch.pipeline import build_index
from tpsearch.rerank import (QueryLikelihoodScorer, RerankSettings, output_head, rerank_order,
                             scaled)


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return TPEncoder.from_pretrained(str(tiny_model_dir("gpt2")), device="cpu", dtype="float32")


def hand_score(enc: TPEncoder, template: str, query: str, passage: str) -> float:
    """Mean log p(query tokens | template(passage)), one unpadded row, written out."""
    tok = enc.tokenizer
    head, tail = template.split("{passage}")
    prefix = (tok(head)["input_ids"] + tok(passage, add_special_tokens=False)["input_ids"]
              + tok(tail, add_special_tokens=False)["input_ids"])
    q = tok(" " + query, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prefix + q])
    with torch.no_grad():
        hidden = enc.model(input_ids=ids).last_hidden_state[0]
    vocab = enc.model.config.vocab_size
    logits = hidden @ enc.model.get_input_embeddings().weight[:vocab].T
    if enc.placeholder_id is not None and enc.placeholder_id < vocab:
        logits[:, enc.placeholder_id] = float("-inf")
    logp = torch.log_softmax(logits, dim=-1)
    n = len(prefix)
    return float(np.mean([logp[n - 1 + i, t].item() for i, t in enumerate(q)]))


def test_score_is_the_mean_log_probability_of_the_query(encoder):
    s = QueryLikelihoodScorer(encoder.model, encoder.tokenizer, exclude_ids=[encoder.placeholder_id])
    passages = ["a man plays a guitar on the stage", "rain falls on the quiet river"]
    got = s.score("who plays music", passages)
    want = [hand_score(encoder, s.settings.template, "who plays music", p) for p in passages]
    assert got == pytest.approx(want, abs=1e-4)
    assert got[0] != pytest.approx(got[1], abs=1e-6)  # the passage matters


def test_scores_do_not_depend_on_batch_mates_or_batch_size(encoder):
    texts = corpus_texts(9)
    s = QueryLikelihoodScorer(encoder.model, encoder.tokenizer)
    together = s.score("a quiet evening", texts)
    alone = [s.score("a quiet evening", [t])[0] for t in texts]
    small = QueryLikelihoodScorer(encoder.model, encoder.tokenizer,
                                  RerankSettings(max_batch_tokens=64)).score("a quiet evening", texts)
    assert together == pytest.approx(alone, abs=1e-4)
    assert together == pytest.approx(small, abs=1e-4)


def test_passage_is_cut_but_the_query_never_is(encoder):
    s = QueryLikelihoodScorer(encoder.model, encoder.tokenizer, RerankSettings(passage_tokens=8))
    rows, m = s.rows("the whole query stays", ["word " * 200])
    q = encoder.tokenizer(" the whole query stays", add_special_tokens=False)["input_ids"]
    head, tail = s.settings.template.split("{passage}")
    fixed = len(encoder.tokenizer(head)["input_ids"]) + len(
        encoder.tokenizer(tail, add_special_tokens=False)["input_ids"])
    assert rows[0][-m:] == q and len(rows[0]) == fixed + 8 + m


def test_mixed_order_by_hand():
    first = np.array([3.0, 2.0, 1.0, 0.0])
    like = np.array([-4.0, -1.0, -3.0, -2.0])
    assert list(rerank_order(first, like, 0.0)[0]) == [0, 1, 2, 3]
    assert list(rerank_order(first, like, 1.0)[0]) == [1, 3, 2, 0]
    order, mixed = rerank_order(first, like, 0.5)
    want = 0.5 * scaled(first) + 0.5 * scaled(like)
    assert list(order) == list(np.argsort(-want, kind="stable"))
    assert mixed == pytest.approx(sorted(want, reverse=True))


def test_untied_base_model_without_head_is_refused(tiny_model_dir):
    enc = TPEncoder.from_pretrained(str(tiny_model_dir("llama")), device="cpu", dtype="float32")
    assert not enc.model.config.tie_word_embeddings
    with pytest.raises(InputError, match="output head"):
        output_head(enc.model)


def test_an_untied_models_head_is_read_from_its_checkpoint(tmp_path):
    """A causal LM's checkpoint with an untied head (most 7B models; the bundled 1.5B Qwen's
    GGUF) loads as a bare decoder, and its head comes from the checkpoint: reranking and
    EmbedFilter have it (a build's transform is filtered), where they had nothing before."""
    from safetensors import safe_open
    from tpsearch.embedfilter import unembedding_of
    from tpsearch.loading import find_output_head
    from tpsearch.testing import save_tiny_model

    where = save_tiny_model(tmp_path / "m", "llama", corpus_texts(40), with_head=True)
    path, key = find_output_head(where)
    with safe_open(str(path), "pt") as f:
        saved = f.get_tensor(key)
    enc = TPEncoder.from_pretrained(str(where), device="cpu", dtype="float32")
    assert not enc.model.config.tie_word_embeddings
    assert enc.model.get_output_embeddings() is None  # the bare decoder
    assert torch.equal(output_head(enc.model), saved)
    assert not torch.equal(saved, enc.model.get_input_embeddings().weight)
    assert unembedding_of(enc.model, enc.placeholder_row).shape == tuple(saved.shape)

    corpus = write_corpus(tmp_path / "c.parquet", 30)
    res = build_index(config(tmp_path, where, corpus, transform="center", embed_filter="4:4"))
    t = res.manifest.transform
    assert t.embed_filter == [4, 4] and t.out_dim == res.manifest.dim - 8
    assert not (t.note and "embed filter skipped" in t.note)
    assert Searcher.open(res.out, device="cpu").search("a query about cats", k=3, rerank=3)


def test_bad_template_and_weight_are_refused():
    with pytest.raises(InputError, match="passage"):
        RerankSettings(template="no slot")
    with pytest.raises(InputError, match="0..1"):
        RerankSettings(weight=1.5)


@pytest.fixture(scope="module")
def built(built_index):
    out, _ = built_index("gpt2", 40)
    return out, corpus_texts(40)


def test_searcher_reranks_the_top_n_by_the_mixed_score(built):
    out, texts = built
    s = Searcher.open(out, device="cpu")
    query = texts[7][:30]
    first = s.search(query, k=12)
    got = s.search(query, k=12, rerank=6)
    top = first[:6]
    like = s.reranker.score(query, [h.text for h in top])
    order, mixed = rerank_order(np.array([h.score for h in top]), like, s.rerank_settings.weight)
    assert [h.id for h in got[:6]] == [top[j].id for j in order]
    assert [h.score for h in got[:6]] == pytest.approx(list(mixed))
    assert [h.id for h in got[6:]] == [h.id for h in first[6:]]  # past N: first-stage order
    assert all(a.score >= b.score for a, b in zip(got, got[1:]))
    assert [h.rank for h in got] == list(range(1, 13))
    # k smaller than the depth: the top k of the reranked list
    assert [h.id for h in s.search(query, k=3, rerank=6)] == [h.id for h in got[:3]]
    assert [h.id for h in s.search(query, k=12, rerank=0)] == [h.id for h in first]


def test_rerank_in_batch_equals_one_at_a_time(built):
    out, texts = built
    s = Searcher.open(out, device="cpu")
    qs = [texts[3][:25], "a guitar in the kitchen", texts[30][:40]]
    batch = s.search_batch(qs, k=5, rerank=8)
    single = [s.search(q, k=5, rerank=8) for q in qs]
    assert [[h.id for h in hs] for hs in batch] == [[h.id for h in hs] for hs in single]


def test_rerank_requests_are_checked(built, tmp_path, tiny_model_dir):
    out, texts = built
    s = Searcher.open(out, device="cpu")
    for bad in (-1, 10**6, 2.5, True, "5"):
        with pytest.raises(InputError, match="rerank"):
            s.search("x", rerank=bad)
    corpus = write_corpus(tmp_path / "c.parquet", 20, texts=corpus_texts(20))
    res = build_index(config(tmp_path, tiny_model_dir("gpt2"), corpus, store_text=False))
    with pytest.raises(InputError, match="no-store-text"):
        Searcher.open(res.out, device="cpu").search("x", rerank=5)


def test_cli_rerank(built):
    out, texts = built
    r = CliRunner().invoke(main, ["search", str(out), texts[2][:30], "-k", "3", "--rerank", "5",
                                  "--device", "cpu"])
    assert r.exit_code == 0, r.output
    want = Searcher.open(out, device="cpu").search(texts[2][:30], k=3, rerank=5)
    assert [line.split()[2].split("#")[0] for line in r.output.splitlines()[1:4]] == [h.id for h in want]
    bad = CliRunner().invoke(main, ["search", str(out), "x", "--rerank", "-2", "--device", "cpu"])
    assert bad.exit_code != 0 and "rerank" in bad.output

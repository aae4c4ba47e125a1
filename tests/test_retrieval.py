"""Retrieval metrics, the BEIR reader, pooling modes and query prompts end to end."""

from __future__ import annotations

import json
from dataclasses import replace
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import version_dir
from tpsearch import Searcher
from tpsearch.cli import main
from tpsearch.config import BuildConfig, ModelConfig
from tpsearch.errors import InputError
from tpsearch.eval.retrieval import compare_retrieval, evaluate_retrieval, load_beir, mrr_at_k, ndcg_at_k, recall_at_k, score_run

BEIR = Path(__file__).parent / "data" / "beir_mini"


def test_metrics_on_hand_computed_rankings():
    rels = {"a": 1, "b": 2, "z": 0}
    ranked = ["x", "b", "y", "a"]
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at_k(ranked, rels, 10) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(["b", "a"], rels, 10) == pytest.approx(1.0)
    assert ndcg_at_k(ranked, rels, 1) == 0.0
    assert mrr_at_k(ranked, rels, 10) == pytest.approx(0.5)
    assert mrr_at_k(ranked, rels, 1) == 0.0
    assert recall_at_k(ranked, rels, 1) == 0.0
    assert recall_at_k(ranked, rels, 2) == 0.5
    assert recall_at_k(ranked, rels, 10) == 1.0
    run = {"q1": ["b", "a"], "q2": ["c"], "q3": ["x"]}
    qrels = {"q1": rels, "q2": {"c": 1, "d": 1}, "q3": {"x": 0}}  # q3 has nothing relevant
    m = score_run(run, qrels)
    assert m["recall@1"] == pytest.approx((0.5 + 0.5) / 2)
    assert m["mrr@10"] == pytest.approx(1.0)


def test_beir_reader(tmp_path):
    data = load_beir(BEIR)
    assert len(data.corpus) == 25 and len(data.queries) == 10
    assert data.qrels["q4"] == {"d13": 1, "d14": 2}
    assert data.qrels["q10"] == {"d9": 0}
    copy = tmp_path / "b"
    shutil.copytree(BEIR, copy)
    with pytest.raises(InputError, match="no qrels for split 'dev'"):
        load_beir(copy, "dev")
    (copy / "queries.jsonl").unlink()
    with pytest.raises(InputError, match="queries.jsonl: missing"):
        load_beir(copy)


def build_config(model_dir, **kw) -> BuildConfig:
    """The evaluation's settings on a tiny model: whole documents unless told otherwise."""
    base = dict(passage_tokens=0, transform="none", lexical=False, mode="dense", title_column="title")
    model = {k: kw.pop(k) for k in ("pooling", "query_prompt", "tp_layers") if k in kw}
    return BuildConfig(model=ModelConfig(model=str(model_dir), device="cpu", dtype="float32", **model),
                       **{**base, **kw})


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_retrieval_end_to_end_per_pooling(tmp_path, tiny_model_dir, pooling):
    out = tmp_path / "idx"
    res = evaluate_retrieval(BEIR, build_config(tiny_model_dir("qwen2"), pooling=pooling),
                             index_dir=out)
    assert res["queries"] == 9 and res["documents"] == 25  # q10 has no relevant document
    assert res["settings"]["pooling"] == pooling
    # The metrics are those of the Searcher's own ranking of the judged queries, scored by hand.
    data = load_beir(BEIR)
    judged = [q for q, rels in data.qrels.items() if any(r > 0 for r in rels.values())]
    s = Searcher.open(out, device="cpu")
    hits = s.search_batch([data.queries[q] for q in judged], k=25)
    run = {q: [h.id for h in hs] for q, hs in zip(judged, hits)}
    assert res["metrics"] == pytest.approx(score_run(run, data.qrels), abs=1e-12)
    first = [run[q][0] for q in judged]
    assert res["metrics"]["recall@1"] == pytest.approx(sum(
        (data.qrels[q].get(d, 0) > 0) / sum(r > 0 for r in data.qrels[q].values())
        for q, d in zip(judged, first)) / len(judged))


def test_bm25_finds_the_judged_documents_of_the_keyword_queries(tiny_model_dir):
    res = evaluate_retrieval(BEIR, build_config(tiny_model_dir("qwen2"), lexical=True,
                                                mode="lexical"))
    assert res["metrics"]["mrr@10"] == 1.0 and res["metrics"]["recall@10"] == 1.0


def test_pooling_and_query_prompt_recorded_and_honoured(tmp_path, tiny_model_dir):
    out = tmp_path / "idx"
    evaluate_retrieval(BEIR, build_config(tiny_model_dir("llama"), pooling="mean",
                                          query_prompt="pcot"), index_dir=out)
    m = json.loads((version_dir(out) / "manifest.json").read_text())
    assert m["encoder"]["pooling"] == "mean" and m["query_prompt"] == "pcot"
    assert m["query_templates"][0].startswith("After thinking step by step")
    s = Searcher.open(out, device="cpu")
    assert s.encoder.pooling == "mean" and s.query_encoder.pooling == "mean"
    assert s.query_encoder.prompt.name == "pcot" and s.encoder.prompt.name == "prompteol"
    q = s.embed_query("What moves on rails?")
    assert q == pytest.approx(s.query_encoder.encode(["What moves on rails?"])[0].tolist(), abs=1e-6)
    assert q != pytest.approx(s.embed_documents(["What moves on rails?"])[0], abs=1e-3)


def test_corpus_without_titles(tmp_path, tiny_model_dir):
    copy = tmp_path / "b"
    shutil.copytree(BEIR, copy)
    lines = [json.loads(x) for x in (copy / "corpus.jsonl").read_text().splitlines()]
    (copy / "corpus.jsonl").write_text("".join(json.dumps({**d, "title": ""}) + "\n" for d in lines))
    res = evaluate_retrieval(copy, build_config(tiny_model_dir("llama")))
    assert res["documents"] == 24  # the one document with neither title nor text is skipped


def test_eval_retrieval_cli(tiny_model_dir):
    r = CliRunner().invoke(main, ["eval", "retrieval", "--data-dir", str(BEIR), "--model",
                                  str(tiny_model_dir("llama")), "--device", "cpu", "--json", "--no-tp",
                                  "--search-mode", "dense,lexical,hybrid", "--passage-tokens", "32"])
    assert r.exit_code == 0, r.output
    runs = json.loads(r.output.strip().splitlines()[-1])["runs"]
    assert [x["mode"] for x in runs] == ["dense", "lexical", "hybrid"]
    for res in runs:
        assert set(res["metrics"]) == {"ndcg@10", "mrr@10", "recall@1", "recall@10", "recall@100"}
        assert res["settings"]["tp_layers"] is None and res["documents"] == 25
        assert res["passages"] > 25
    r = CliRunner().invoke(main, ["eval", "retrieval", "--data-dir", str(BEIR / "nope")])
    assert r.exit_code == 1 and "corpus.jsonl: missing" in r.output


COMPARED_LABELS = ["whole document, dense", "whole document, lexical",
                   "whole document + transform, dense", "passages, dense",
                   "passages + centering (0.3 defaults), dense",
                   "passages + centering (0.3 defaults), lexical",
                   "passages + centering (0.3 defaults), hybrid",
                   "+ EmbedFilter, dense", "+ question prompt for queries, dense",
                   "+ query adapter, dense", "+ partial whitening, dense",
                   "defaults without the query adapter, dense",
                   "defaults without the query adapter, hybrid",
                   "defaults without partial whitening (0.11's), dense",
                   "defaults without partial whitening (0.11's), hybrid",
                   "defaults, lexical weight 0.5 (0.10's), hybrid",
                   "defaults (all of the above, z-score fusion), dense",
                   "defaults (all of the above, z-score fusion), hybrid"]
RERANKED = "defaults + decoder rerank, hybrid + rerank 10"
VANILLA = ["defaults without TP (vanilla), dense", "defaults without TP (vanilla), hybrid"]


def test_compare_equals_separate_runs(tiny_model_dir):
    model_dir = tiny_model_dir("gpt2")  # tied embeddings: it can rerank
    base = BuildConfig(model=ModelConfig(model=str(model_dir), device="cpu", dtype="float32"),
                       passage_tokens=32, passage_overlap=8, title_column="title",
                       store_text=False, index="flat", embed_filter="4:4")
    runs = compare_retrieval(BEIR, base)
    assert [r["label"] for r in runs] == COMPARED_LABELS + [RERANKED] + VANILLA
    assert [r["settings"]["transform"] for r in runs] == [
        "none", "none", "center", "none"] + ["center"] * 17
    assert [r["settings"]["embed_filter"] for r in runs] == [None] * 7 + [[4, 4]] + [None] * 3 + [[4, 4]] * 10
    # partial whitening: alone on 0.3's defaults, in the defaults, and the row without it
    assert [r["settings"]["whiten_power"] for r in runs] == (
        [0.0] * 2 + [0.0] * 8 + [0.15] + [0.15] * 2 + [0.0] * 2 + [0.15] * 6)
    assert [r["settings"]["fusion"]["method"] for r in runs if r["mode"] != "dense" and
            r["mode"] != "lexical"] == ["minmax"] + ["zscore"] * 6
    weights = [r["settings"]["fusion"]["lexical_weight"] for r in runs if r["mode"] == "hybrid"]
    # 0.3's, the defaults' (by document length: this corpus' short texts get less than 0.10's
    # fixed 0.5), 0.10's
    assert weights[0] == 0.7 and weights[3] == 0.5
    assert weights[1] == weights[2] == weights[4] == weights[5] and 0.25 <= weights[1] < 0.35
    assert [r["settings"]["tp_layers"] is None for r in runs] == [False] * 19 + [True] * 2
    assert runs[0]["passages"] == 25 and runs[3]["passages"] > 25
    alone = {
        "whole document, dense": evaluate_retrieval(
            BEIR, replace(base, passage_tokens=0, transform="none"), modes=["dense"]),
        "defaults (all of the above, z-score fusion), hybrid": evaluate_retrieval(BEIR, base),
        RERANKED: evaluate_retrieval(BEIR, base, rerank=10),
        VANILLA[1]: evaluate_retrieval(BEIR, replace(base, model=replace(base.model,
                                                                         tp_layers="none"))),
    }
    for r in runs:
        if r["label"] in alone:
            assert r["metrics"] == pytest.approx(alone[r["label"]]["metrics"], abs=1e-9), r["label"]
    # each row against the defaults in its own mode, query by query (no defaults row is
    # lexical or reranked: those rows have nothing to be compared with)
    by_label = {r["label"]: r for r in runs}
    for r in runs:
        assert np.mean(list(r["per_query_ndcg@10"].values())) == pytest.approx(
            r["metrics"]["ndcg@10"], abs=1e-6)
        vs = r["vs_reference"]
        if (r["label"].startswith("defaults (all of the above") or r["label"] == RERANKED
                or r["mode"] == "lexical"):
            assert vs is None, r["label"]
            continue
        ref = by_label[vs["reference"]]
        assert ref["mode"] == r["mode"] and ref["label"].startswith("defaults (all of the above")
        assert vs["mean"] == pytest.approx(r["metrics"]["ndcg@10"] - ref["metrics"]["ndcg@10"],
                                           abs=1e-5)
        assert vs["low"] <= vs["mean"] + 1e-12 and vs["mean"] <= vs["high"] + 1e-12
        assert 0 < vs["p_value"] <= 1


def test_eval_retrieval_compare_cli(tiny_model_dir):
    args = ["eval", "retrieval", "--data-dir", str(BEIR), "--model", str(tiny_model_dir("llama")),
            "--device", "cpu", "--compare", "--passage-tokens", "32"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    lines = r.stdout.strip().splitlines()  # the progress bars go to stderr
    assert "9 queries, 25 documents" in lines[0] and "nDCG@10" in lines[1]
    rows, footer = lines[2:-1], lines[-1]
    assert [x.split("  ")[0] for x in rows] == COMPARED_LABELS + VANILLA  # no head: no rerank
    # every row but the defaults' says how far it is from them, with an interval and a p-value
    assert "vs defaults [95% CI], p" in lines[1] and footer.startswith("vs defaults:")
    for x in rows:
        paired = re.search(r"[+-]\d+\.\d\d \[[+-]\d+\.\d\d, [+-]\d+\.\d\d\] p \d\.\d{3}$", x)
        assert bool(paired) != (x.startswith("defaults (all of the above")
                                or x.split("  ")[0].endswith(", lexical")), x
    r = CliRunner().invoke(main, args + ["--json"])
    assert len(json.loads(r.stdout)["runs"]) == 20
    r = CliRunner().invoke(main, args + ["--search-mode", "dense"])
    assert r.exit_code == 2 and "drop --index-dir and --search-mode" in r.output

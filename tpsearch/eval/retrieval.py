"""Retrieval evaluation over the BEIR layout, through the real pipeline and Searcher.

``DIR/corpus.jsonl`` (``_id``, ``title``, ``text``), ``DIR/queries.jsonl`` (``_id``, ``text``) and
``DIR/qrels/<split>.tsv`` (header ``query-id corpus-id score``). Queries without a relevant
document in the qrels are left out (as BEIR does); metrics are averaged over the rest.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from ..config import BuildConfig
from ..errors import InputError
from ..rerank import DEFAULT_DEPTH as DEFAULT_RERANK

if TYPE_CHECKING:
    from ..encoder import TPEncoder


@dataclass
class BeirData:
    corpus: list[dict]  # {"_id", "title", "text"}
    queries: dict[str, str]  # query id -> text
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: relevance}


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise InputError(f"{path}: missing (BEIR layout needs corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv)")
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise InputError(f"{path}:{lineno}: not JSON ({exc})") from None
        if "_id" not in obj:
            raise InputError(f"{path}:{lineno}: no '_id'")
        rows.append(obj)
    return rows


def load_beir(data_dir: str | Path, split: str = "test") -> BeirData:
    d = Path(data_dir)
    corpus = _read_jsonl(d / "corpus.jsonl")
    queries = {str(q["_id"]): q.get("text", "") for q in _read_jsonl(d / "queries.jsonl")}
    qrels_path = d / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        raise InputError(f"{qrels_path}: missing (no qrels for split {split!r})")
    qrels: dict[str, dict[str, int]] = {}
    lines = qrels_path.read_text(encoding="utf8").splitlines()
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < 3:
            raise InputError(f"{qrels_path}:{lineno}: expected query-id, corpus-id, score")
        qrels.setdefault(cols[0], {})[cols[1]] = int(float(cols[2]))
    unknown = [q for q in qrels if q not in queries]
    if unknown:
        raise InputError(f"{qrels_path}: query ids not in queries.jsonl, e.g. {unknown[:3]}")
    return BeirData(corpus, queries, qrels)


def ndcg_at_k(ranked: Sequence[str], rels: dict[str, int], k: int = 10) -> float:
    """nDCG@k with graded gains rel / log2(rank + 1)."""
    dcg = sum(rels.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranked[:k]))
    ideal = sorted((r for r in rels.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def mrr_at_k(ranked: Sequence[str], rels: dict[str, int], k: int = 10) -> float:
    for i, doc in enumerate(ranked[:k]):
        if rels.get(doc, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def recall_at_k(ranked: Sequence[str], rels: dict[str, int], k: int) -> float:
    relevant = {d for d, r in rels.items() if r > 0}
    return len(relevant & set(ranked[:k])) / len(relevant) if relevant else 0.0


def score_run(run: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    """Mean metrics over the queries that have a relevant document."""
    ndcg = per_query_ndcg(run, qrels)
    if not ndcg:
        raise InputError("no query has a relevant document in the qrels")
    metrics = {"ndcg@10": list(ndcg.values()), "mrr@10": [], "recall@1": [], "recall@10": [],
               "recall@100": []}
    for q in ndcg:
        ranked, rels = run.get(q, []), qrels[q]
        metrics["mrr@10"].append(mrr_at_k(ranked, rels, 10))
        for k in (1, 10, 100):
            metrics[f"recall@{k}"].append(recall_at_k(ranked, rels, k))
    return {name: sum(v) / len(v) for name, v in metrics.items()}


def per_query_ndcg(run: dict[str, list[str]], qrels: dict[str, dict[str, int]],
                   k: int = 10) -> dict[str, float]:
    """nDCG@k of each query that has a relevant document (what :func:`score_run` averages),
    for paired tests between runs (:mod:`tpsearch.eval.significance`)."""
    return {q: ndcg_at_k(run.get(q, []), rels, k) for q, rels in qrels.items()
            if any(r > 0 for r in rels.values())}


def corpus_to_parquet(data: BeirData, path: Path) -> Path:
    pq.write_table(pa.table({
        "id": pa.array([str(d["_id"]) for d in data.corpus], pa.string()),
        "title": pa.array([d.get("title") or None for d in data.corpus], pa.string()),
        "text": pa.array([d.get("text") for d in data.corpus], pa.string()),
    }), path)
    return path


def evaluate_retrieval(data_dir: str | Path, build: BuildConfig, split: str = "test",
                       index_dir: str | Path | None = None, show_progress: bool = False,
                       encoder: "TPEncoder | None" = None, modes: Sequence[str] | None = None,
                       rerank: int = 0) -> dict:
    """Build an index of the corpus with the pipeline (``build``'s settings; its corpus and out
    are filled in), search every judged query with the Searcher in each of ``modes`` (default:
    the index's default mode), and score the rankings.

    ``encoder``, if given, is used instead of loading ``build.model`` (its settings must be the
    model config's: they are what the manifest records and the Searcher checks)."""
    data = load_beir(data_dir, split)
    with tempfile.TemporaryDirectory(prefix="tpsearch-beir-") as tmp:
        corpus = corpus_to_parquet(data, Path(tmp) / "corpus.parquet")
        out = Path(index_dir) if index_dir else Path(tmp) / "index"
        cfg = replace(build, corpus=str(corpus), out=str(out),
                      store_text=build.store_text or bool(rerank))  # reranking reads passages
        runs = _build_and_search(data, cfg, encoder, show_progress, modes, keep_shards=False,
                                 rerank=rerank)
    return runs[0] if modes is None or len(modes) == 1 else {"runs": runs}


def _build_and_search(data: BeirData, build: BuildConfig, encoder, show_progress: bool,
                      modes: Sequence[str] | None, keep_shards: bool, rerank: int = 0) -> list[dict]:
    from ..pipeline import build_index
    from ..searcher import Searcher

    judged = [q for q, rels in data.qrels.items() if any(r > 0 for r in rels.values())]
    result = build_index(build, encoder=encoder, show_progress=show_progress, overwrite=True,
                         keep_shards=keep_shards)
    searcher = Searcher.open(build.out, device=build.model.device, encoder=encoder)
    m = result.manifest
    runs = []
    for mode in modes or [m.default_mode]:
        t0 = time.perf_counter()
        hits = searcher.search_batch([data.queries[q] for q in judged], k=min(100, len(searcher)),
                                     mode=mode, batch_size=build.model.batch_size, rerank=rerank)
        run = {q: [h.id for h in hs] for q, hs in zip(judged, hits)}
        runs.append({
            "mode": mode + (f" + rerank {rerank}" if rerank else ""),
            "metrics": score_run(run, data.qrels), "queries": len(judged),
            "per_query_ndcg@10": {q: round(v, 6) for q, v in per_query_ndcg(run, data.qrels).items()},
            "documents": m.documents, "passages": m.vectors,
            "search_seconds": round(time.perf_counter() - t0, 2),
            "ms_per_query": round(1000 * (time.perf_counter() - t0) / max(1, len(judged)), 1),
            "settings": {**m.encoder.to_dict(), "query_prompt": build.model.query_prompt,
                         "index": m.index.factory,
                         "passages": m.passages.to_dict() if m.passages else None,
                         "transform": m.transform.kind, "transform_dim": m.transform.dim,
                         "embed_filter": m.transform.embed_filter,
                         "whiten_power": m.transform.whiten_power,
                         "query_adapter": m.transform.adapter_pairs or None,
                         "fusion": asdict(m.fusion) if mode == "hybrid" else None,
                         "rerank": rerank or None},
        })
    return runs


#: What ``compare_retrieval`` puts side by side: (label, build changes, modes, rerank depth).
#: Build changes name BuildConfig fields, or ModelConfig's ``query_prompt`` or ``tp_layers``
#: (``"none"``: the same prompt without TP, encoded anew, last). Each group of rows
#: with the same passage setting shares one encoding (the shards are kept between builds:
#: transforms, the query shift and the lexical index are made at assembly, queries at search).
PREVIOUS = {"embed_filter": "none", "query_prompt": "same", "fusion": "minmax",
            "lexical_weight": 0.7, "query_adapter": False, "whiten_power": 0.0}  # tpsearch 0.3's retrieval defaults
COMPARED = (
    ("whole document", {**PREVIOUS, "passage_tokens": 0, "transform": "none"}, ("dense", "lexical"), 0),
    ("whole document + transform", {**PREVIOUS, "passage_tokens": 0}, ("dense",), 0),
    ("passages", {**PREVIOUS, "transform": "none"}, ("dense",), 0),
    ("passages + centering (0.3 defaults)", PREVIOUS, ("dense", "lexical", "hybrid"), 0),
    ("+ EmbedFilter", {**PREVIOUS, "embed_filter": None}, ("dense",), 0),
    ("+ question prompt for queries", {**PREVIOUS, "query_prompt": None}, ("dense",), 0),
    ("+ query adapter", {**PREVIOUS, "query_adapter": None}, ("dense",), 0),
    ("+ partial whitening", {**PREVIOUS, "whiten_power": None}, ("dense",), 0),
    ("defaults without the query adapter", {"query_adapter": False}, ("dense", "hybrid"), 0),
    ("defaults without partial whitening (0.11's)", {"whiten_power": 0.0}, ("dense", "hybrid"), 0),
    ("defaults, lexical weight 0.5 (0.10's)", {"lexical_weight": 0.5}, ("hybrid",), 0),
    ("defaults (all of the above, z-score fusion)", {}, ("dense", "hybrid"), 0),
    ("defaults + decoder rerank", {}, ("hybrid",), DEFAULT_RERANK),
    ("defaults without TP (vanilla)", {"tp_layers": "none"}, ("dense", "hybrid"), 0),
)


def _changed(build: BuildConfig, changes: dict) -> BuildConfig:
    """``build`` with ``changes``; a None value means the default (left as ``build`` has it)."""
    changes = {k: v for k, v in changes.items() if v is not None}
    model = build.model
    for key in ("query_prompt", "tp_layers"):
        if key in changes:
            model = replace(model, **{key: changes.pop(key)})
    return replace(build, model=model, **changes)


def compare_retrieval(data_dir: str | Path, build: BuildConfig, split: str = "test",
                      show_progress: bool = False, rerank: int | None = None,
                      rows: Sequence[tuple[str, dict, tuple[str, ...], int]] = COMPARED) -> list[dict]:
    """tpsearch 0.1's dense whole documents, 0.3's passages, transform, lexical and hybrid, each
    method added since on its own, the defaults, the defaults reranked by the decoder, and the
    defaults without TP (vanilla): side by side in one run, on one loaded model. ``build`` gives the settings the rows
    depart from (the defaults, unless changed); ``rerank``: the reranked row's depth.
    ``rows`` replaces that list (as :data:`COMPARED` spells it: rows that change only what
    assembly fits share one encoding, kept between them)."""
    from ..encoder import TPEncoder

    from ..tp import output_head

    data = load_beir(data_dir, split)  # read once; bad data is refused before the model loads
    encoder = TPEncoder.from_pretrained(**build.model.encoder_kwargs())
    try:
        output_head(encoder.model)
    except InputError:
        rerank = 0  # a base model without its head cannot score tokens: no reranked row
    table = list(rows)
    has_defaults = any(not changes and not depth for _, changes, _, depth in table)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tpsearch-compare-") as tmp:
        corpus = corpus_to_parquet(data, Path(tmp) / "corpus.parquet")
        for i, (label, changes, modes, depth) in enumerate(table):
            if depth and rerank is not None:
                if rerank == 0:
                    continue  # no reranked row
                depth = rerank
            cfg = _changed(replace(build, corpus=str(corpus), out=str(Path(tmp) / "index"),
                                   store_text=True), changes)
            row_encoder = encoder
            if changes.get("tp_layers") == "none":
                if not encoder.tp_enabled:
                    continue  # the defaults are vanilla already
                row_encoder = encoder.variant(tp_layers=None)
                cfg = replace(cfg, fresh=True)  # the shards so far are TP's
            last_of_encoding = i + 1 == len(table) or \
                table[i + 1][1].get("passage_tokens") != changes.get("passage_tokens") or \
                table[i + 1][1].get("tp_layers") != changes.get("tp_layers")
            for run in _build_and_search(data, cfg, row_encoder, show_progress, modes,
                                         keep_shards=not last_of_encoding, rerank=depth):
                rows.append({"label": f"{label}, {run['mode']}", **run,
                             "reference": (not changes and not depth) if has_defaults else i == 0})
    return against_reference(rows)


def against_reference(rows: list[dict]) -> list[dict]:
    """Each row with ``vs_reference``: its nDCG@10 minus that of the row marked ``reference``
    in the same mode (the defaults; the first row where no row keeps them), over the same
    queries, with a bootstrap interval and a randomisation p-value
    (:func:`tpsearch.eval.significance.paired_difference`). None for the reference itself, for
    a mode without one, and where fewer than two queries are judged."""
    from .significance import paired_difference

    ref = {r["mode"]: r for r in rows if r.get("reference")}
    out = []
    for r in rows:
        base = ref.get(r["mode"], r)
        diff = None
        qs = sorted(base["per_query_ndcg@10"])
        if r is not base and len(qs) >= 2:  # a paired test needs two queries
            d = paired_difference([r["per_query_ndcg@10"][q] for q in qs],
                                  [base["per_query_ndcg@10"][q] for q in qs])
            diff = {"reference": base["label"], "mean": d.mean, "low": d.low, "high": d.high,
                    "p_value": d.p_value}
        out.append({**r, "vs_reference": diff})
    return out

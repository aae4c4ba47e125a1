"""Query benchmark: latency split into encoding, dense search, lexical scoring and fusion.

    python benchmarks/bench_search.py demo-index --queries data/demo/queries.jsonl
    python benchmarks/bench_search.py demo-index --synthetic 100000

On a built index: each query encoded alone, then searched alone in each mode; p50/p95 over
``--repeat`` passes; batch throughput; the example queries checked against the documents they
should find. ``--synthetic N`` also times the search side at N passages (random vectors in the
index ``--index auto`` would choose for N, behind
the index's own transform kind, a BM25 index over N random 150-word passages, 4 passages per
document) against the query-encoding time measured on the real index: the share that search and
fusion add to a query (goal < 10%).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from tpsearch import Searcher
from tpsearch.fusion import best_per_document, fuse
from tpsearch.index import choose_index, new_index, search as faiss_search
from tpsearch.lexical import LexicalBuilder, LexicalSegments, TermPostings


def pct(x, q):
    return float(np.percentile(np.asarray(x), q))


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - t0) * 1e3


def real_index(s: Searcher, queries: list[str], repeat: int, k: int) -> float:
    """Per-stage latency on the index; returns the median encode time (ms)."""
    s.search(queries[0], k=k)  # load the model, warm up
    stages: dict[str, list[float]] = {"encode": [], "dense": [], "lexical": [], "fusion": []}
    for _ in range(repeat):
        for q in queries:
            vec, ms = timed(lambda: s.query_encoder.encode([q]))
            stages["encode"].append(ms)
            dense, ms = timed(lambda: s.dense_ranking(vec[0], 100, False, {}))
            stages["dense"].append(ms)
            if s.lexical is not None:
                lex, ms = timed(lambda: s.lexical_ranking(q, 100, False))
                stages["lexical"].append(ms)
                _, ms = timed(lambda: fuse(dense, lex, s.manifest.fusion.method,
                                           s.manifest.fusion.lexical_weight))
                stages["fusion"].append(ms)
    m = s.manifest
    print(f"index {s.directory}: {m.documents} documents, {m.vectors} passages, {m.index.factory}, "
          f"transform {m.transform.kind}, default mode {m.default_mode}; {len(queries)} queries x {repeat}")
    for name, v in stages.items():
        if v:
            print(f"  {name:<8} p50 {pct(v, 50):8.2f} ms  p95 {pct(v, 95):8.2f} ms")
    enc = pct(stages["encode"], 50)
    rest = sum(pct(v, 50) for n, v in stages.items() if v and n != "encode")
    print(f"  search + fusion add {rest / enc * 100:.1f}% to the encoder's time per query")
    batch = queries * 4
    _, ms = timed(lambda: s.search_batch(batch, k=k))
    print(f"  batch    {len(batch) / ms * 1e3:8.1f} queries/s ({len(batch)} queries, default mode)")
    return enc


def synthetic(n: int, dim: int, kind: str, encode_ms: float, repeat: int = 20) -> None:
    """Search-side cost at ``n`` passages, against ``encode_ms`` per query."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    plan = choose_index("auto", n, dim)  # what a build of n passages would choose
    inner = new_index(plan, dim)
    index = inner
    if kind != "none":
        index = faiss.IndexPreTransform(faiss.CenteringTransform(dim), inner)
    index.train(x[:20_000])
    index.add(x)
    params = {"efSearch": 128} if "HNSW" in plan.factory else {}
    doc_of_row = np.arange(n) // 4
    vocab = [f"w{i}" for i in range(30_000)]
    zipf = np.minimum(rng.zipf(1.3, size=(n, 150)), len(vocab)) - 1
    builder = LexicalBuilder()
    for a in range(0, n, 10_000):
        builder.add([" ".join(vocab[j] for j in row) for row in zipf[a:a + 10_000]])
    with tempfile.TemporaryDirectory() as tmp:
        builder.save(Path(tmp))
        lex = LexicalSegments([(TermPostings(Path(tmp) / "lexical"), None)])
        queries = [" ".join(vocab[j] for j in rng.integers(0, 2000, 6)) for _ in range(repeat)]
        d_ms, l_ms, f_ms = [], [], []
        for i, q in enumerate(queries):
            (scores, rows), ms = timed(lambda: faiss_search(index, x[i:i + 1] + 0.01, 400, params))
            dense = best_per_document(scores[0], rows[0], doc_of_row, 100)
            d_ms.append(ms)
            lexical, ms = timed(lambda: _lexical(lex, q, doc_of_row))
            l_ms.append(ms)
            _, ms = timed(lambda: fuse(dense, lexical, "minmax", 0.7))
            f_ms.append(ms)
    total = pct(d_ms, 50) + pct(l_ms, 50) + pct(f_ms, 50)
    print(f"synthetic: {n:,} passages x {dim} dims ({plan.factory}, as auto chooses; transform "
          f"{kind}) + BM25 over {n:,} passages; 400 passages fetched per query")
    print(f"  dense    p50 {pct(d_ms, 50):8.2f} ms  p95 {pct(d_ms, 95):8.2f} ms")
    print(f"  lexical  p50 {pct(l_ms, 50):8.2f} ms  p95 {pct(l_ms, 95):8.2f} ms")
    print(f"  fusion   p50 {pct(f_ms, 50):8.2f} ms  p95 {pct(f_ms, 95):8.2f} ms")
    print(f"  search + fusion {total:.1f} ms = {total / encode_ms * 100:.1f}% of one query's "
          f"encoding ({encode_ms:.1f} ms) (goal < 10%)")


def _lexical(lex: LexicalSegments, q: str, doc_of_row: np.ndarray):
    s = lex.scores(q)
    order = np.argsort(-s, kind="stable")
    order = order[s[order] > 0]
    return best_per_document(s[order], order, doc_of_row, 100)


def check_examples(s: Searcher, items: list[dict], k: int) -> None:
    found = 0
    for it in items:
        ids = [h.id for h in s.search(it["query"], k=k)]
        ok = any(e in ids for e in it["expected"])
        found += ok
        rank, first = min(((ids.index(e) + 1, e) for e in it["expected"] if e in ids),
                          default=(None, " or ".join(it["expected"])))
        print(f"  {'ok ' if ok else 'MISS'} {it['query']!r}: expected {first} "
              f"{'at rank ' + str(rank) if rank else 'not in top ' + str(k)}; top: {ids[:3]}")
    print(f"{found}/{len(items)} example queries find an expected document in the top {k}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("index_dir")
    ap.add_argument("--queries", type=Path, default=Path("data/demo/queries.jsonl"))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("-k", type=int, default=5)
    ap.add_argument("--synthetic", type=int, default=0, help="Also time search at this many passages.")
    args = ap.parse_args()
    items = [json.loads(line) for line in args.queries.read_text().splitlines() if line.strip()]
    s = Searcher.open(args.index_dir)
    encode_ms = real_index(s, [it["query"] for it in items], args.repeat, args.k)
    check_examples(s, items, args.k)
    if args.synthetic:
        synthetic(args.synthetic, s.manifest.dim, s.manifest.transform.kind, encode_ms)


if __name__ == "__main__":
    main()

"""What a metadata filter costs in dense search, side by side with the same search unfiltered:
HNSW and IVF over N random unit vectors (a centring transform in front, as a build makes),
filters allowing 1%, 10% and 50% of the rows, latency and recall@10 against exact search over
the allowed rows.

    python benchmarks/bench_filters.py                 # 100,000 x 640 (a few minutes on 2 cores)
    python benchmarks/bench_filters.py --n 20000       # quicker

Filtered search goes through ``tpsearch.index.search`` exactly as ``Searcher`` calls it: an
``IDSelector`` in per-call ``SearchParameters``; below 20% allowed, HNSW searches its flat
storage over the allowed rows; otherwise (and for IVF) efSearch / nprobe are scaled by 1/share.
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

from tpsearch.index import exact_topk, nlist_for, search


def build(kind: str, x: np.ndarray) -> tuple[faiss.Index, dict]:
    n, dim = x.shape
    factory = "HNSW32,Flat" if kind == "hnsw" else f"IVF{nlist_for(n)},Flat"
    inner = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    index = faiss.IndexPreTransform(faiss.CenteringTransform(dim), inner)
    index.train(x[:50_000])
    index.add(x)
    params = {"efSearch": 128} if kind == "hnsw" else {"nprobe": 16}
    return index, params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=640)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--fetch", type=int, default=40, help="Rows fetched per query (k=10 documents).")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.n, args.dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.choice(args.n, args.queries, replace=False)] + 0.05 * rng.standard_normal(
        (args.queries, args.dim)).astype(np.float32)
    print(f"{args.n:,} vectors x {args.dim}, {args.queries} queries, {args.fetch} rows fetched; "
          f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads")
    print(f"{'index':<12}{'allowed':>9}{'p50 ms':>10}{'vs unfiltered':>15}{'recall@10':>11}{'hits':>7}")
    for kind in ("hnsw", "ivf"):
        t0 = time.perf_counter()
        index, params = build(kind, x)
        built = time.perf_counter() - t0
        centred = faiss.downcast_VectorTransform(faiss.downcast_index(index).chain.at(0))
        xc, qc = centred.apply(x), centred.apply(q)
        base = None
        for share in (1.0, 0.5, 0.1, 0.01):
            allowed = None if share == 1.0 else np.sort(
                rng.choice(args.n, int(args.n * share), replace=False)).astype(np.int64)
            times, found = [], []
            for i in range(args.queries):
                t1 = time.perf_counter()
                _, rows = search(index, q[i:i + 1], args.fetch, params, allowed)
                times.append(time.perf_counter() - t1)
                found.append(rows[0])
            rows_all = np.arange(args.n) if allowed is None else allowed
            truth = exact_topk(qc, [xc[rows_all]], 10)
            truth = rows_all[truth]
            recall = np.mean([len(set(f[:10]) & set(t)) / 10 for f, t in zip(found, truth)])
            hits = np.mean([(f[:10] >= 0).sum() for f in found])
            p50 = float(np.median(times) * 1000)
            base = base or p50
            print(f"{kind + (' (' + str(round(built)) + ' s)' if share == 1.0 else ''):<12}"
                  f"{share:>9.0%}{p50:>10.2f}{p50 / base:>14.2f}x{recall:>11.3f}{hits:>7.1f}", flush=True)


if __name__ == "__main__":
    main()

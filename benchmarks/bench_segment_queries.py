"""What a query's transform costs over many segments: once per distinct chain (0.13) against
once per segment (0.12: the same search with every segment's chain counted as its own), on
DenseSegments directly, one query at a time (as a user's query arrives), rounds alternating
so a noisy machine hits both alike.

    python benchmarks/bench_segment_queries.py --segments 1,8,32 --rows 2000 --dim 576

Each segment is a flat inner-product index behind the same square LinearTransform (the default
build's chain: centering + EmbedFilter + partial whitening fold to matrices of this width), as
a version's segments are after commits that keep the transform.
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import faiss
import numpy as np

from tpsearch.segments import DenseSegments, OpenSegment


def segment(rows: int, matrix: np.ndarray, bias: np.ndarray,
            rng: np.random.Generator) -> OpenSegment:
    d = matrix.shape[0]
    lt = faiss.LinearTransform(d, d, True)
    faiss.copy_array_to_vector(matrix.ravel(), lt.A)
    faiss.copy_array_to_vector(bias, lt.b)
    lt.is_trained = True
    index = faiss.IndexPreTransform(lt, faiss.IndexFlatIP(d))
    index.add(rng.normal(size=(rows, d)).astype(np.float32))
    info = SimpleNamespace(index=SimpleNamespace(search_params={}, factory="Flat", data_file=None))
    return OpenSegment(info=info, directory=None, index=index, idmap=None, lexical=None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--segments", default="1,8,32")
    ap.add_argument("--rows", type=int, default=2000, help="vectors per segment")
    ap.add_argument("--dim", type=int, default=576)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(args.dim, args.dim)).astype(np.float32)
    bias = rng.normal(size=args.dim).astype(np.float32)
    queries = rng.normal(size=(args.queries, args.dim)).astype(np.float32)
    print(f"{faiss.omp_get_max_threads()} threads; {args.rows} rows x {args.dim} dims per "
          f"segment; ms per query, one query at a time (median of {args.rounds} rounds)")
    print(f"{'segments':>8s}  {'once per segment':>16s}  {'once per chain':>14s}  saved")
    for n in map(int, args.segments.split(",")):
        new = DenseSegments([segment(args.rows, matrix, bias, rng) for _ in range(n)])
        old = DenseSegments(new.segments)
        old.chain_of = list(range(n))  # 0.12: each segment's chain applied on its own
        times = {"old": [], "new": []}
        for _ in range(args.rounds):
            for arm, dense in (("old", old), ("new", new)):
                t0 = time.perf_counter()
                for q in queries:
                    dense.search(q[None], 10, {})
                times[arm].append(1000 * (time.perf_counter() - t0) / len(queries))
        a, b = statistics.median(times["old"]), statistics.median(times["new"])
        print(f"{n:8d}  {a:16.3f}  {b:14.3f}  {a - b:.3f} ms ({100 * (1 - b / a):.0f}%)",
              flush=True)


if __name__ == "__main__":
    main()

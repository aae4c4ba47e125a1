"""Query benchmark on a built index: latency split into encoding and search, batch throughput,
and the README's example queries checked against the documents they should find.

    python benchmarks/bench_search.py demo-index --queries data/demo/queries.jsonl

Single-query latency: each query encoded alone (``embed``), then searched alone (``search``,
FAISS plus building the hit list); p50 and p95 over ``--repeat`` passes. Batch throughput: all
queries through ``search_batch``. The overhead figure is search time as a share of encoding
time per query (goal < 10%).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from tpsearch import Searcher


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("index_dir")
    ap.add_argument("--queries", type=Path, default=Path("data/demo/queries.jsonl"))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("-k", type=int, default=5)
    args = ap.parse_args()

    items = [json.loads(line) for line in args.queries.read_text().splitlines() if line.strip()]
    queries = [it["query"] for it in items]
    s = Searcher.open(args.index_dir)
    s.search(queries[0], k=args.k)  # load the model, warm up

    enc_ms, search_ms = [], []
    for _ in range(args.repeat):
        for q in queries:
            t0 = time.perf_counter()
            vec = s.query_encoder.encode([q])
            t1 = time.perf_counter()
            scores, rows = s.search_vectors(vec, args.k)
            s._hits(scores[0], rows[0])
            t2 = time.perf_counter()
            enc_ms.append((t1 - t0) * 1e3)
            search_ms.append((t2 - t1) * 1e3)
    enc, sea = np.array(enc_ms), np.array(search_ms)
    print(f"index {args.index_dir}: {len(s)} documents, {s.manifest['index']['factory']}, "
          f"{len(queries)} queries x {args.repeat}")
    print(f"  encode  p50 {np.percentile(enc, 50):7.2f} ms  p95 {np.percentile(enc, 95):7.2f} ms")
    print(f"  search  p50 {np.percentile(sea, 50):7.2f} ms  p95 {np.percentile(sea, 95):7.2f} ms")
    total = enc + sea
    print(f"  total   p50 {np.percentile(total, 50):7.2f} ms  p95 {np.percentile(total, 95):7.2f} ms")
    print(f"  search adds {sea.mean() / enc.mean() * 100:.1f}% to the encoder's time per query (goal < 10%)")
    batch = queries * 4
    t0 = time.perf_counter()
    s.search_batch(batch, k=args.k)
    dt = time.perf_counter() - t0
    print(f"  batch   {len(batch) / dt:7.1f} queries/s ({len(batch)} queries through search_batch)")

    found = 0
    for it in items:
        hits = s.search(it["query"], k=args.k)
        ids = [h.id for h in hits]
        ok = any(e in ids for e in it["expected"])
        found += ok
        rank, first = min(((ids.index(e) + 1, e) for e in it["expected"] if e in ids),
                          default=(None, " or ".join(it["expected"])))
        print(f"  {'ok ' if ok else 'MISS'} {it['query']!r}: expected {first} "
              f"{'at rank ' + str(rank) if rank else 'not in top ' + str(args.k)}; top: {ids[:3]}")
    print(f"{found}/{len(items)} example queries find an expected document in the top {args.k}")


if __name__ == "__main__":
    main()

"""The query path's own cost: per-query latency of ``Searcher.search`` (one query at a time)
and of ``search_batch`` (all at once) in each mode, on one index, rounds alternating so a
noisy machine hits both alike. With a tiny random model the encoder costs little, so what is
measured is the path around it: checks, FAISS, BM25, fusion, passage choice.

    python benchmarks/bench_query_path.py --tiny                # the demo corpus, tiny model
    python benchmarks/bench_query_path.py --index demo-index    # a built index

To compare two checkouts on the same machine, run it under each (``PYTHONPATH=OTHER``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tpsearch import Searcher

ROOT = Path(__file__).resolve().parents[1]


def tiny_index(tmp: Path) -> Path:
    """The demo corpus (2,000 docstrings, passages, BM25, hybrid) on a tiny random llama."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import CORPUS

    from tpsearch.config import BuildConfig, ModelConfig
    from tpsearch.pipeline import build_index
    from tpsearch.testing import save_tiny_model

    model = save_tiny_model(tmp / "model", "llama", CORPUS)
    cfg = BuildConfig(corpus=str(ROOT / "data/demo/stdlib_docs.parquet"), out=str(tmp / "idx"),
                      title_column="title", lexical=True, mode="hybrid",
                      model=ModelConfig(model=str(model), device="cpu", dtype="float32"))
    return build_index(cfg).out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--json", dest="json_out", type=Path)
    args = ap.parse_args()
    queries = [json.loads(line)["query"] for line in
               (ROOT / "data/demo/queries.jsonl").read_text().splitlines() if line.strip()]
    # and 56 more: the first eight words of every 35th demo document
    import pyarrow.parquet as pq

    texts = pq.read_table(ROOT / "data/demo/stdlib_docs.parquet", columns=["text"]).column(0).to_pylist()
    queries += [" ".join(t.split()[:8]) for t in texts[::35][:56]]
    with tempfile.TemporaryDirectory() as tmp:
        index = tiny_index(Path(tmp)) if args.tiny else args.index
        s = Searcher.open(index)
        s.search(queries[0], k=args.k)  # model load, warm-up
        single: dict[str, list[float]] = {}
        batch: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for mode in ("dense", "lexical", "hybrid"):
                for q in queries:
                    t0 = time.perf_counter()
                    s.search(q, k=args.k, mode=mode)
                    single.setdefault(mode, []).append((time.perf_counter() - t0) * 1e3)
                t0 = time.perf_counter()
                s.search_batch(queries, k=args.k, mode=mode)
                batch.setdefault(mode, []).append((time.perf_counter() - t0) * 1e3 / len(queries))
    print(f"{len(queries)} queries, k={args.k}, {args.rounds} rounds, index {'tiny demo' if args.tiny else index}")
    print(f"{'mode':<9}{'search p50 ms':>15}{'search mean ms':>16}{'search_batch ms/query':>23}")
    out = {}
    for mode in single:
        p50, mean, per = (float(np.median(single[mode])), float(np.mean(single[mode])),
                          float(np.median(batch[mode])))
        out[mode] = {"search_p50_ms": p50, "search_mean_ms": mean, "batch_ms_per_query": per}
        print(f"{mode:<9}{p50:>15.2f}{mean:>16.2f}{per:>23.2f}")
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

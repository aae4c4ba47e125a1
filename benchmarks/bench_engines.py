"""The build engines side by side on one machine: one process (``--engine local``) against Ray
(``--engine ray``, a local instance) with 1 and 2 encoder actors, on the same synthetic corpus
and tiny model; each build's wall time, documents/s and its segment count, and whether every
engine indexed the same documents.

    python benchmarks/bench_engines.py --docs 20000
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq

from bench_build import synthetic_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=20000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()

    import ray

    from tpsearch import Searcher
    from tpsearch.config import BuildConfig, ModelConfig
    from tpsearch.pipeline import build_index
    from tpsearch.pipeline.ray_engine import RayOptions, build_with_ray
    from tpsearch.testing import save_tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    try:
        table = synthetic_table(args.docs)
        corpus = tmp / "corpus.parquet"
        pq.write_table(table, corpus, row_group_size=1000)
        model = save_tiny_model(tmp / "tiny", "llama", table.column("text").to_pylist()[:2000])
        base = BuildConfig(corpus=str(corpus), out="", title_column="title", shard_rows=2000,
                           model=ModelConfig(model=str(model), device="cpu", dtype="float32",
                                             batch_size=args.batch_size))
        print(f"{args.docs:,} synthetic documents, tiny llama (64 x 6), shard rows 2000")
        print(f"{'engine':<22}{'wall s':>9}{'docs/s':>10}{'segments':>10}")
        ids = {}

        def row(name, seconds, out):
            s = Searcher.open(out)
            ids[name] = sorted(s.document_ids())
            print(f"{name:<22}{seconds:>9.1f}{args.docs / seconds:>10.0f}"
                  f"{len(s.manifest.segments or [1]):>10}", flush=True)

        out = tmp / "local"
        t = time.perf_counter()
        build_index(replace(base, out=str(out)))
        row("local (one process)", time.perf_counter() - t, out)
        t = time.perf_counter()
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        print(f"(Ray started in {time.perf_counter() - t:.1f} s, not counted below)")
        for n in args.actors:
            out = tmp / f"ray-{n}"
            t = time.perf_counter()
            build_with_ray(replace(base, out=str(out)), RayOptions(actors=n))
            row(f"ray, {n} actor(s)", time.perf_counter() - t, out)
        same = all(v == ids["local (one process)"] for v in ids.values())
        print(f"same documents in every index: {same}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

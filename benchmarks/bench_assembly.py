"""Assembly in one process vs on every torchrun rank, from the same encoded shards.

    python benchmarks/bench_assembly.py --docs 100000 --nproc 2

A tiny random llama encodes ``--docs`` synthetic documents with titles once (shards kept);
then the same index is rebuilt from those shards (nothing encoded: only reading, the transform
fit, FAISS, BM25, recall tuning and the publish) by one process, and by ``--nproc`` torchrun
ranks, each assembling its own segment. Prints the wall time of each rebuild (model load and
process start included, as a user sees them) and the manifest's assembly stage, and checks the
two indexes answer alike.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_build import synthetic_table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()

    from tpsearch import Searcher
    from tpsearch.config import BuildConfig, ModelConfig
    from tpsearch.pipeline import build_index
    from tpsearch.pipeline.workdir import WorkDir
    from tpsearch.testing import save_tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="bench-assembly-"))
    try:
        table = synthetic_table(args.docs)
        corpus = tmp / "corpus.parquet"
        pq.write_table(table, corpus)
        model = str(save_tiny_model(tmp / "tiny", "llama", table.column("text").to_pylist()[:2000]))
        mc = ModelConfig(model=model, batch_size=args.batch_size, device="cpu", dtype="float32")
        one = tmp / "one"
        cfg = BuildConfig(corpus=str(corpus), out=str(one), title_column="title", model=mc)
        t0 = time.perf_counter()
        build_index(cfg, keep_shards=True)
        print(f"encoded {args.docs:,} documents once: {time.perf_counter() - t0:.1f} s")
        shards = WorkDir(one).root
        ranks = tmp / "ranks"
        shutil.copytree(shards, WorkDir(ranks).root)  # the same shards for the torchrun build

        t0 = time.perf_counter()
        single = build_index(cfg, overwrite=True, keep_shards=True)
        one_s = time.perf_counter() - t0
        assert single.encoded_documents == 0, "the shards were not reused"

        cmd = [shutil.which("torchrun") or "torchrun", "--standalone",
               f"--nproc_per_node={args.nproc}", str(ROOT / "pipelines" / "build_index.py"),
               str(corpus), "--out", str(ranks), "--title-column", "title", "--model", model,
               "--device", "cpu", "--dtype", "float32", "--batch-size", str(args.batch_size),
               "--no-progress"]
        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // args.nproc)))
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        ranks_s = time.perf_counter() - t0
        a, b = Searcher.open(one), Searcher.open(ranks)
        assert sorted(a.document_ids()) == sorted(b.document_ids())
        stage = lambda s: s.manifest.build.stage_seconds.get("index", 0.0)
        print(f"\n{'rebuild from shards':<28}{'wall s':>9}{'assembly stage s':>18}{'segments':>10}")
        print(f"{'one process':<28}{one_s:>9.1f}{stage(a):>18.1f}{1:>10}")
        print(f"{f'{args.nproc} torchrun ranks':<28}{ranks_s:>9.1f}{stage(b):>18.1f}"
              f"{len(b.manifest.segments or [1]):>10}")
        print(f"\nranks / one process: {ranks_s / one_s:.2f}x wall")
        q = "kalo mine suta"
        hits = [[h.id for h in s.search(q, k=10, mode="lexical")] for s in (a, b)]
        print(f"same lexical top 10 for {q!r}: {hits[0] == hits[1]}")
        print(json.dumps({"docs": args.docs, "one_s": round(one_s, 1), "ranks_s": round(ranks_s, 1),
                          "ratio": round(ranks_s / one_s, 3)}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

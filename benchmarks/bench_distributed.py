"""One process vs ``torchrun --nproc_per_node=N`` for the same build (wall time, docs/s).

    python benchmarks/bench_distributed.py --docs 200 --nproc 2

Both builds run the same corpus slice and settings; the one-process build uses all cores for
intra-op threads, the torchrun build splits them between its ranks. Model loading is inside the
measured time for both (each rank loads its own copy), as a user would see it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=200)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--model", default="gemma-3-270m")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = tmp / "c.parquet"
        pq.write_table(pq.read_table(ROOT / "data/demo/stdlib_docs.parquet").slice(0, args.docs), corpus,
                       row_group_size=64)
        common = [str(corpus), "--title-column", "title", "--model", args.model, "--shard-rows", "32",
                  "--no-progress"]
        entry = str(ROOT / "pipelines" / "build_index.py")
        env = dict(os.environ)
        one = run([sys.executable, entry, *common, "--out", str(tmp / "one")], env)
        torchrun = shutil.which("torchrun")
        many = run([torchrun, "--standalone", f"--nproc_per_node={args.nproc}", entry, *common,
                    "--out", str(tmp / "many")], env)
    print(f"{args.docs} documents, model {args.model}, {os.cpu_count()} cores")
    print(f"  1 process:        {one:7.1f} s  {args.docs / one:6.2f} docs/s")
    print(f"  {args.nproc} processes (torchrun): {many:7.1f} s  {args.docs / many:6.2f} docs/s")
    print(f"  speed-up {one / many:.2f}x")


if __name__ == "__main__":
    main()

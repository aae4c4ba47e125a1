"""An index with its inverted lists on disk vs in RAM: peak memory of building and searching,
recall and latency, on random unit vectors (no encoder: the assembler and the search alone).

    python benchmarks/bench_ondisk.py --vectors 1000000 --dim 64 --budget 64MB

Writes ``--vectors`` random unit vectors as build shards, assembles them twice with the
tpsearch assembler (``--index ivf`` in RAM, ``--index ivf-disk`` with ``--max-index-memory``
= ``--budget``), then, each in a fresh process, opens the index and runs ``--queries``
searches (nprobe = the tuned value); prints each process's peak RSS against the vectors'
bytes, recall@10 against exact search and p50 latency.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SEARCH = r"""
import json, os, sys, time
import numpy as np
import faiss

def rss():  # anonymous resident bytes now (mapped file pages are the page cache's, reclaimable)
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024

path, ondisk, nprobe, qfile = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), sys.argv[4]
queries = np.load(qfile)
before = rss()
saved = os.dup(1); null = os.open(os.devnull, os.O_WRONLY); os.dup2(null, 1)  # FAISS printf()s
index = faiss.read_index(path, faiss.IO_FLAG_ONDISK_SAME_DIR) if ondisk else faiss.read_index(path)
os.dup2(saved, 1)
from tpsearch.ondisk import MappedLists
mapped = MappedLists.of(index)  # as tpsearch's searcher: mapped lists released now and then
params = faiss.SearchParametersIVF()
params.nprobe = nprobe
times, found, peak = [], [], rss()
for q in queries:
    t0 = time.perf_counter()
    _, rows = index.search(q[None, :], 10, params=params)
    if mapped is not None:
        mapped.searched(1, nprobe)
    times.append(time.perf_counter() - t0)
    found.append(rows[0].tolist())
    peak = max(peak, rss())
hwm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"rss": peak - before, "peak": hwm, "p50_ms": 1000 * float(np.median(times)),
                  "found": found}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--budget", default="64MB")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--shard", type=int, default=50_000)
    ap.add_argument("--train-iterations", type=int, default=None,
                    help="k-means iterations of the coarse quantizer (FAISS's default: 25); "
                         "fewer train faster and change recall, not the build's memory")
    ap.add_argument("--specs", default="ivf,ivf-disk",
                    help="indexes to build, comma-separated (ivf: lists in RAM; ivf-disk)")
    args = ap.parse_args()

    from tpsearch.config import parse_size
    from tpsearch.index import ExactTopK, ann_recall_at_k
    from tpsearch.pipeline.writer import Shard, write_shard

    tmp = Path(tempfile.mkdtemp(prefix="bench-ondisk-"))
    try:
        rng = np.random.default_rng(0)
        shards = []
        centers = rng.standard_normal((1000, args.dim)).astype(np.float32)
        centers /= np.linalg.norm(centers, axis=1, keepdims=True)
        queries = centers[rng.integers(0, 1000, args.queries)] + 0.5 * rng.standard_normal(
            (args.queries, args.dim)).astype(np.float32) / np.sqrt(args.dim)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        truth = ExactTopK(queries, 10)
        (tmp / "shards").mkdir()
        for start in range(0, args.vectors, args.shard):
            n = min(args.shard, args.vectors - start)
            # clustered like embeddings: 1,000 topics, each vector a topic plus noise
            v = centers[rng.integers(0, len(centers), n)] + 0.5 * rng.standard_normal(
                (n, args.dim)).astype(np.float32) / np.sqrt(args.dim)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            truth.add(v)
            rows = list(range(start, start + n))
            shard = Shard(start=start, rows=rows, ids=rows, passages=[0] * n,
                          spans=[(0, 0)] * n, texts=[""] * n, titles=None, vectors=v,
                          window_rows=n, documents=n, skipped=0, truncated=0, tokens=0,
                          doc_hashes=[""] * n, passage_truncated=[False] * n,
                          passage_tokens=[0] * n)
            shards.append(write_shard(tmp / "shards" / f"shard-{start:012d}.parquet", shard, "int"))
        np.save(tmp / "queries.npy", queries)
        vector_bytes = args.vectors * args.dim * 4
        print(f"{args.vectors:,} clustered unit vectors of {args.dim} dims: "
              f"{vector_bytes / 2**20:.0f} MiB of float32")
        print("(RSS: anonymous resident memory the index adds to its process, after the build and "
              "at the peak of the searches; pages of a memory-mapped file are the page cache's, "
              "reclaimable, and not counted)")
        print("(peak: the process's whole peak resident set, VmHWM: Python, FAISS, torch's "
              "libraries and any mapped pages included)")
        print("(build anon peak: the largest anonymous resident memory the build added, sampled "
              "every 50 ms)")
        print(f"\n{'index':<10}{'build s':>9}{'build RSS MiB':>15}{'anon peak MiB':>15}"
              f"{'build peak MiB':>16}"
              f"{'search RSS MiB':>16}{'search peak MiB':>17}{'peak / vectors':>18}"
              f"{'recall@10':>11}{'p50 ms':>8}")
        for spec in args.specs.split(","):
            out = tmp / spec
            out.mkdir()
            budget = parse_size(args.budget) if spec == "ivf-disk" else None
            code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                    "from pathlib import Path\nimport json, os, time\n"
                    "rss = lambda: next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('RssAnon:'))\n"
                    "from tpsearch.pipeline.assembler import AssemblyOptions, assemble\n"
                    "from tpsearch.pipeline.mapper import StageTimes\n"
                    "from tpsearch.transform import TransformSettings\n"
                    f"opts = AssemblyOptions({spec!r}, {budget!r}, False, TransformSettings('none'), False)\n"
                    + ("" if args.train_iterations is None else
                       "import faiss\nimport tpsearch.pipeline.assembler as A\n_new = A.new_index\n"
                       "def new_index(plan, d):\n    ix = _new(plan, d)\n"
                       f"    faiss.extract_index_ivf(ix).cp.niter = {args.train_iterations}\n"
                       "    return ix\nA.new_index = new_index\n")
                    +
                    f"shards = sorted(Path({str(tmp / 'shards')!r}).glob('shard-*.parquet'))\n"
                    "import threading\nhigh = [0]\n"
                    "def watch():\n"
                    "    while True:\n        high[0] = max(high[0], rss()); time.sleep(0.05)\n"
                    "threading.Thread(target=watch, daemon=True).start()\n"
                    "before, t0 = rss(), time.perf_counter()\n"
                    f"part = assemble(shards, Path({str(out)!r}), opts, StageTimes(), None, 'bench', 'text')\n"
                    "hwm = next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
                    "print(json.dumps({'s': time.perf_counter() - t0, 'params': part.index.search_params,"
                    " 'rss': rss() - before, 'anon_peak': high[0] - before, 'peak': hwm, 'base': before}))\n")
            built = json.loads(subprocess.run([sys.executable, "-c", code], check=True,
                                              capture_output=True, text=True).stdout.splitlines()[-1])
            nprobe = int(built["params"].get("nprobe", 1))
            res = json.loads(subprocess.run(
                [sys.executable, "-c", SEARCH, str(out / "index.faiss"),
                 "1" if spec == "ivf-disk" else "0", str(nprobe), str(tmp / "queries.npy")],
                check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            recall = ann_recall_at_k(np.array(res["found"]), truth.best_i, 10)
            peak = max(built["peak"], res["peak"])
            print(f"{spec:<10}{built['s']:>9.1f}{built['rss'] / 2**20:>15.0f}"
                  f"{built['anon_peak'] / 2**20:>15.0f}{built['peak'] / 2**20:>16.0f}{res['rss'] / 2**20:>16.0f}"
                  f"{res['peak'] / 2**20:>17.0f}{peak / vector_bytes:>17.0%} "
                  f"{recall:>10.3f}{res['p50_ms']:>8.2f}")
        hwm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status")
                   if l.startswith("VmHWM:"))
        print(f"(this process, which wrote the shards and found the exact neighbours: peak "
              f"{hwm / 2**20:.0f} MiB, {hwm / vector_bytes:.0%} of the vectors)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

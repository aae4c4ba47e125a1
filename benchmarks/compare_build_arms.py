"""The pipeline's share of the bare encoder's throughput from two ``bench_build.py --json``
files, each arm run in a process of its own:

    python benchmarks/bench_build.py --tiny --synthetic 1000000 --batch-size 256 --skip-memory \\
        --repeats 1 --torch-threads 1 --arms encoder --json encoder.json
    python benchmarks/bench_build.py ... --arms pipeline --json pipeline.json
    python benchmarks/compare_build_arms.py encoder.json pipeline.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("encoder", type=Path, help="--json of the run with --arms encoder")
    ap.add_argument("pipeline", type=Path, help="--json of the run with --arms pipeline")
    args = ap.parse_args()
    enc, pipe = (json.loads(p.read_text()) for p in (args.encoder, args.pipeline))
    bare, built = enc["encoder"], pipe["pipeline"]
    for name, f in (("encoder", bare), ("pipeline", built)):
        print(f"  {name:9s} {f['seconds']:8.1f} s  {f['docs_per_s']:8.2f} docs/s  "
              f"{f['tokens_per_s']:9.1f} tokens/s  {f['cores_busy']:.2f} cores busy")
    print("  pipeline stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in pipe["stage_seconds"].items()))
    share = built["docs_per_s"] / bare["docs_per_s"]
    print(f"  pipeline keeps {share * 100:.1f}% of the bare encoder's throughput (goal >= 90%)")


if __name__ == "__main__":
    main()

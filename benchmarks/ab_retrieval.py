"""One build option at several values on one BEIR set, side by side on one encoding.

Rows that change only what assembly fits (the transform, partial whitening, the query adapter,
the lexical weight...) reuse the first row's encoded shards, through the same
``compare_retrieval`` that ``tpsearch eval retrieval --compare`` runs::

    python benchmarks/ab_retrieval.py --data-dir ../shared/data/beir/pydoc-dev --split dev \\
        --vary whiten_power=0.15,0 --json runs/ab-pydoc.json

Values are read as numbers where they parse as one; ``none`` is None (the option's automatic
default where it has one). Each row is scored in dense, lexical and hybrid mode, and set
against the first value's row in the same mode, query by query (bootstrap interval, paired
randomisation p-value: ``tpsearch.eval.significance``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from tpsearch.config import BuildConfig, ModelConfig
from tpsearch.eval.retrieval import compare_retrieval
from tpsearch.eval.significance import describe


def value(text: str):
    if text.lower() == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", required=True, type=Path)
    ap.add_argument("--split", default="test")
    ap.add_argument("--vary", required=True, metavar="OPTION=V1,V2,...",
                    help="a BuildConfig field and its values, the first row's encoding shared")
    ap.add_argument("--modes", default="dense,lexical,hybrid")
    ap.add_argument("--dtype", default=None, help="the encoder's dtype (default: the machine's)")
    ap.add_argument("--quantize", default=None)
    ap.add_argument("--json", type=Path, help="write the rows here too")
    args = ap.parse_args()
    name, _, values = args.vary.partition("=")
    if not hasattr(BuildConfig(), name) or not values:
        ap.error(f"--vary: {args.vary!r} names no build option with values (OPTION=V1,V2)")
    model = replace(ModelConfig(), **{k: v for k, v in (("dtype", args.dtype),
                                                         ("quantize", args.quantize)) if v})
    modes = tuple(args.modes.split(","))
    # a value of None means "the option's default" to compare_retrieval: spell it as given
    rows = [(f"{name}={v}", {name: value(v)}, modes, 0) for v in values.split(",")]
    runs = compare_retrieval(args.data_dir, BuildConfig(model=model), args.split,
                             show_progress=True, rerank=0, rows=rows)
    print(f"{args.data_dir.name} ({args.split}): nDCG@10")
    for r in runs:
        fusion = r["settings"]["fusion"]
        weight = f" (lexical weight {fusion['lexical_weight']})" if fusion else ""
        vs = r["vs_reference"]
        paired = (f"  vs first row {describe(vs['mean'], vs['low'], vs['high'], vs['p_value'])}"
                  if vs else "")
        print(f"  {r['label']:<40s} {r['metrics']['ndcg@10'] * 100:6.2f}  "
              f"{r['ms_per_query']:7.1f} ms/query{weight}{paired}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()

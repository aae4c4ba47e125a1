"""How far apart two runs on the same queries are, and whether that is more than chance.

Each side is a JSON file and a row in it: a ``tpsearch eval retrieval --json`` run (its label,
or its mode for a run without one) or a ``benchmarks/peers.py --json`` row (``SET:LABEL``)::

    python benchmarks/paired_gap.py runs/eval-scifact.json:hybrid \\
        runs/peers.json:"scifact-dev:MiniLM (whole) + BM25 zscore 0.6"

Prints the mean nDCG@10 difference (first minus second) with its bootstrap 95% interval and
the paired randomisation test's p-value (``tpsearch.eval.significance``), the queries each side
wins, and the interval's width as the smallest gap these queries can resolve.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tpsearch.eval.significance import paired_difference


def per_query(spec: str) -> dict[str, float]:
    path, _, row = spec.partition(":")
    data = json.loads(Path(path).read_text())
    if "runs" in data:
        for r in data["runs"]:
            if row in (r.get("label"), r["mode"]):
                return r["per_query_ndcg@10"]
        raise SystemExit(f"{path}: no run labelled {row!r} "
                         f"(has: {', '.join(r.get('label') or r['mode'] for r in data['runs'])})")
    name, _, label = row.partition(":")
    try:
        return data[name]["per_query_ndcg@10"][label]
    except KeyError:
        raise SystemExit(f"{path}: no row {label!r} in set {name!r}") from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("first", help="FILE:ROW")
    ap.add_argument("second", help="FILE:ROW")
    args = ap.parse_args()
    a, b = per_query(args.first), per_query(args.second)
    if set(a) != set(b):
        raise SystemExit(f"the runs scored different queries ({len(a)} and {len(b)})")
    qs = sorted(a)
    d = paired_difference([a[q] for q in qs], [b[q] for q in qs])
    wins = sum(a[q] > b[q] + 1e-9 for q in qs)
    losses = sum(b[q] > a[q] + 1e-9 for q in qs)
    print(f"{len(qs)} queries: first - second = {d.describe()} (nDCG@10 x 100); "
          f"first better on {wins}, second on {losses}, tied on {len(qs) - wins - losses}; "
          f"interval width {100 * (d.high - d.low):.2f}")


if __name__ == "__main__":
    main()

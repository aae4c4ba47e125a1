"""Hybrid ranking at several fusion weights, on indexes already built by the real pipeline.

``tpsearch eval retrieval --index-dir DIR`` keeps the index it scores; this opens such indexes
with the real Searcher, encodes each set's judged queries once, and scores dense, lexical and
hybrid at each lexical weight (z-score fusion unless ``--fusion`` says otherwise), so that a
fusion weight is chosen on every dev set together without encoding a corpus again::

    tpsearch eval retrieval --data-dir ../shared/data/beir/pydoc-dev --split dev \\
        --index-dir runs/eval/pydoc-dev
    python benchmarks/fusion_weights.py --set pydoc-dev=runs/eval/pydoc-dev:../shared/data/beir/pydoc-dev \\
        --weights 0.4,0.5,0.6,0.7
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from tpsearch import Searcher
from tpsearch.eval.retrieval import load_beir, score_run
from tpsearch.fusion import FUSIONS, FusionSettings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--set", action="append", required=True, metavar="NAME=INDEX:BEIR[:SPLIT]",
                    help="a kept index and its BEIR directory (split: dev by default)")
    ap.add_argument("--weights", default="0.4,0.5,0.6,0.7")
    ap.add_argument("--fusion", default="zscore", choices=FUSIONS)
    args = ap.parse_args()
    weights = [float(w) for w in args.weights.split(",")]
    table: dict[str, dict[str, float]] = {}
    for spec in args.set:
        name, rest = spec.split("=", 1)
        index, beir, *split = rest.split(":")
        data = load_beir(beir, split[0] if split else "dev")
        judged = [q for q, rels in data.qrels.items() if any(r > 0 for r in rels.values())]
        s = Searcher.open(index)
        vectors = s.encode_queries([data.queries[q] for q in judged])
        k = min(100, len(s))

        def ndcg(mode: str) -> float:
            hits = s.search_batch([data.queries[q] for q in judged], k=k, mode=mode,
                                  query_vectors=vectors)
            run = {q: [h.id for h in hs] for q, hs in zip(judged, hits)}
            return 100 * score_run(run, data.qrels)["ndcg@10"]

        row = {"dense": ndcg("dense"), "lexical": ndcg("lexical")}
        for w in weights:
            s.manifest = replace(s.manifest, fusion=FusionSettings(args.fusion, w))
            row[f"hybrid {args.fusion} {w:g}"] = ndcg("hybrid")
        table[name] = row
    labels = list(next(iter(table.values())))
    print(f"{'nDCG@10 x 100':<22s}" + "".join(f"{n:>14s}" for n in table) + f"{'mean':>10s}")
    for label in labels:
        vals = [table[n][label] for n in table]
        print(f"{label:<22s}" + "".join(f"{v:14.2f}" for v in vals)
              + f"{sum(vals) / len(vals):10.2f}")


if __name__ == "__main__":
    main()

"""Turn STS-B pairs into a small BEIR-format retrieval task.

    python pipelines/stsb_to_beir.py --sts-dir ../shared/data/sts --split test --out runs/stsb-beir

Queries are the first sentences of pairs scored >= 4 (of 5); the corpus is every distinct second
sentence of the split; a query's relevant documents are the second sentences of its pairs scored
>= 4. Identical sentences are merged (one id each).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tpsearch.eval.sts import load_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sts-dir", required=True)
    ap.add_argument("--split", choices=["dev", "test"], default="test")
    ap.add_argument("--min-score", type=float, default=4.0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    pairs = load_task(args.sts_dir, "STSBenchmark" if args.split == "test" else "STSBenchmark-dev")
    if pairs is None:
        raise SystemExit(f"STS-B {args.split} not found under {args.sts_dir}")
    docs: dict[str, str] = {}
    for s in pairs.right:
        docs.setdefault(s, f"d{len(docs)}")
    queries: dict[str, str] = {}
    qrels: dict[str, set[str]] = {}
    for a, b, g in zip(pairs.left, pairs.right, pairs.gold):
        if g >= args.min_score:
            qid = queries.setdefault(a, f"q{len(queries)}")
            qrels.setdefault(qid, set()).add(docs[b])
    (args.out / "qrels").mkdir(parents=True, exist_ok=True)
    with open(args.out / "corpus.jsonl", "w") as f:
        for text, did in docs.items():
            f.write(json.dumps({"_id": did, "title": "", "text": text}) + "\n")
    with open(args.out / "queries.jsonl", "w") as f:
        for text, qid in queries.items():
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
    with open(args.out / "qrels" / "test.tsv", "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for qid, ds in qrels.items():
            for did in sorted(ds):
                f.write(f"{qid}\t{did}\t1\n")
    print(f"{args.out}: {len(docs)} documents, {len(queries)} queries, "
          f"{sum(len(v) for v in qrels.values())} relevant pairs")


if __name__ == "__main__":
    main()

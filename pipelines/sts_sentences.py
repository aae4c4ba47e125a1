"""Unlabeled sentences from STS-B train (both sides of its pairs, first N distinct), one a line:
text to fit a transform on for ``tpsearch eval sts --fit-transform`` without touching dev or test.

    python pipelines/sts_sentences.py --sts-dir ../shared/data/sts --n 3000 --out runs/stsb-train-3000.txt
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sts-dir", required=True)
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    src = Path(args.sts_dir) / "STSBenchmark" / "sts-train.csv"
    if not src.is_file():
        raise SystemExit(f"{src}: not found")
    seen: dict[str, None] = {}
    for line in src.read_text(encoding="utf8").splitlines():
        cols = line.split("\t")
        for text in cols[5:7] if len(cols) >= 7 else []:
            text = " ".join(text.split())
            if text:
                seen.setdefault(text)
        if len(seen) >= args.n:
            break
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(list(seen)[:args.n]) + "\n", encoding="utf8")
    print(f"{min(len(seen), args.n)} sentences -> {args.out}")


if __name__ == "__main__":
    main()

"""Sweep TP settings for one model on STS-B dev (never on test sets).

For each prompt method, one forward pass per setting (vanilla, then each TP layer range, then
each placeholder initialisation) records the last-token state at every layer, so every output
layer is scored from the same pass. Vanilla is scored beside each setting in the same run.

    python benchmarks/sweep_sts_dev.py --model gemma-3-270m --pairs 500 --out docs/sweep.json

Prints a table per prompt (rows: settings; columns: output layers) and writes the raw scores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from tpsearch import TPEncoder
from tpsearch.eval.sts import load_task, spearman_x100, unique_sentences


def sts_dir() -> Path:
    d = Path(os.environ.get("TPSEARCH_STS_DIR", Path(__file__).resolve().parents[2] / "shared/data/sts"))
    if load_task(d, "STSBenchmark-dev") is None:
        sys.exit(f"STS-B dev not found under {d} (set TPSEARCH_STS_DIR)")
    return d


def parse_range(s: str) -> tuple[int, int] | None:
    if s == "vanilla":
        return None
    a, b = s.split(":")
    return int(a), int(b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--pairs", type=int, default=0, help="random subset of dev pairs (0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompts", default="prompteol,pcot,ke")
    ap.add_argument("--ranges", default="vanilla,1:2,1:3,1:4,1:5,1:7,1:9,2:5")
    ap.add_argument("--inits", default="randn", help="placeholder initialisations to try")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    pairs = load_task(sts_dir(), "STSBenchmark-dev")
    if args.pairs:
        keep = np.random.default_rng(args.seed).choice(len(pairs), args.pairs, replace=False)
        pairs.left = [pairs.left[i] for i in keep]
        pairs.right = [pairs.right[i] for i in keep]
        pairs.gold = pairs.gold[keep]
    sentences = unique_sentences([pairs])
    print(f"STS-B dev: {len(pairs)} pairs, {len(sentences)} sentences", flush=True)

    results = json.loads(args.out.read_text()) if args.out.exists() else []
    done = {(r["prompt"], r["tp_layers"], r["init"]) for r in results}
    for prompt in args.prompts.split(","):
        for rng in args.ranges.split(","):
            for init in args.inits.split(","):
                tp = parse_range(rng)
                if tp is None and init != args.inits.split(",")[0]:
                    continue
                key = (prompt, rng, init if tp else "-")
                if key in done:
                    continue
                t0 = time.time()
                enc = TPEncoder.from_pretrained(args.model, prompt=prompt, tp_layers=tp,
                                                output_layer=-1, placeholder_init=init,
                                                quantize="none")
                n = enc.plan.n_layers
                by_layer = enc.encode_layers(sentences, range(1, n), batch_size=args.batch_size)
                scores = {}
                for k, mat in sorted(by_layer.items()):
                    scores[k - (n + 1)] = spearman_x100(pairs, dict(zip(sentences, mat)))
                row = {"prompt": prompt, "tp_layers": rng, "init": key[2], "n_layers": n,
                       "pairs": len(pairs), "scores": {str(k): v for k, v in scores.items()},
                       "seconds": time.time() - t0}
                results.append(row)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(results, indent=1))
                best = max(scores, key=scores.get)
                print(f"{prompt:10s} {rng:8s} {key[2]:6s} -1:{scores[-1]:6.2f} -2:{scores[-2]:6.2f} "
                      f"-3:{scores[-3]:6.2f} best {best}:{scores[best]:6.2f} "
                      f"({row['seconds']:.0f}s)", flush=True)


if __name__ == "__main__":
    main()

"""What batch invariance costs: 0.4's padded length-sorted batches beside batches of one exact
length and tpsearch's batches of one canonical width (each row padded to the width ladder's
next step above its length), on the same encoder and texts, in one run.

For each plan it prints batched throughput (tokens/s over the prompts as encoded), the number
of forward passes, the time to encode a text alone (a query's latency: the canonical width
pads it to the ladder), and the largest difference between a text's vector in the batched
encode and its vector encoded alone (0 means bit-for-bit batch invariance):

    python benchmarks/bench_batch_invariance.py                     # the default model, float32
    python benchmarks/bench_batch_invariance.py --dtype bfloat16 --docs 64
    python benchmarks/bench_batch_invariance.py --model /path/to/tiny --rounds 3
"""

from __future__ import annotations

import argparse
import time
from typing import Sequence

import numpy as np
import pyarrow.parquet as pq

import tpsearch.encoder as encoder_module
from tpsearch import TPEncoder

DEMO = "data/demo/stdlib_docs.parquet"


def padded_plan(lengths: Sequence[int], batch_size: int, max_batch_tokens: int | None = None,
                ladder=None) -> list[list[int]]:
    """tpsearch 0.4's plan: longest first, rows of any length share a batch (padded to the
    longest), so a row's vector depends on its batch-mates' lengths."""
    order = sorted(range(len(lengths)), key=lambda j: lengths[j], reverse=True)
    batches: list[list[int]] = []
    for j in order:
        if batches:
            cur = batches[-1]
            fits = max_batch_tokens is None or (len(cur) + 1) * lengths[cur[0]] <= max_batch_tokens
            if len(cur) < batch_size and fits:
                cur.append(j)
                continue
        batches.append([j])
    return batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--docs", type=int, default=256, help="demo documents (first 600 characters)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds (noisy machines)")
    ap.add_argument("--alone", type=int, default=32, help="texts also encoded alone, to compare")
    args = ap.parse_args()
    texts = [t[:600] for t in pq.read_table(DEMO).column("text").to_pylist()[: args.docs]]
    enc = TPEncoder.from_pretrained(args.model, dtype=args.dtype, device="cpu")
    tokenized = enc.tokenize(texts)
    lengths = [len(r) for r in tokenized.input_ids]
    tokens = sum(lengths)
    plan = encoder_module.plan_batches
    ladder = enc.row_ladder
    # (plan, the ladder rows are padded by: () pads a batch to its longest row)
    plans = {"padded (0.4)": (padded_plan, ()), "exact-length": (plan, ()),
             "canonical": (plan, ladder)}
    rates: dict[str, list[float]] = {name: [] for name in plans}
    single: dict[str, list[float]] = {name: [] for name in plans}
    drift: dict[str, float] = {}
    passes: dict[str, int] = {}
    try:
        for _ in range(args.rounds):
            for name, (how, rungs) in plans.items():
                encoder_module.plan_batches, enc.row_ladder = how, rungs
                t0 = time.perf_counter()
                alone = np.stack([enc.encode([t])[0] for t in texts[: args.alone]])
                single[name].append((time.perf_counter() - t0) * 1e3 / args.alone)
                t0 = time.perf_counter()
                vecs = enc.encode_tokenized(tokenized, batch_size=args.batch_size)
                rates[name].append(tokens / (time.perf_counter() - t0))
                drift[name] = float(np.abs(vecs[: args.alone] - alone).max())
                passes[name] = len(how(lengths, args.batch_size, None, rungs))
    finally:
        encoder_module.plan_batches, enc.row_ladder = plan, ladder
    print(f"{args.model} {args.dtype}: {len(texts)} texts, {tokens} tokens, batch size "
          f"{args.batch_size}, {len(set(lengths))} distinct lengths")
    print(f"{'plan':<14}{'batched tok/s (each round)':>30}{'passes':>8}"
          f"{'alone ms/text':>16}{'max |batched - alone|':>24}")
    for name in plans:
        each = " ".join(f"{r:,.0f}" for r in rates[name])
        print(f"{name:<14}{each:>30}{passes[name]:>8}{np.median(single[name]):>16.1f}"
              f"{drift[name]:>24.3g}")


if __name__ == "__main__":
    main()

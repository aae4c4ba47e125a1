"""Encoding throughput of each bundled model on this machine, side by side in one run.

Each model (its preset: TP range, output layer) encodes the same demo documents (prompted,
max length 256) twice, alternately, after one warm-up batch; prints tokens/s, documents/s and
the process's peak RSS after loading it. Models whose packages are not installed are listed
as such. Example::

    python benchmarks/bench_models.py --docs 64 --models gemma-3-270m,qwen2.5-coder-0.5b
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import time
from pathlib import Path

import pyarrow.parquet as pq

from tpsearch import TPEncoder
from tpsearch.errors import InputError
from tpsearch.devices import cpu_features
from tpsearch.loading import BUNDLED_MODELS

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo" / "stdlib_docs.parquet"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(BUNDLED_MODELS))
    ap.add_argument("--docs", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--json", dest="json_out", default=None, help="also write the rows here")
    args = ap.parse_args()
    texts = pq.read_table(DEMO, columns=["text"]).column("text").to_pylist()[: args.docs]
    print(f"CPU: {cpu_features()}")
    rows = []
    for name in args.models.split(","):
        try:
            enc = TPEncoder.from_pretrained(name, dtype=args.dtype, max_length=256)
        except InputError as exc:
            print(f"{name:<22s} not installed: {exc}")
            continue
        tok = enc.tokenize(texts)
        enc.encode(texts[:8], batch_size=8)  # warm-up
        times = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            enc.encode_tokenized(tok, batch_size=16, max_batch_tokens=4096)
            times.append(time.perf_counter() - t0)
        best = min(times)
        row = {"model": name, "layers": enc.settings.n_layers, "dim": enc.dim,
               "tp_layers": enc.settings.tp_layers, "output_layer": enc.settings.output_layer,
               "dtype": str(enc.dtype).removeprefix("torch."), "tokens": tok.num_tokens,
               "tokens_per_s": round(tok.num_tokens / best, 1),
               "docs_per_s": round(len(texts) / best, 2), "peak_rss_mb": round(peak_rss_mb())}
        rows.append(row)
        print(f"{name:<22s} {row['layers']:>3d} layers  {row['dtype']:<9s} "
              f"{row['tokens_per_s']:>9,.1f} tokens/s  {row['docs_per_s']:>7.2f} docs/s  "
              f"peak RSS {row['peak_rss_mb']:,} MB", flush=True)
        del enc
        gc.collect()
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

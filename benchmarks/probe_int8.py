"""Which int8 variant keeps STS quality on a model: 400 STS-B dev pairs, float32 against
dynamic int8 (torch ``quantize_dynamic``, per-tensor activation scales) of all linear layers,
of all but the MLP's down projection, of the attention projections only, of the MLP only, and
torchao's per-token int8 where torchao is installed. Dev data only.

    python benchmarks/probe_int8.py --sts-dir ../shared/data/sts [--model gemma-3-270m]
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings
from dataclasses import replace

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from tpsearch import TPEncoder
from tpsearch.eval.sts import load_task

VARIANTS = {"all linear": (), "all but down_proj": ("down_proj",),
            "attention only": ("down_proj", "up_proj", "gate_proj"),
            "MLP only": ("q_proj", "k_proj", "v_proj", "o_proj")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sts-dir", required=True)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--pairs", type=int, default=400)
    args = ap.parse_args()
    pairs = load_task(args.sts_dir, "STSBenchmark-dev")
    idx = np.random.default_rng(0).choice(len(pairs), args.pairs, replace=False)
    left, right = [pairs.left[i] for i in idx], [pairs.right[i] for i in idx]
    gold = pairs.gold[idx]
    base = TPEncoder.from_pretrained(args.model)

    def score(enc: TPEncoder) -> tuple[float, float]:
        t0 = time.perf_counter()
        a, b = enc.encode(left), enc.encode(right)
        return 100 * spearmanr((a * b).sum(1), gold).correlation, time.perf_counter() - t0

    def report(name: str, enc: TPEncoder) -> None:
        s, secs = score(enc)
        print(f"{name:<20s} Spearman {s:6.2f}  {secs:6.1f} s", flush=True)

    report("float32", base)
    for name, keep in VARIANTS.items():
        model = copy.deepcopy(base.model)
        names = {n for n, m in model.named_modules()
                 if isinstance(m, nn.Linear) and not any(k in n for k in keep)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.ao.quantization import quantize_dynamic

            quantize_dynamic(model, names, dtype=torch.qint8, inplace=True)
        model._tpsearch_int8 = True
        report(name, TPEncoder.from_settings(replace(base.settings, quantize="int8"), model,
                                             base.tokenizer, base.source))
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError:
        print("torchao not installed: per-token int8 not measured")
        return
    model = copy.deepcopy(base.model)
    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    model._tpsearch_int8 = True
    report("torchao per-token", TPEncoder.from_settings(replace(base.settings, quantize="int8"),
                                                        model, base.tokenizer, base.source))


if __name__ == "__main__":
    main()

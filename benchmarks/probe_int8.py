"""Which int8 variant keeps STS quality on a model: 400 STS-B dev pairs, float32 against
tpsearch's int8 (per-token activation scales, tpsearch.int8; eager and compiled), against
dynamic int8 (torch ``quantize_dynamic``, per-tensor activation scales) of all linear layers,
of all but the MLP's down projection, of the attention projections only, of the MLP only, and
torchao's per-token int8 where torchao is installed, and SmoothQuant-style smoothing before
int8 at ``--alphas``. Dev data only.

    python benchmarks/probe_int8.py --sts-dir ../shared/data/sts [--model gemma-3-270m]
"""

from __future__ import annotations

import argparse
from typing import Callable
from pathlib import Path
import copy
import time
import warnings
from dataclasses import replace

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from tpsearch import TPEncoder
from tpsearch.int8 import quantize_int8
from tpsearch.eval.sts import load_task

VARIANTS = {"all linear": (), "all but down_proj": ("down_proj",),
            "attention only": ("down_proj", "up_proj", "gate_proj"),
            "MLP only": ("q_proj", "k_proj", "v_proj", "o_proj")}


# ---- SmoothQuant-style smoothing (Xiao et al., 2023), tried here and not adopted: per input
# channel j of a linear layer, activations are divided by s_j and the weights' column j
# multiplied by it (folded into the RMSNorm before q/k/v and gate/up, and into up_proj before
# down_proj), moving per-channel activation outliers into the per-channel int8 weights.
#: Migration strength (SmoothQuant's alpha): 0 keeps the activations, 1 moves all to weights.
DEFAULT_ALPHA = 0.5


def _norm_scale_absorb(norm: nn.Module, s: torch.Tensor) -> None:
    """Divide the norm's output channels by ``s`` through its weight."""
    w = norm.weight.data
    if "Gemma" in type(norm).__name__:  # output = x_hat * (1 + w)
        norm.weight.data = ((1.0 + w.float()) / s - 1.0).to(w.dtype)
    else:  # output = x_hat * w
        norm.weight.data = (w.float() / s).to(w.dtype)


def smoothing_groups(layer: nn.Module) -> list[tuple[nn.Module, list[nn.Linear]]]:
    """(the module whose output feeds them, the linear layers reading it) of one decoder layer,
    for the layers this knows how to smooth (Llama, Mistral, Qwen2/3, Gemma 2/3 names)."""
    groups = []
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    norm = getattr(layer, "input_layernorm", None)
    if attn is not None and norm is not None and all(hasattr(attn, p) for p in
                                                      ("q_proj", "k_proj", "v_proj")):
        groups.append((norm, [attn.q_proj, attn.k_proj, attn.v_proj]))
    pre_mlp = getattr(layer, "pre_feedforward_layernorm", None) or \
        getattr(layer, "post_attention_layernorm", None)
    if mlp is not None and pre_mlp is not None and all(hasattr(mlp, p) for p in
                                                        ("gate_proj", "up_proj", "down_proj")):
        groups.append((pre_mlp, [mlp.gate_proj, mlp.up_proj]))
        groups.append((mlp.up_proj, [mlp.down_proj]))
    return groups


@torch.inference_mode()
def smooth_activations(layers: nn.ModuleList, calibrate: Callable[[], None],
                       alpha: float = DEFAULT_ALPHA) -> int:
    """Measure each smoothed linear layer's largest input per channel while ``calibrate()``
    runs the model on sample texts, then migrate (see the module); returns the number of
    linear layers changed. Run before quantising."""
    groups = [g for layer in layers for g in smoothing_groups(layer)]
    peaks: dict[int, torch.Tensor] = {}

    def record(module, args):
        x = args[0].detach().float().abs().reshape(-1, args[0].shape[-1]).amax(0)
        key = id(module)
        peaks[key] = x if key not in peaks else torch.maximum(peaks[key], x)

    handles = [lin.register_forward_pre_hook(record) for _, lins in groups for lin in lins[:1]]
    try:
        calibrate()
    finally:
        for h in handles:
            h.remove()
    changed = 0
    for before, lins in groups:
        act = peaks.get(id(lins[0]))
        if act is None:
            continue  # layers past the output layer never run
        w = torch.stack([lin.weight.data.float().abs().amax(0) for lin in lins]).amax(0)
        s = (act.clamp(min=1e-5) ** alpha / w.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)
        for lin in lins:
            lin.weight.data = (lin.weight.data.float() * s).to(lin.weight.dtype)
        if isinstance(before, nn.Linear):  # the up projection: its output rows
            before.weight.data = (before.weight.data.float() / s[:, None]).to(before.weight.dtype)
            if before.bias is not None:
                before.bias.data = (before.bias.data.float() / s).to(before.bias.dtype)
        else:
            _norm_scale_absorb(before, s)
        changed += len(lins)
    return changed



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sts-dir", required=True)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--pairs", type=int, default=400)
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.5, 0.8],
                    help="SmoothQuant migration strengths tried (tpsearch.smoothing)")
    ap.add_argument("--calibration", type=int, default=128, help="demo texts to calibrate on")
    ap.add_argument("--only-smooth", action="store_true", help="skip the unsmoothed variants")
    ap.add_argument("--only-per-token", action="store_true", help="float32 and tpsearch's int8 only")
    ap.add_argument("--compile", action="store_true", help="also tpsearch's int8 compiled")
    args = ap.parse_args()
    pairs = load_task(args.sts_dir, "STSBenchmark-dev")
    idx = np.random.default_rng(0).choice(len(pairs), args.pairs, replace=False)
    left, right = [pairs.left[i] for i in idx], [pairs.right[i] for i in idx]
    gold = pairs.gold[idx]
    base = TPEncoder.from_pretrained(args.model, quantize="none")

    def score(enc: TPEncoder) -> tuple[float, float]:
        t0 = time.perf_counter()
        a, b = enc.encode(left), enc.encode(right)
        return 100 * spearmanr((a * b).sum(1), gold).correlation, time.perf_counter() - t0

    def report(name: str, enc: TPEncoder) -> None:
        s, secs = score(enc)
        print(f"{name:<20s} Spearman {s:6.2f}  {secs:6.1f} s", flush=True)

    report("float32", base)
    per_token = TPEncoder.from_settings(replace(base.settings, quantize="int8"),
                                        quantize_int8(copy.deepcopy(base.model), base.tokenizer),
                                        base.tokenizer, base.source)
    report("per-token (tpsearch)", per_token)
    if args.compile:
        per_token.compile_layers()
        per_token.encode(left[:64])  # compiles the common shapes
        report("per-token, compiled", per_token)
    if args.only_per_token:
        return
    for name, keep in ({} if args.only_smooth else VARIANTS).items():
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
    import pyarrow.parquet as pq


    demo = pq.read_table(Path(__file__).resolve().parents[1] / "data" / "demo" /
                         "stdlib_docs.parquet", columns=["text"]).column("text").to_pylist()
    calibration = [t[:400] for t in demo[:: max(1, len(demo) // args.calibration)]]
    for alpha in args.alphas:
        for name, keep in (("all linear", ()), ("all but o_proj", ("o_proj",))):
            enc = TPEncoder.from_settings(base.settings, copy.deepcopy(base.model),
                                          base.tokenizer, base.source)
            smooth_activations(enc.layers, lambda: enc.encode(calibration), alpha)
            names = {n for n, m in enc.model.named_modules()
                     if isinstance(m, nn.Linear) and not any(k in n for k in keep)
                     and "lm_head" not in n}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from torch.ao.quantization import quantize_dynamic

                quantize_dynamic(enc.model, names, dtype=torch.qint8, inplace=True)
            enc.model._tpsearch_int8 = True
            report(f"smooth a={alpha} {name}", TPEncoder.from_settings(
                replace(base.settings, quantize="int8"), enc.model, base.tokenizer, base.source))
    report("float32 (again)", base)
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

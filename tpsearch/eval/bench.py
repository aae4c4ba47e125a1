"""Encoder throughput benchmark: vanilla vs TP, with and without early exit, against the
machine's own matrix-product rate.

Variants (all on one loaded model, measured alternately over ``rounds`` so drift hits each):

* ``vanilla_last``: no TP, final layer (full depth);
* ``vanilla_exit``: no TP, the configured output layer (layers after it not run);
* ``tp_exit``: TP, the configured output layer;
* ``tp_full``: TP, final layer (full depth);
* on a float32 CPU model also ``tp_exit_int8``/``vanilla_exit_int8`` (int8 linear layers with
  per-token activation scales, :mod:`tpsearch.int8`) and, where the CPU has bf16 matrix
  instructions, ``tp_exit_bf16``/``vanilla_exit_bf16``, on copies of the model.

The machine limit is a matrix product timed on the spot in each dtype measured (float32, bfloat16
and int8 on a CPU; the loaded dtype on a GPU),
turned into tokens/s at 2 x non-embedding parameters FLOPs per token (attention's own
quadratic term is left out, so the limit is slightly optimistic).
"""

from __future__ import annotations

import copy
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch

from ..encoder import TPEncoder
from ..int8 import Int8Linear, quantize_int8
from ..shapes import padding_efficiency, plan_batches, plan_buckets
from ..devices import cpu_features, resolve_dtype, resolve_quantize
from ..errors import InputError


def demo_corpus() -> Path | None:
    """The bundled demo corpus in a source checkout (not installed with the package), or None."""
    path = Path(__file__).resolve().parents[2] / "data" / "demo" / "stdlib_docs.parquet"
    return path if path.is_file() else None


def bench_texts(path: str | Path) -> list[str]:
    """The non-empty texts of a Parquet file's ``text`` column, each with its ``title`` joined
    before it where the file has one (as a build with ``--title-column title`` embeds them)."""
    import pyarrow.parquet as pq


    from ..pipeline.reader import join_title

    table = pq.read_table(path)
    if "text" not in table.column_names:
        raise InputError(f"{path}: no 'text' column")
    texts = table.column("text").to_pylist()
    if "title" in table.column_names:
        texts = [join_title(t, x) for t, x in zip(table.column("title").to_pylist(), texts)]
    return [t for t in texts if t and t.strip()]


def _rate(product, make, size: int, seconds: float, sync=lambda: None) -> float:
    """Sustained OP/s of ``product(*make(n))`` (2 n^3 operations each) for the largest n up to
    ``size`` (doubling from 256) whose one product takes under a sixteenth of ``seconds``: a
    machine that emulates a dtype slowly (bfloat16 without matrix units: 25 s for one 2048
    product on an AVX2 EPYC) is measured on smaller products instead of for minutes."""
    n = min(256, size)
    while True:
        args = make(n)
        product(*args)  # warm-up
        sync()
        t0 = time.perf_counter()
        product(*args)
        sync()
        once = time.perf_counter() - t0
        if n >= size or once * 16 >= seconds:
            break
        n *= 2
    count, t0 = 0, time.perf_counter()
    while True:
        product(*args)
        count += 1
        if count % 4 == 0 or once * 4 >= seconds:
            sync()
            if time.perf_counter() - t0 >= seconds:
                break
    return 2 * n**3 * count / (time.perf_counter() - t0)


def int8_matmul_ops(size: int = 2048, seconds: float = 2.0) -> float:
    """Sustained int8 OP/s of the int8 path's linear layer (:class:`~tpsearch.int8.Int8Linear`:
    per-token quantising, integer product, rescaling), float32 in and out."""
    def make(n):
        return Int8Linear.from_linear(torch.nn.Linear(n, n, bias=False)), torch.randn(n, n)

    with torch.inference_mode():
        return _rate(lambda lin, x: lin(x), make, size, seconds)


def matmul_flops(device: torch.device, dtype: torch.dtype, size: int = 2048, seconds: float = 2.0) -> float:
    """Sustained FLOP/s of a square matrix product on ``device``."""
    def make(n):
        return (torch.randn(n, n, device=device, dtype=dtype),
                torch.randn(n, n, device=device, dtype=dtype))

    return _rate(lambda a, b: a @ b, make, size, seconds, lambda: _sync(device))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def layer_params(encoder: TPEncoder) -> tuple[int, int]:
    """(parameters of all decoder layers, of one layer on average)."""
    total = sum(p.numel() for p in encoder.layers.parameters())
    return total, total // len(encoder.layers)


def auto_defaults(encoder: TPEncoder) -> dict:
    """What ``dtype="auto"`` and ``quantize="auto"`` resolve to for the encoder's model on its
    device here."""
    preset = getattr(encoder, "preset", None)
    return {"dtype": str(resolve_dtype("auto", encoder.device)).removeprefix("torch."),
            "quantize": resolve_quantize("auto", "auto", encoder.device,
                                         bool(preset and preset.int8))}


def bf16_in_hardware() -> bool:
    """Whether this CPU has bf16 matrix instructions (AMX tiles or AVX-512 BF16)."""
    f = cpu_features()
    return bool(f["amx"] or f["avx512_bf16"])


def _variant_encoders(base: TPEncoder, output_layer: int, tp_layers,
                     other_dtypes: bool) -> dict[str, TPEncoder]:
    """The four depth/TP variants in the loaded dtype; on a float32 CPU model also TP (and
    vanilla) with early exit in int8 (per-token activations) and, where the CPU multiplies
    bf16 in hardware, in bfloat16, on copies of the model."""
    out = {
        "vanilla_last": base.variant(tp_layers=None, output_layer=-1),
        "vanilla_exit": base.variant(tp_layers=None, output_layer=output_layer),
        "tp_exit": base.variant(tp_layers=tp_layers, output_layer=output_layer),
        "tp_full": base.variant(tp_layers=tp_layers, output_layer=-1),
    }
    if other_dtypes:
        others = [("int8", quantize_int8(copy.deepcopy(base.model), base.tokenizer), "int8")]
        if bf16_in_hardware():  # emulated bf16 runs ~40x slower than float32: minutes a round
            others.insert(0, ("bf16", copy.deepcopy(base.model).to(torch.bfloat16), None))
        for name, model, quant in others:
            for kind, layers in (("tp_exit", tp_layers), ("vanilla_exit", None)):
                settings = replace(base.settings, tp_layers=layers, output_layer=output_layer,
                                   quantize=quant)
                out[f"{kind}_{name}"] = TPEncoder.from_settings(settings, model, base.tokenizer,
                                                                base.source)
    return out


def corpus_padding_efficiency(encoder: TPEncoder, texts: Sequence[str], batch_size: int,
                              max_batch_tokens: int | None, window: int) -> float:
    """Real / computed tokens when a build batches ``texts``: sorted within windows of
    ``window`` corpus rows (the build's shards), then cut as ``encode`` cuts them."""
    real = computed = 0
    for start in range(0, len(texts), window):
        lengths = [len(r) for r in encoder.tokenize(list(texts[start:start + window])).input_ids]
        real += sum(lengths)
        batches = plan_batches(lengths, batch_size, max_batch_tokens, encoder.row_ladder)
        computed += round(sum(lengths) / padding_efficiency(lengths, batches, encoder.row_ladder))
    return real / computed if computed else 1.0


def time_variants(variants: dict[str, TPEncoder], texts: Sequence[str], rounds: int,
                  batch_size: int, max_batch_tokens: int | None) -> tuple[dict, dict, dict]:
    """Best seconds of each variant over ``rounds`` alternating rounds, its tokenisation, and
    its warm-up seconds (graph capture and compilation included)."""
    tokenized = {k: v.tokenize(list(texts)) for k, v in variants.items()}
    warmup: dict[str, float] = {}
    for k, v in variants.items():  # warm-up (fixed shapes: every shape, so graphs are captured)
        t0 = time.perf_counter()
        if v.batching == "sorted":
            v.encode(list(texts[:batch_size]), batch_size=batch_size)
        else:
            v.encode_tokenized(tokenized[k], batch_size=batch_size, max_batch_tokens=max_batch_tokens)
        _sync(v.device)
        warmup[k] = time.perf_counter() - t0
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for k, v in variants.items():
            _sync(v.device)
            t0 = time.perf_counter()
            v.encode_tokenized(tokenized[k], batch_size=batch_size, max_batch_tokens=max_batch_tokens)
            _sync(v.device)
            times[k].append(time.perf_counter() - t0)
    return {k: min(t) for k, t in times.items()}, tokenized, warmup


def machine_rates(device: torch.device, dtype: torch.dtype, seconds: float) -> dict[str, float]:
    """Matrix-product rates measured on the spot: the loaded dtype's, and on a CPU also
    bfloat16 and int8 (whatever the loaded dtype)."""
    # A GPU needs large products to reach its rate; 2048 is already plenty for a CPU.
    rates = {str(dtype).removeprefix("torch."): matmul_flops(
        device, dtype, size=8192 if device.type == "cuda" else 2048, seconds=seconds)}
    if device.type == "cpu":
        rates.setdefault("bfloat16", matmul_flops(device, torch.bfloat16, seconds=seconds))
        rates["int8"] = int8_matmul_ops(seconds=seconds)
    return rates


def run_bench(
    texts: Sequence[str],
    encoder: TPEncoder,
    rounds: int = 2,
    batch_size: int = 32,
    max_batch_tokens: int | None = None,
    matmul_seconds: float = 2.0,
    corpus_texts: Sequence[str] | None = None,
    window: int = 2048,
    other_dtypes: bool = True,
    batchings: Sequence[str] = (),
    compile_pass: bool = False,
) -> dict:
    """Measure the variants on ``texts``; returns the figures as a dict.

    With ``batchings`` (other than the encoder's own), the four depth/TP variants are measured
    again with each, as ``tp_exit/graphs`` and so on, in the same alternating rounds. With
    ``compile_pass``, the decoder layers of each model measured are then compiled and
    ``vanilla_last``, ``tp_exit`` (and ``tp_exit_bf16``, ``tp_exit_int8``) measured again as ``...+compiled``;
    that pass comes last because compiling changes the shared model in place.

    With ``corpus_texts`` (the whole corpus ``texts`` were taken from), the padding efficiency
    a build of that corpus gets with these batch settings is reported as well.
    """
    s = encoder.settings
    if s.tp_layers is None:
        raise InputError("the benchmark compares TP with vanilla: give a TP setting")
    variants = bench_variants(encoder, other_dtypes, batchings)
    best, tokenized, warmup = time_variants(variants, texts, rounds, batch_size, max_batch_tokens)
    if compile_pass:
        compiled_pass(variants, best, tokenized, warmup, texts, rounds, batch_size, max_batch_tokens)
    rates = machine_rates(encoder.device, encoder.dtype, matmul_seconds)
    result: dict = {"variants": variant_figures(encoder, variants, best, tokenized, warmup, rates,
                                                len(texts))}
    lengths = [len(r) for r in tokenized["tp_exit"].input_ids]
    result.update(summary(encoder, variants, result["variants"], rates, lengths, len(texts),
                          rounds, batch_size, max_batch_tokens, window, corpus_texts))
    return result


def bench_variants(encoder: TPEncoder, other_dtypes: bool, batchings: Sequence[str]) -> dict:
    """The encoders measured: depth/TP variants, other dtypes on a float32 CPU model, and
    the depth/TP variants again with each other batching."""
    s = encoder.settings
    other = (other_dtypes and encoder.device.type == "cpu" and encoder.dtype == torch.float32
             and not s.quantize)
    variants = _variant_encoders(encoder, s.output_layer, s.tp_layers, other)
    for b in [b for b in batchings if b != encoder.batching]:
        for k in ("vanilla_last", "vanilla_exit", "tp_exit", "tp_full"):
            variants[f"{k}/{b}"] = variants[k].variant()
            variants[f"{k}/{b}"].batching = b
    return variants


def compiled_pass(variants: dict, best: dict, tokenized: dict, warmup: dict, texts, rounds: int,
                  batch_size: int, max_batch_tokens: int | None) -> None:
    """Compile the models of vanilla_last, tp_exit (and tp_exit_bf16, tp_exit_int8) and time
    them again as ``...+compiled``; adds to the four dicts in place."""
    again = {f"{k}+compiled": variants[k].variant()
             for k in ("vanilla_last", "tp_exit", "tp_exit_bf16", "tp_exit_int8") if k in variants}
    for v in again.values():
        v.compile_layers()
    more = time_variants(again, texts, rounds, batch_size, max_batch_tokens)
    variants.update(again)
    for have, new in zip((best, tokenized, warmup), more):
        have.update(new)


def variant_figures(encoder: TPEncoder, variants: dict, best: dict, tokenized: dict, warmup: dict,
                    rates: dict, documents: int) -> dict:
    """Per variant: rates, tokens, layers run, dtype and the share of the matmul rate."""
    _, per_layer = layer_params(encoder)
    out = {}
    for k, v in variants.items():
        toks = tokenized[k].num_tokens
        rate = rates["int8" if v.settings.quantize else str(v.dtype).removeprefix("torch.")]
        layers_run = v.plan.output_index
        out[k] = {
            "tokens_per_s": toks / best[k], "docs_per_s": documents / best[k], "seconds": best[k],
            "warmup_seconds": warmup[k],
            "tokens": toks, "layers_run": layers_run, "dtype": "int8" if v.settings.quantize
            else str(v.dtype).removeprefix("torch."),
            "output_layer": v.settings.output_layer, "tp_layers": v.settings.tp_layers,
            "achieved_fraction": min(1.0, (toks / best[k]) / (rate / (2 * per_layer * max(1, layers_run)))),
        }
    return out


def summary(encoder: TPEncoder, variants: dict, vr: dict, rates: dict, lengths: list[int],
            documents: int, rounds: int, batch_size: int, max_batch_tokens: int | None,
            window: int, corpus_texts: Sequence[str] | None) -> dict:
    """The run's figures beside the variants': machine limits, padding, speed-ups."""
    s, dev = encoder.settings, encoder.device
    all_params, _ = layer_params(encoder)
    flops = rates[str(encoder.dtype).removeprefix("torch.")]
    # Per document, not per token: TP's prompt carries the extra <PST> token(s).
    return {
        "model": s.model, "device": str(dev), "documents": documents, "rounds": rounds,
        "batch_size": batch_size, "max_batch_tokens": max_batch_tokens, "window": window,
        "cpu": cpu_features() if dev.type == "cpu" else None,
        "auto_defaults": auto_defaults(encoder),
        "padding_efficiency": padding_efficiency(
            lengths, plan_batches(lengths, batch_size, max_batch_tokens, encoder.row_ladder),
            encoder.row_ladder),
        "corpus_documents": len(corpus_texts) if corpus_texts is not None else None,
        "corpus_padding_efficiency": (
            corpus_padding_efficiency(variants["tp_exit"], corpus_texts, batch_size, max_batch_tokens, window)
            if corpus_texts is not None else None),
        "matmul_flops_per_s": flops,
        "matmul_rates": rates,
        "machine_limits_tokens_per_s": {k: r / (2 * all_params) for k, r in rates.items()},
        "non_embedding_params": all_params,
        "machine_limit_tokens_per_s": flops / (2 * all_params),
        "achieved_fraction": min(1.0, vr["vanilla_last"]["tokens_per_s"] / (flops / (2 * all_params))),
        "tp_cost_vs_vanilla_exit": vr["vanilla_exit"]["docs_per_s"] / vr["tp_exit"]["docs_per_s"] - 1.0,
        "tp_exit_speedup_vs_vanilla_last": vr["tp_exit"]["docs_per_s"] / vr["vanilla_last"]["docs_per_s"],
        "speedup_vs_float32_tp_exit": {k: vr[k]["docs_per_s"] / vr["tp_exit"]["docs_per_s"]
                                       for k in vr if k.startswith("tp_exit_")},
        "batching": encoder.batching,
        "bucketed_padding_efficiency": bucketed_padding_efficiency(
            variants["tp_exit"], lengths, batch_size, max_batch_tokens),
        "speedup_by_batching": {k.split("/")[1]: vr[k]["docs_per_s"] / vr["tp_exit"]["docs_per_s"]
                                for k in vr if k.startswith("tp_exit/")},
        "speedup_compiled": {k: vr[k]["docs_per_s"] / vr[k.removesuffix("+compiled")]["docs_per_s"]
                             for k in vr if k.endswith("+compiled")},
        "graphs": {k: {"shapes": v.shape_runner.shapes_captured, "capture_failures": {
                       f"{r}x{w}": why for (r, w), why in v.shape_runner.capture_failures.items()}}
                   for k, v in variants.items() if v.batching == "graphs"},
    }


def bucketed_padding_efficiency(encoder: TPEncoder, lengths: Sequence[int], batch_size: int,
                                max_batch_tokens: int | None) -> float:
    """Real / computed tokens with fixed shapes (filler rows count as computed)."""
    batches, over = plan_buckets(lengths, batch_size, max_batch_tokens, encoder.fixed_widths())
    computed = sum(b.rows * b.width for b in batches)
    longer = [lengths[j] for j in over]
    rest = plan_batches(longer, batch_size, max_batch_tokens, encoder.row_ladder)
    computed += sum(len(b) * max(longer[j] for j in b) for b in rest)
    return sum(lengths) / computed if computed else 1.0


def format_bench(r: dict) -> str:
    """A table of the variants and the summary figures."""
    lines = [f"model {r['model']} on {r['device']}: {r['documents']} documents, best of {r['rounds']} "
             f"alternating rounds, batch size {r['batch_size']}, max batch tokens {r['max_batch_tokens']}",
             f"{'variant':18s} {'TP':>6s} {'out':>4s} {'layers':>6s} {'tokens/s':>10s} {'docs/s':>8s} {'of limit':>8s}"]
    for k, v in r["variants"].items():
        tp = f"{v['tp_layers'][0]}:{v['tp_layers'][1]}" if v["tp_layers"] else "-"
        lines.append(f"{k:18s} {tp:>6s} {v['output_layer']:>4d} {v['layers_run']:>6d} "
                     f"{v['tokens_per_s']:>10.1f} {v['docs_per_s']:>8.2f} {v['achieved_fraction']:>8.1%}")
    lines += [
        f"padding efficiency (real / computed tokens): {r['padding_efficiency']:.1%} on the measured documents"
        + (f"; {r['corpus_padding_efficiency']:.1%} for a build of the whole corpus "
           f"({r['corpus_documents']} documents, sorted within {r.get('window', 2048)}-row shards)"
           if r.get("corpus_padding_efficiency") is not None else ""),
        f"matrix product: {r['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s -> machine limit "
        f"{r['machine_limit_tokens_per_s']:.1f} tokens/s at full depth "
        f"({r['non_embedding_params'] / 1e6:.1f}M non-embedding parameters); "
        f"vanilla_last reaches {r['achieved_fraction']:.1%}",
        f"TP cost per document over vanilla at the same exit: {r['tp_cost_vs_vanilla_exit']:+.1%}; "
        f"tp_exit vs vanilla_last: {r['tp_exit_speedup_vs_vanilla_last']:.2f}x the documents/s",
    ]
    if r.get("cpu"):
        c = r["cpu"]
        lines.append(f"CPU: {c['capability']} kernels; AMX {'yes' if c['amx'] else 'no'}, AVX-512 BF16 "
                     f"{'yes' if c['avx512_bf16'] else 'no'}, VNNI {'yes' if c['vnni'] else 'no'}; rates "
                     + ", ".join(f"{k} {v / 1e9:.0f} G/s" for k, v in r["matmul_rates"].items()))
    if r.get("auto_defaults"):
        d = r["auto_defaults"]
        lines.append(f"here dtype auto means {d['dtype']} and quantize auto means {d['quantize'] or 'none'}")
    if r.get("speedup_by_batching"):
        lines.append(f"fixed shapes: padding efficiency {r['bucketed_padding_efficiency']:.1%}; tp_exit "
                     + ", ".join(f"{k} {x:.2f}x" for k, x in r["speedup_by_batching"].items())
                     + f" the documents/s of {r['batching']}")
    for k, x in r.get("speedup_compiled", {}).items():
        lines.append(f"{k}: {x:.2f}x the documents/s of {k.removesuffix('+compiled')} "
                     f"(compiling took {r['variants'][k]['warmup_seconds']:.1f} s of its warm-up)")
    for k, g in r.get("graphs", {}).items():
        if g["capture_failures"]:
            lines.append(f"{k}: {len(g['capture_failures'])} shape(s) could not be captured and ran "
                         f"eagerly: {next(iter(g['capture_failures'].values()))}")
    for k, x in r.get("speedup_vs_float32_tp_exit", {}).items():
        lines.append(f"{k}: {x:.2f}x the documents/s of tp_exit in {r['device']} "
                     f"{r['variants']['tp_exit'].get('dtype', '')}")
    return "\n".join(lines)

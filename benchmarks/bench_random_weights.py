"""Encoder throughput of a model architecture at random weights (no download needed).

    python benchmarks/bench_random_weights.py --arch gemma-3-270m --batch-size 256
    python benchmarks/bench_random_weights.py --arch llama-2-7b --device cuda --batch-size 256

Speed does not depend on the weights' values, so an architecture built from its config with
random weights (bf16 on a GPU, fp32 on CPU) measures what the real model would reach. This is
how the 7B-class figures were taken on a lent GPU where no weights can be fetched. The same
``run_bench`` as ``tpsearch bench`` runs (vanilla vs TP, with and without early exit, against
the device's matrix-product rate), on the demo corpus, with the tokenizer from ``--tokenizer``
(default: the bundled default model's).

Architectures: ``gemma-3-270m`` (the default model's own config), and the paper's 7B-class
models with their TP presets: ``llama-2-7b`` (TP 1..7, output layer 27), ``qwen2-7b``
(TP 1..6, output layer -2).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

# Published configs of the paper's 7B-class models (only what differs from transformers' defaults).
ARCHS: dict[str, dict] = {
    "llama-2-7b": dict(model_type="llama", hidden_size=4096, intermediate_size=11008,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                       rms_norm_eps=1e-5, max_position_embeddings=4096, tp_layers=(1, 7), output_layer=27),
    "qwen2-7b": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944,
                     num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                     rms_norm_eps=1e-6, max_position_embeddings=32768, tp_layers=(1, 6), output_layer=-2),
}


def _tokenizer_dir(given: str | None) -> Path:
    if given:
        return Path(given)
    from tpsearch.loading import DEFAULT_MODEL, gguf_cache_entry, resolve_source

    return gguf_cache_entry(resolve_source(DEFAULT_MODEL))


def build_model(arch: str, tokenizer_dir: Path, device: torch.device, dtype: torch.dtype):
    """(random-weight bare decoder on ``device``, TP layers, output layer) for ``arch``."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from tpsearch.presets import find_preset

    if arch == "gemma-3-270m":
        config = AutoConfig.from_pretrained(tokenizer_dir)
        preset = find_preset("gemma-3-270m")
        tp_layers, output_layer = preset.tp_layers, preset.output_layer
    else:
        spec = dict(ARCHS[arch])
        tp_layers, output_layer = spec.pop("tp_layers"), spec.pop("output_layer")
        config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config.vocab_size = max(getattr(config, "vocab_size", 0) or 0, len(tokenizer))
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModel.from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.eval().requires_grad_(False)
    return model, tokenizer, tp_layers, output_layer


def profile_pass(enc, texts, batch_size: int, max_batch_tokens: int | None) -> str:
    """Kernel and operator times of one encoding pass, the most expensive first."""
    from torch.profiler import ProfilerActivity, profile

    tokenized = enc.tokenize(list(texts))
    enc.encode_tokenized(tokenized, batch_size=batch_size, max_batch_tokens=max_batch_tokens)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        enc.encode_tokenized(tokenized, batch_size=batch_size, max_batch_tokens=max_batch_tokens)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    key = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="gemma-3-270m", choices=["gemma-3-270m", *ARCHS])
    ap.add_argument("--tokenizer", default=None, help="Directory with the tokenizer (and, for "
                    "gemma-3-270m, config.json). Default: the bundled default model's.")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default=None, help="Default: bf16 on a GPU, fp32 on CPU.")
    ap.add_argument("--docs", type=int, default=2000, help="Demo-corpus documents to encode.")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--max-batch-tokens", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concat", type=int, default=1, help="Join this many consecutive demo "
                    "documents into one (8: about 250 tokens, a build's default passage size).")
    ap.add_argument("--batching", default="sorted", help="Comma-separated batchings measured side "
                    "by side (sorted, bucketed, graphs); the first is the reference.")
    ap.add_argument("--compile", action="store_true", help="Then compile the decoder layers and "
                    "measure vanilla_last and tp_exit again (+compiled), with the first --batching.")
    ap.add_argument("--profile", default=None, help="Write the top kernels of one tp_exit pass "
                    "(first --batching) to this file (torch.profiler).")
    ap.add_argument("--json", dest="json_out", default=None, help="Also write the figures here.")
    args = ap.parse_args()

    from tpsearch.eval.bench import bench_texts, demo_corpus, format_bench, run_bench
    from tpsearch.encoder import TPEncoder
    from tpsearch.devices import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    tok_dir = _tokenizer_dir(args.tokenizer)
    model, tokenizer, tp_layers, output_layer = build_model(args.arch, tok_dir, device, dtype)
    if demo_corpus() is None:
        raise SystemExit("no demo corpus (data/demo/stdlib_docs.parquet): run from a source checkout")
    docs = bench_texts(demo_corpus())
    k = max(1, args.concat)
    texts = [" ".join(docs[i:i + k]) for i in range(0, len(docs), k)][: args.docs]
    enc = TPEncoder(model, tokenizer, prompt="prompteol", tp_layers=tp_layers,
                    output_layer=output_layer, model_name=f"{args.arch} (random weights)")
    batchings = [b.strip() for b in args.batching.split(",") if b.strip()]
    enc.batching = batchings[0]
    result = run_bench(texts, enc, rounds=args.rounds, batch_size=args.batch_size,
                       max_batch_tokens=args.max_batch_tokens, batchings=batchings[1:],
                       compile_pass=args.compile)
    result["concat"] = k
    if args.profile:
        Path(args.profile).write_text(profile_pass(enc, texts, args.batch_size, args.max_batch_tokens))
    result.update({"arch": args.arch, "dtype": str(dtype).removeprefix("torch."),
                   "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                   "tokenizer": str(tok_dir)})
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1))
    print(f"{args.arch} at random weights, {result['dtype']}, {result['gpu'] or device}")
    print(format_bench(result))


if __name__ == "__main__":
    main()

"""Tiny randomly initialised decoders built from configs (no download), for tests and
benchmarks, as sentence-transformers keeps tiny models for its own tests."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .loading import hub_progress


def tiny_tokenizer(texts: Sequence[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts) * 3, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def tiny_config(arch: str, vocab_size: int, sliding_window: int | None = None):
    """A 6-layer, 64-wide config of the given architecture, with small sliding windows (8, or
    ``sliding_window`` where given) for the architectures that have them."""
    from transformers import AutoConfig

    common = dict(vocab_size=vocab_size, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if arch == "gpt2":
        return AutoConfig.for_model("gpt2", n_embd=64, n_layer=6, n_head=4, n_positions=512,
                                    **common)
    kw = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=512, **common)
    if arch in ("gemma2", "gemma3_text", "qwen3"):
        kw["head_dim"] = 16
    if arch in ("gemma2", "gemma3_text", "mistral"):
        kw["sliding_window"] = sliding_window or 8
    if arch == "gemma3_text":
        kw["layer_types"] = ["sliding_attention", "sliding_attention", "full_attention"] * 2
    return AutoConfig.for_model(arch, **kw)


def save_tiny_model(path: Path, arch: str, texts: Sequence[str], seed: int = 0,
                    sliding_window: int | None = None, with_head: bool = False) -> Path:
    """A 6-layer, 64-wide ``arch`` decoder with a 400-token BPE tokenizer trained on ``texts``,
    saved as a transformers directory at ``path`` (as a causal LM, output head included, with
    ``with_head``)."""
    from transformers import AutoModel, AutoModelForCausalLM

    tokenizer = tiny_tokenizer(texts)
    torch.manual_seed(seed)
    auto = AutoModelForCausalLM if with_head else AutoModel
    model = auto.from_config(tiny_config(arch, len(tokenizer), sliding_window))
    with hub_progress(False):
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return Path(path)

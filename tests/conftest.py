"""Shared fixtures: tiny randomly initialised decoders built from configs (no download)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

TINY_ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "gpt2"]

CORPUS = [
    "A man is playing a guitar.",
    "A woman is slicing an onion in the kitchen.",
    "The stock market fell sharply on Monday.",
    "Two dogs run across a snowy field?",
    'She said "hello" and left',
    "Children are playing football in the park.",
    "This sentence : means in one word:",
    "After thinking step by step , the essence of a sentence is often captured by its main "
    "subjects and actions, while descriptive terms provide additional but less central details.",
    "In this task, you're given a review from an online platform. Your task is to categorize "
    "the excerpt into a broad category such as Education, Technology, Health.",
]


def _tokenizer():
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
    tok.train_from_iterator(CORPUS * 3, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def tiny_config(arch: str, vocab_size: int):
    """A 6-layer, 64-wide config of the given architecture, with small sliding windows."""
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
        kw["sliding_window"] = 8
    if arch == "gemma3_text":
        kw["layer_types"] = ["sliding_attention", "sliding_attention", "full_attention"] * 2
    return AutoConfig.for_model(arch, **kw)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Factory: ``tiny_model_dir(arch)`` -> a saved transformers directory (model + tokenizer)."""
    from transformers import AutoModel

    made: dict[str, Path] = {}

    def make(arch: str) -> Path:
        if arch not in made:
            tokenizer = _tokenizer()
            torch.manual_seed(0)
            model = AutoModel.from_config(tiny_config(arch, len(tokenizer)))
            path = tmp_path_factory.mktemp(f"tiny-{arch}")
            model.save_pretrained(path)
            tokenizer.save_pretrained(path)
            made[arch] = path
        return made[arch]

    return make


def sts_dir() -> Path | None:
    """SentEval-layout STS data: ``$TPSEARCH_STS_DIR`` or ``../shared/data/sts``."""
    env = os.environ.get("TPSEARCH_STS_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sts"
    return path if path.is_dir() else None

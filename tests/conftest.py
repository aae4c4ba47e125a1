"""Shared fixtures: tiny randomly initialised decoders built from configs (no download)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# dtype "auto" is bfloat16 on CPUs with AMX and quantize "auto" int8 on CPUs with VNNI and no
# AMX: tests run as on any other CPU (float32) unless they ask for bfloat16 or int8 themselves,
# so exact comparisons hold on every machine CI runs on.
os.environ.setdefault("TPSEARCH_NATIVE_BF16", "0")
os.environ.setdefault("TPSEARCH_INT8", "0")

from tpsearch.testing import save_tiny_model

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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Factory: ``tiny_model_dir(arch)`` -> a saved transformers directory (model + tokenizer)."""
    made: dict[str, Path] = {}

    def make(arch: str) -> Path:
        if arch not in made:
            made[arch] = save_tiny_model(tmp_path_factory.mktemp(f"tiny-{arch}"), arch, CORPUS)
        return made[arch]

    return make


@pytest.fixture(scope="session")
def built_index(tmp_path_factory, tiny_model_dir):
    """Factory: ``built_index(arch, docs, **options)`` -> (index directory, corpus path): a
    build of ``docs`` documents (``helpers.corpus_texts``) on the tiny ``arch`` model with
    ``helpers.config``'s defaults and ``options``, made once per session per key and shared
    by every module that asks for the same one. Never change it: copy it first."""
    from helpers import config, write_corpus
    from tpsearch.pipeline import build_index

    made: dict = {}

    def make(arch: str = "llama", docs: int = 40, **options):
        key = (arch, docs, tuple(sorted(options.items())))
        if key not in made:
            tmp = tmp_path_factory.mktemp(f"index-{arch}-{docs}")
            corpus = write_corpus(tmp / "c.parquet", docs)
            made[key] = (build_index(config(tmp, tiny_model_dir(arch), corpus, **options)).out,
                         corpus)
        return made[key]

    return make


def sts_dir() -> Path | None:
    """SentEval-layout STS data: ``$TPSEARCH_STS_DIR`` or ``../shared/data/sts``."""
    env = os.environ.get("TPSEARCH_STS_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sts"
    return path if path.is_dir() else None

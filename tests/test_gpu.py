"""On a CUDA GPU: the encoder and the build give what they give on CPU (skipped without one).

CI has no GPU, so these run only where one is lent (see README, "Measurements").
"""

from __future__ import annotations

import json

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from conftest import CORPUS
from helpers import version_dir, tiny_model, write_corpus
from tpsearch import TPEncoder
from tpsearch.cli import main

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3_text", "gpt2"])
def test_gpu_embeddings_match_cpu(tiny_model_dir, arch):
    kw = dict(tp_layers=(1, 4), output_layer=-2)
    cpu = TPEncoder.from_pretrained(str(tiny_model_dir(arch)), device="cpu", **kw).encode(CORPUS)
    gpu32 = TPEncoder.from_pretrained(str(tiny_model_dir(arch)), device="cuda", dtype="float32", **kw)
    assert gpu32.device.type == "cuda"
    np.testing.assert_allclose(gpu32.encode(CORPUS), cpu, atol=1e-4)
    bf16 = TPEncoder.from_pretrained(str(tiny_model_dir(arch)), device="auto", **kw)
    assert next(bf16.model.parameters()).dtype == torch.bfloat16  # the GPU default
    cos = (bf16.encode(CORPUS) * cpu).sum(axis=1)
    assert cos.min() > 0.98, cos


def test_gpu_build_equals_cpu_build(tmp_path, tiny_model_dir):
    corpus = write_corpus(tmp_path / "c.parquet", 300, row_group_size=50)
    model = str(tiny_model_dir("qwen2"))
    outs = {}
    for name, extra in {"cpu": ["--device", "cpu", "--dtype", "float32"], "gpu": ["--device", "cuda", "--dtype", "float32"],
                        "bf16": ["--device", "auto"]}.items():
        outs[name] = tmp_path / name
        r = CliRunner().invoke(main, ["build", str(corpus), "--out", str(outs[name]), "--model", model,
                                      "--shard-rows", "64", "--batch-size", "16", "--no-progress", *extra])
        assert r.exit_code == 0, r.output
    vecs = {k: faiss.read_index(str(version_dir(v) / "index.faiss")).reconstruct_n(0, 300) for k, v in outs.items()}
    ids = {k: pq.read_table(version_dir(v) / "ids.parquet").column("id").to_pylist() for k, v in outs.items()}
    assert ids["gpu"] == ids["cpu"] == ids["bf16"]
    np.testing.assert_allclose(vecs["gpu"], vecs["cpu"], atol=1e-4)
    assert (vecs["bf16"] * vecs["cpu"]).sum(axis=1).min() > 0.98
    manifest = json.loads((outs["bf16"] / "manifest.json").read_text())
    assert manifest["build"]["config"]["model"]["device"] == "auto"
    assert manifest["build"]["device"].startswith("cuda") and manifest["build"]["dtype"] == "bfloat16"


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3_text", "gpt2"])
def test_cuda_graphs_equal_the_sorted_path(tmp_path, arch):
    texts = CORPUS * 5 + [c[:12] for c in CORPUS]
    model = tiny_model(tmp_path, arch, window=128)
    for dtype, atol in (("float32", 1e-4), ("bfloat16", None)):
        enc = TPEncoder.from_pretrained(model, device="cuda", dtype=dtype, tp_layers=(1, 4),
                                        output_layer=-2, batching="sorted", compile_layers=False)
        ref = enc.encode(texts, batch_size=8)
        enc.batching = "graphs"
        first = enc.encode(texts, batch_size=8, max_batch_tokens=256)
        again = enc.encode(texts[::-1], batch_size=8, max_batch_tokens=256)[::-1]
        runner = enc.shape_runner
        assert runner.shapes_captured and not runner.capture_failures, runner.capture_failures
        np.testing.assert_array_equal(first, again)  # replays: batch-mates and order don't matter
        if atol:
            np.testing.assert_allclose(first, ref, atol=atol)
        else:
            assert (first * ref).sum(axis=1).min() > 0.99


def test_compiled_layers_equal_the_sorted_path(tmp_path):
    texts = CORPUS * 5 + [c[:12] for c in CORPUS]
    for dtype in ("float32", "bfloat16"):
        enc = TPEncoder.from_pretrained(tiny_model(tmp_path / dtype, "llama"), device="cuda",
                                        dtype=dtype, tp_layers=(1, 4), output_layer=-2)
        assert enc.batching == "graphs" and enc.compiled  # the GPU default (auto)
        got = enc.encode(texts, batch_size=8, max_batch_tokens=256)
        ref = TPEncoder.from_pretrained(tiny_model(tmp_path / f"{dtype}-ref", "llama"), device="cuda",
                                        dtype=dtype, tp_layers=(1, 4), output_layer=-2,
                                        batching="sorted", compile_layers=False).encode(texts)
        assert enc.shape_runner.shapes_captured and not enc.shape_runner.capture_failures
        assert (got * ref).sum(axis=1).min() > (0.9999 if dtype == "float32" else 0.99)

"""bfloat16 and int8 encoders against float32, and the index's record of how it was encoded."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import CORPUS
from helpers import config, write_corpus
from tpsearch import Searcher, TPEncoder
from tpsearch.errors import ConfigMismatch, InputError
from tpsearch.devices import native_bf16_cpu, resolve_dtype
from tpsearch.pipeline import build_index

# Bounds: bf16 keeps 8 mantissa bits (relative error ~0.4% per rounding), int8 dynamic
# quantisation 1/127 of each tensor's range; through six random layers both stay well above
# these cosines (measured on these tiny models: >= 0.999 and >= 0.99).
BF16_MIN_COSINE = 0.995
INT8_MIN_COSINE = 0.97


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_bf16_and_int8_stay_close_to_float32(tiny_model_dir, arch):
    path = str(tiny_model_dir(arch))
    ref = TPEncoder.from_pretrained(path, device="cpu")
    bf16 = TPEncoder.from_pretrained(path, device="cpu", dtype="bfloat16")
    int8 = TPEncoder.from_pretrained(path, device="cpu", quantize="int8")
    a, b, c = ref.encode(CORPUS), bf16.encode(CORPUS), int8.encode(CORPUS)
    assert bf16.dtype == torch.bfloat16 and int8.settings.quantize == "int8"
    assert (a * b).sum(1).min() >= BF16_MIN_COSINE
    assert (a * c).sum(1).min() >= INT8_MIN_COSINE
    assert not np.allclose(a, c, atol=1e-4) and not np.allclose(a, b, atol=1e-4)  # really converted
    # TP still acts on the int8 model: TP and vanilla differ there as in float32
    vanilla8 = int8.variant(tp_layers=None).encode(CORPUS)
    assert not np.allclose(vanilla8, c, atol=1e-3)


def build(tmp_path, model_dir, corpus, out="index", **model):
    """A float32 tiny-model build of ``corpus`` with some model settings changed."""
    cfg = config(tmp_path, model_dir, corpus)
    cfg.out = str(tmp_path / out)
    cfg.model = replace(cfg.model, **model)
    return build_index(cfg)


def test_int8_index_refuses_float32_queries_and_the_reverse(tmp_path, tiny_model_dir):
    path = tiny_model_dir("llama")
    corpus = write_corpus(tmp_path / "c.parquet", 20)
    res = build(tmp_path, path, corpus, quantize="int8")
    assert res.manifest.encoder.quantize == "int8"
    s = Searcher.open(res.out)
    assert s.encoder.settings.quantize == "int8" and len(s.search("river", k=3)) == 3
    with pytest.raises(ConfigMismatch, match="quantize"):
        Searcher.open(res.out, encoder=TPEncoder.from_pretrained(str(path), device="cpu"))
    plain = build(tmp_path, path, corpus, out="fp32").out
    with pytest.raises(ConfigMismatch, match="quantize"):
        Searcher.open(plain, encoder=TPEncoder.from_pretrained(str(path), device="cpu", quantize="int8"))


def test_queries_follow_the_dtype_the_documents_were_encoded_in(tmp_path, tiny_model_dir):
    path = tiny_model_dir("llama")
    corpus = write_corpus(tmp_path / "c.parquet", 12)
    res = build(tmp_path, path, corpus, dtype="bfloat16")
    assert res.manifest.build.dtype == res.manifest.encoder.dtype == "bfloat16"
    s = Searcher.open(res.out)
    assert s.encoder.dtype == torch.bfloat16
    # dtype changes the vectors: an encoder in another dtype is refused, naming it
    with pytest.raises(ConfigMismatch, match="dtype: 'bfloat16' vs 'float32'"):
        Searcher.open(res.out, encoder=TPEncoder.from_pretrained(str(path), device="cpu",
                                                                 dtype="float32"))


def test_auto_dtype_follows_the_cpu(monkeypatch):
    """Both branches, on any machine: the CPU's features are stubbed (AVX-512 BF16 with AMX, as
    Intel's, or without, as AMD Zen 4's; or neither), and the TPSEARCH_NATIVE_BF16 override
    wins over them."""
    from tpsearch import devices

    cpu = torch.device("cpu")
    monkeypatch.delenv("TPSEARCH_NATIVE_BF16", raising=False)
    for amx, bf16, want in ((True, True, torch.bfloat16), (True, False, torch.float32),
                            (False, True, torch.bfloat16), (False, False, torch.float32)):
        monkeypatch.setattr(devices, "cpu_features", lambda a=amx, b=bf16: {"amx": a, "avx512_bf16": b})
        assert native_bf16_cpu() == (want == torch.bfloat16)
        assert resolve_dtype("auto", cpu) == want, (amx, bf16)
        assert resolve_dtype(None, cpu) == torch.float32  # unset: exact float32 on any CPU
    monkeypatch.setenv("TPSEARCH_NATIVE_BF16", "0")  # the override, against an AMX CPU
    monkeypatch.setattr(devices, "cpu_features", lambda: {"amx": True, "avx512_bf16": True})
    assert resolve_dtype("auto", cpu) == torch.float32
    monkeypatch.setenv("TPSEARCH_NATIVE_BF16", "1")
    monkeypatch.setattr(devices, "cpu_features", lambda: {"amx": False, "avx512_bf16": False})
    assert resolve_dtype("auto", cpu) == torch.bfloat16
    assert resolve_dtype("auto", torch.device("meta")) == torch.bfloat16  # accelerators: bf16
    with pytest.raises(InputError):
        resolve_dtype("float8", cpu)

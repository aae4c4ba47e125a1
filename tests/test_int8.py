"""int8 with per-token activation scales (tpsearch.int8): close to float32, blind to batch-mates
(an outlier token among them included), every decoder linear layer converted, and indexes made
by 0.5's per-batch int8 refused."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import CORPUS
from helpers import config, version_dir, write_corpus
from tpsearch import Searcher, TPEncoder
from tpsearch.errors import ConfigMismatch
from tpsearch.int8 import Int8Linear, is_quantized, quantize_int8
from tpsearch.pipeline import build_index
from tpsearch.tp import find_decoder_layers


def _linear(k: int = 64, n: int = 48, bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(k, n, bias=bias)


def test_int8_linear_is_close_to_float32():
    lin = _linear()
    q = Int8Linear.from_linear(lin)
    x = torch.randn(10, 3, 64)
    ref, got = lin(x), q(x)
    assert got.shape == ref.shape and got.dtype == torch.float32
    # two roundings of 1/254 of each row's range (weights, activations): ~1% of the output
    assert ((got - ref).norm() / ref.norm()).item() < 0.02
    assert q.weight_t.dtype == torch.int8


def test_an_outlier_token_does_not_change_the_other_tokens():
    """The failure of per-batch scales (0.5's int8, STS-B 69 -> 24 on Gemma 3): a token with
    massive activations in the batch. Per token, the others get the same bits as alone."""
    q = Int8Linear.from_linear(_linear())
    x = torch.randn(6, 64)
    batch = torch.cat([x, 1000 * torch.randn(1, 64)])
    torch.testing.assert_close(q(batch)[:6], q(x), rtol=0, atol=0)
    for i in range(6):
        torch.testing.assert_close(q(batch[i:i + 1]), q(x)[i:i + 1], rtol=0, atol=0)


def test_outlier_channels_kept_in_float32_are_exact_and_leave_the_int8_part():
    """An input channel with activations 100x the others, kept in float32: its product is
    exact, and the other channels are quantised on their own (small) range."""
    lin = _linear(bias=False)
    x = torch.randn(8, 64)
    x[:, 5] *= 100
    plain, kept = Int8Linear.from_linear(lin), Int8Linear.from_linear(lin, torch.tensor([5]))
    assert (kept.weight_t[5] == 0).all() and kept.float_channels.tolist() == [5]
    ref = lin(x)
    err_plain = ((plain(x) - ref).norm() / ref.norm()).item()
    err_kept = ((kept(x) - ref).norm() / ref.norm()).item()
    assert err_kept < 0.02 and err_kept < err_plain / 3
    rest = x.clone()
    rest[:, 5] = 0  # without channel 5, the two share nothing but the float product
    torch.testing.assert_close(kept(x) - kept(rest), x[:, 5:6] @ lin.weight[:, 5:6].t(),
                               rtol=1e-5, atol=1e-4)


def test_outlier_channels_are_the_calibration_texts_largest_and_fixed(tiny_model_dir):
    from tpsearch.int8 import activation_outliers

    path = str(tiny_model_dir("llama"))
    a = TPEncoder.from_pretrained(path, device="cpu", quantize="int8")
    b = TPEncoder.from_pretrained(path, device="cpu", quantize="int8")
    layers_a = [m for m in a.model.modules() if isinstance(m, Int8Linear)]
    layers_b = [m for m in b.model.modules() if isinstance(m, Int8Linear)]
    for layer in find_decoder_layers(a.model):  # the widest layer of each (the MLP's down)
        linears = [m for m in layer.modules() if isinstance(m, Int8Linear)]
        widest = max(m.in_features for m in linears)
        for m in linears:
            assert (m.float_channels is not None) == (m.in_features == widest)
    for ma, mb in zip(layers_a, layers_b):  # every load picks the same channels
        assert (ma.float_channels is None and mb.float_channels is None
                or torch.equal(ma.float_channels, mb.float_channels))
    float_model = TPEncoder.from_pretrained(path, device="cpu", quantize="none")
    picked = activation_outliers(float_model.model, float_model.tokenizer, channels=3)
    assert picked and all(len(ix) == 3 for ix in picked.values())


def test_gpt2_conv1d_is_converted_like_a_linear_layer():
    from transformers.pytorch_utils import Conv1D

    lin = _linear()
    conv = Conv1D(48, 64)
    conv.weight.data = lin.weight.data.t().clone()
    conv.bias.data = lin.bias.data.clone()
    x = torch.randn(5, 64)
    torch.testing.assert_close(Int8Linear.from_linear(conv)(x), Int8Linear.from_linear(lin)(x),
                               rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "gpt2"])
def test_every_linear_layer_of_the_decoder_is_converted_and_the_head_is_not(tiny_model_dir, arch):
    enc = TPEncoder.from_pretrained(str(tiny_model_dir(arch)), device="cpu", quantize="int8")
    assert is_quantized(enc.model)
    converted = [m for layer in find_decoder_layers(enc.model) for m in layer.modules()
                 if isinstance(m, Int8Linear)]
    left = [type(m).__name__ for layer in find_decoder_layers(enc.model) for m in layer.modules()
            if type(m) is nn.Linear or type(m).__name__ == "Conv1D"]
    assert converted and not left
    head = enc.model.get_output_embeddings()
    assert head is None or isinstance(head.weight, torch.Tensor) and head.weight.is_floating_point()
    # quantising again finds no float layer left: nothing changes
    quantize_int8(enc.model)
    assert len([m for m in enc.model.modules() if isinstance(m, Int8Linear)]) == len(converted)


def test_an_index_made_by_0_5s_int8_is_refused_with_a_rebuild_message(tmp_path, tiny_model_dir):
    path = tiny_model_dir("llama")
    cfg = config(tmp_path, path, write_corpus(tmp_path / "c.parquet", 12))
    cfg.out = str(tmp_path / "index")
    cfg.model.quantize = "int8"
    res = build_index(cfg)
    assert len(Searcher.open(res.out).search(CORPUS[0], k=3)) == 3
    manifest = version_dir(res.out) / "manifest.json"
    data = json.loads(manifest.read_text())
    data["tpsearch_version"] = "0.5.0"
    manifest.write_text(json.dumps(data))
    with pytest.raises(ConfigMismatch, match="0.5.0's int8.*rebuild"):
        Searcher.open(res.out)


def test_auto_quantize_follows_the_cpu_and_the_model(monkeypatch):
    """Both branches, on any machine (the CPU's features stubbed): int8 on a CPU with VNNI and
    no AMX, for a model whose preset says int8 was measured, when the dtype is left to the
    machine too; TPSEARCH_INT8 forces it either way."""
    from tpsearch import devices
    from tpsearch.devices import resolve_quantize
    from tpsearch.errors import InputError
    from tpsearch.presets import find_preset

    cpu, gpu = torch.device("cpu"), torch.device("meta")
    monkeypatch.delenv("TPSEARCH_INT8", raising=False)
    monkeypatch.delenv("TPSEARCH_NATIVE_BF16", raising=False)
    # VNNI alone (Intel Ice Lake, Cascade Lake): int8; with bf16 dot products, AMX or not
    # (Intel Sapphire Rapids, AMD Zen 4): bfloat16 instead; neither: float32
    for vnni, amx, bf16, want in ((True, False, False, "int8"), (True, True, True, None),
                                  (True, False, True, None), (False, False, False, None)):
        monkeypatch.setattr(devices, "cpu_features",
                            lambda v=vnni, a=amx, b=bf16: {"vnni": v, "amx": a, "avx512_bf16": b})
        assert resolve_quantize("auto", "auto", cpu, True) == want, (vnni, amx, bf16)
        assert resolve_quantize("auto", "auto", cpu, False) is None  # a model not measured
        assert resolve_quantize("auto", "float32", cpu, True) is None  # an explicit dtype
        assert resolve_quantize("auto", "auto", gpu, True) is None
        assert resolve_quantize("none", "auto", cpu, True) is None
        assert resolve_quantize(None, "auto", cpu, True) is None
        assert resolve_quantize("int8", "float32", cpu) == "int8"
    assert find_preset("gemma-3-270m").int8 and not find_preset("smollm2-135m").int8
    monkeypatch.setenv("TPSEARCH_INT8", "1")
    assert resolve_quantize("auto", "auto", cpu, False) == "int8"
    monkeypatch.setenv("TPSEARCH_INT8", "0")
    monkeypatch.setattr(devices, "cpu_features", lambda: {"vnni": True, "amx": False, "avx512_bf16": False})
    assert resolve_quantize("auto", "auto", cpu, True) is None
    with pytest.raises(InputError, match="auto, int8 or none"):
        resolve_quantize("int4", "auto", cpu)
    with pytest.raises(InputError, match="runs on a CPU"):  # before any model loads
        resolve_quantize("int8", "auto", gpu)


def test_the_index_records_what_auto_chose_and_queries_follow_it(tmp_path, tiny_model_dir, monkeypatch):
    """A build left to the machine on a CPU where auto means int8 records int8; its searcher
    encodes queries in int8 wherever it opens, even where auto would not choose it."""
    monkeypatch.setenv("TPSEARCH_INT8", "1")
    cfg = config(tmp_path, tiny_model_dir("llama"), write_corpus(tmp_path / "c.parquet", 12))
    cfg.out = str(tmp_path / "index")
    cfg.model.dtype, cfg.model.quantize = "auto", "auto"
    res = build_index(cfg)
    assert res.manifest.encoder.quantize == "int8"
    monkeypatch.setenv("TPSEARCH_INT8", "0")
    s = Searcher.open(res.out)
    assert s.encoder.settings.quantize == "int8" and is_quantized(s.encoder.model)
    assert len(s.search(CORPUS[0], k=3)) == 3

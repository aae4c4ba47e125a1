"""Fixed-shape batching (tpsearch.shapes): the bucket plan, the packed batch, the device-side
mask, and embeddings equal to the length-sorted path for every architecture (CPU; the CUDA
graph replay of the same function is checked in test_gpu.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CORPUS, TINY_ARCHS
from tpsearch import TPEncoder
from tpsearch import compiling
from tpsearch.compiling import can_compile, compile_pays_off, resolve_compile
from tpsearch.pipeline import build_index
from tpsearch.errors import InputError
from tpsearch.shapes import device_inputs, pack_batch, plan_buckets, sliding_window, width_ladder
from helpers import version_dir, config, tiny_model, write_corpus

TEXTS = CORPUS * 3 + [c[: 5 + 3 * i] for i, c in enumerate(CORPUS)] + ["ok"]


def test_width_ladder_steps_and_cap():
    ladder = width_ladder(512)
    assert ladder[:3] == (8, 16, 24) and ladder[15:18] == (128, 144, 160)
    assert ladder[-5:] == (384, 416, 448, 480, 512)
    assert width_ladder(100)[-2:] == (96, 100)
    assert width_ladder(8) == (8,) and width_ladder(5) == (5,)
    assert width_ladder(700)[-4:] == (512, 576, 640, 700)


@pytest.mark.parametrize("budget", [None, 256, 1000, 5])
@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_bucket_plan_covers_each_row_once_within_its_shape(budget, batch_size):
    rng = random.Random(batch_size * 31 + (budget or 0))
    lengths = [rng.randint(1, 300) for _ in range(500)]
    widths = width_ladder(256)
    batches, over = plan_buckets(lengths, batch_size, budget, widths)
    seen = [j for b in batches for j in b.indices] + over
    assert sorted(seen) == list(range(len(lengths)))
    assert over == [j for j, n in enumerate(lengths) if n > 256]
    shapes = set()
    for b in batches:
        assert b.width in widths and all(lengths[j] <= b.width for j in b.indices)
        # the smallest width of the ladder that holds the row: padding at most one step
        assert all(b.width == min(w for w in widths if w >= lengths[j]) for j in b.indices)
        full = 1 << (min(batch_size, budget // b.width if budget else batch_size) or 1).bit_length() - 1
        assert len(b.indices) <= b.rows <= full <= batch_size
        assert b.rows == full or b.rows % min(8, full) == 0
        assert budget is None or b.rows == 1 or b.rows * b.width <= budget
        shapes.add((b.rows, b.width))
    # Full batches share one row count per width: few shapes (one full + partial per width).
    per_width = {}
    for rows, width in shapes:
        per_width.setdefault(width, set()).add(rows)
    assert all(len(v) <= 2 for v in per_width.values())


def test_bucket_plan_is_deterministic_and_breaks_ties_by_position():
    lengths = [10, 40, 10, 40, 33, 10]
    a, _ = plan_buckets(lengths, 2, None, width_ladder(64))
    b, _ = plan_buckets(list(lengths), 2, None, width_ladder(64))
    assert a == b
    assert [(x.width, x.rows, x.indices) for x in a] == [
        (40, 2, (1, 3)), (40, 2, (4,)), (16, 2, (0, 2)), (16, 2, (5,))]
    c, _ = plan_buckets([30] * 21, 16, None, (32,))
    assert [(x.rows, len(x.indices)) for x in c] == [(16, 16), (8, 5)]  # 5 rounded up to 8


def test_bucket_plan_refuses_bad_sizes():
    with pytest.raises(InputError):
        plan_buckets([3], 0, None, (16,))
    with pytest.raises(InputError):
        plan_buckets([3], 4, 0, (16,))


def test_pack_left_pads_and_points_at_placeholder_and_filler():
    packed = pack_batch([[5, 9, 7], [9, 6]], shape_rows=4, width=5, pad_id=0, placeholder_id=9)
    assert packed.tolist() == [
        [0, 0, 5, 9, 7, 2, 3],
        [0, 0, 0, 9, 6, 3, 3],
        [0, 0, 0, 0, 0, 4, 4],  # filler: one pad token at the end, <PST> points at it
        [0, 0, 0, 0, 0, 4, 4],
    ]
    with pytest.raises(ValueError, match="lacks the <PST>"):
        pack_batch([[5, 6]], 1, 4, 0, placeholder_id=9)
    with pytest.raises(ValueError, match="do not fit"):
        pack_batch([[1] * 6], 1, 5, 0, None)


def test_device_mask_hides_padding_and_leaves_no_row_empty():
    packed = pack_batch([[5, 6, 7], [8]], shape_rows=2, width=4, pad_id=0, placeholder_id=None)
    inp = device_inputs(packed, torch.float32)
    allowed = inp["attention_mask"][:, 0] == 0
    assert inp["position_ids"].tolist() == [[0, 0, 1, 2], [0, 0, 0, 0]]
    # row 0: real columns 1..3, causal among them; the padding query sees only itself
    assert allowed[0].int().tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0], [0, 1, 1, 1]]
    assert allowed[1, 3].int().tolist() == [0, 0, 0, 1]
    assert allowed.any(dim=-1).all()


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_bucketed_equals_sorted_for_every_architecture(tmp_path, arch):
    enc = TPEncoder.from_pretrained(tiny_model(tmp_path, arch, window=128), tp_layers=(1, 3),
                                    output_layer=-2, dtype="float32")
    # Every length once (0.4 encoded each text three times, in passes of at most 128 tokens:
    # about 460 forward passes per architecture); a budget of 512 tokens still cuts the longest
    # widths into several passes and leaves filler rows.
    texts = TEXTS[len(CORPUS) * 2:]
    for variant in (enc, enc.variant(output_layer=-1), enc.variant(tp_layers=None),
                    enc.variant(prompt="metaeol")):
        ref = variant.encode(texts, batch_size=16)
        variant.batching = "bucketed"
        got = variant.encode(texts, batch_size=8, max_batch_tokens=512)
        np.testing.assert_allclose(got, ref, atol=2e-6, err_msg=str(variant.settings))


def test_bucketed_embedding_does_not_depend_on_batch_mates(tmp_path):
    enc = TPEncoder.from_pretrained(tiny_model(tmp_path, "llama"), dtype="float32")
    enc.batching = "bucketed"
    alone = np.stack([enc.encode(t) for t in TEXTS[:6]])
    together = enc.encode(TEXTS[:6] + ["x " * 40, "y"], batch_size=4)[:6]
    np.testing.assert_allclose(together, alone, atol=2e-6)


def test_rows_longer_than_the_sliding_window_take_the_sorted_path(tmp_path):
    enc = TPEncoder.from_pretrained(tiny_model(tmp_path, "gemma3_text", window=8), dtype="float32")
    assert sliding_window(enc.model) == 8 and enc.fixed_widths() == (8,)
    ref = enc.encode(TEXTS)
    enc.batching = "bucketed"
    np.testing.assert_allclose(enc.encode(TEXTS), ref, atol=2e-6)
    # Control: a prepared mask over a width beyond the window ignores the window, and differs.
    enc.fixed_widths = lambda: width_ladder(512)
    assert np.abs(enc.encode(TEXTS) - ref).max() > 1e-3


def test_batching_choices(tmp_path):
    enc = TPEncoder.from_pretrained(tiny_model(tmp_path, "qwen2"), dtype="float32")
    assert enc.batching == "sorted"
    with pytest.raises(InputError, match="CUDA"):
        enc.batching = "graphs"
    with pytest.raises(InputError, match="unknown batching"):
        enc.batching = "fast"
    enc.batching = "bucketed"
    assert enc.variant(output_layer=-1).batching == "bucketed"


def test_compiled_layers_give_the_same_vectors_and_are_shared(tmp_path):
    if not can_compile(torch.device("cpu")):
        pytest.skip("no C++ compiler on PATH: torch.compile has no CPU backend here")
    enc = TPEncoder.from_pretrained(tiny_model(tmp_path, "llama"), dtype="float32")
    assert not enc.compiled  # never by default on a CPU
    ref = enc.encode(TEXTS, batch_size=64)
    other = enc.variant(tp_layers=None)
    enc.compile_layers()
    assert enc.compiled and other.compiled  # in place, on the shared model
    np.testing.assert_allclose(enc.encode(TEXTS, batch_size=64), ref, atol=1e-5)


def test_compile_choice_is_checked():
    cpu = torch.device("cpu")
    assert resolve_compile("auto", cpu, quantized=False) is False
    assert resolve_compile(False, cpu, quantized=False) is False
    with pytest.raises(InputError, match="auto, true or false"):
        resolve_compile("sometimes", cpu, quantized=False)
    if can_compile(cpu):  # a C++ compiler on PATH
        assert resolve_compile(True, cpu, quantized=False) is True
    else:
        with pytest.raises(InputError, match="C\\+\\+ compiler"):
            resolve_compile(True, cpu, quantized=False)


def test_auto_compiles_cpu_builds_only_when_large_and_in_bfloat16_or_int8(tmp_path, monkeypatch):
    cpu, bf16 = torch.device("cpu"), torch.bfloat16
    big = compiling.CPU_COMPILE_MIN_DOCUMENTS
    if not can_compile(cpu):
        pytest.skip("no C++ compiler on PATH: torch.compile has no CPU backend here")
    assert compile_pays_off(cpu, bf16, big, quantized=False)
    assert not compile_pays_off(cpu, bf16, big - 1, quantized=False)
    assert not compile_pays_off(cpu, torch.float32, big, quantized=False)
    small = compiling.CPU_INT8_COMPILE_MIN_DOCUMENTS  # int8 pays from fewer documents
    assert small < big
    assert compile_pays_off(cpu, torch.float32, small, quantized=True)
    assert not compile_pays_off(cpu, torch.float32, small - 1, quantized=True)
    assert not compile_pays_off(cpu, torch.float32, small, quantized=False)
    # A build: the threshold lowered so that a small corpus counts as large.
    monkeypatch.setattr(compiling, "CPU_COMPILE_MIN_DOCUMENTS", 20)
    corpus = write_corpus(tmp_path / "c.parquet", 40)
    model = tiny_model(tmp_path / "m", "llama")
    for dtype, expect in (("float32", False), ("bfloat16", True)):
        (tmp_path / dtype).mkdir()
        cfg = config(tmp_path / dtype, model, corpus, shard_rows=64)
        cfg.model.dtype = dtype
        result = build_index(cfg)
        build = json.loads((version_dir(Path(result.out)) / "manifest.json").read_text())["build"]
        assert build["compiled"] is expect and build["batching"] == "sorted"

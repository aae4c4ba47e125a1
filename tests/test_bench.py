"""The throughput benchmark in CI size: a tiny model, a few documents."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner

import pytest

from conftest import CORPUS
from tpsearch import TPEncoder
from tpsearch.cli import main
from tpsearch.shapes import canonical_width, plan_batches


def test_bench_table_and_json(tmp_path, tiny_model_dir, monkeypatch):
    from tpsearch.eval import bench

    monkeypatch.setattr(bench, "bf16_in_hardware", lambda: True)  # the bf16 rows on any CPU
    corpus = tmp_path / "c.parquet"
    pq.write_table(pa.table({"id": list(range(len(CORPUS))), "text": CORPUS}), corpus)
    out = tmp_path / "bench.json"
    args = ["bench", "--model", str(tiny_model_dir("llama")), "--corpus", str(corpus), "--docs", "6",
            "--rounds", "1", "--tp-layers", "1:3", "--output-layer", "-3", "--device", "cpu",
            "--output", str(out)]
    r = CliRunner().invoke(main, args + ["--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output.strip().splitlines()[-1])
    assert res == json.loads(out.read_text())
    assert set(res["variants"]) == {"vanilla_last", "vanilla_exit", "tp_exit", "tp_full",
                                    "tp_exit_bf16", "vanilla_exit_bf16", "tp_exit_int8",
                                    "vanilla_exit_int8"}
    assert res["variants"]["tp_exit_int8"]["dtype"] == "int8"
    assert res["auto_defaults"] == {"dtype": "float32", "quantize": None}  # conftest pins both
    assert res["variants"]["tp_exit_bf16"]["dtype"] == "bfloat16"
    assert set(res["matmul_rates"]) == {"float32", "bfloat16", "int8"}
    assert res["cpu"]["capability"] and set(res["speedup_vs_float32_tp_exit"]) == {"tp_exit_bf16",
                                                                                  "tp_exit_int8"}
    # The figures describe the texts measured: the token counts are those of the six documents
    # prompted as each variant prompts them (TP's prompt carries <PST>), and each rate is the
    # count over the variant's own seconds.
    vr = res["variants"]
    model = str(tiny_model_dir("llama"))
    tp = TPEncoder.from_pretrained(model, tp_layers=(1, 3), output_layer=-3, device="cpu")
    vanilla = tp.variant(tp_layers=None)
    texts = CORPUS[:6]
    for name, enc in (("tp_exit", tp), ("tp_full", tp), ("tp_exit_int8", tp),
                      ("vanilla_exit", vanilla), ("vanilla_last", vanilla)):
        assert vr[name]["tokens"] == enc.tokenize(texts).num_tokens, name
    assert vr["tp_exit"]["tokens"] > vr["vanilla_exit"]["tokens"]
    for name, v in vr.items():
        assert v["tokens_per_s"] == pytest.approx(v["tokens"] / v["seconds"])
        assert v["docs_per_s"] == pytest.approx(6 / v["seconds"])
    for name, ratio in res["speedup_vs_float32_tp_exit"].items():
        assert ratio == pytest.approx(vr[name]["docs_per_s"] / vr["tp_exit"]["docs_per_s"])
    assert res["tp_cost_vs_vanilla_exit"] == pytest.approx(
        vr["tp_exit"]["seconds"] / vr["vanilla_exit"]["seconds"] - 1)
    assert vr["tp_exit"]["layers_run"] == 4 and vr["tp_full"]["layers_run"] == 6
    assert res["documents"] == 6 and res["corpus_documents"] == len(CORPUS)
    lengths = [len(r) for r in tp.tokenize(texts).input_ids]
    ladder = tp.row_ladder  # each batch is computed at its rows' canonical width
    assert res["padding_efficiency"] == pytest.approx(sum(lengths) / sum(
        len(b) * canonical_width(max(lengths[j] for j in b), ladder)
        for b in plan_batches(lengths, 32, 2048, ladder)))
    r = CliRunner().invoke(main, args + ["--max-batch-tokens", "64"])
    assert r.exit_code == 0, r.output
    assert "vanilla_exit" in r.output and "padding efficiency" in r.output and "machine limit" in r.output


def test_bench_leaves_out_bfloat16_where_the_cpu_would_emulate_it(tiny_model_dir, monkeypatch):
    """Emulated bf16 runs ~40x slower than float32 (minutes a round on the default model):
    on such a CPU the bench measures float32 and int8 only."""
    from tpsearch.eval import bench

    base = TPEncoder.from_pretrained(str(tiny_model_dir("llama")), device="cpu", quantize="none")
    for hardware, rows in ((False, {"tp_exit_int8", "vanilla_exit_int8"}),
                           (True, {"tp_exit_int8", "vanilla_exit_int8", "tp_exit_bf16",
                                   "vanilla_exit_bf16"})):
        monkeypatch.setattr(bench, "bf16_in_hardware", lambda h=hardware: h)
        got = set(bench.bench_variants(base, True, ())) - {"vanilla_last", "vanilla_exit",
                                                          "tp_exit", "tp_full"}
        assert got == rows, hardware

"""The throughput benchmark in CI size: a tiny model, a few documents."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner

from conftest import CORPUS
from tpsearch.cli import main


def test_bench_table_and_json(tmp_path, tiny_model_dir):
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
    assert res["variants"]["tp_exit_bf16"]["dtype"] == "bfloat16"
    assert set(res["matmul_rates"]) == {"float32", "bfloat16", "int8"}
    assert res["cpu"]["capability"] and set(res["speedup_vs_float32_tp_exit"]) == {"tp_exit_bf16",
                                                                                  "tp_exit_int8"}
    for name, v in res["variants"].items():
        assert v["tokens_per_s"] > 0 and v["docs_per_s"] > 0
        assert 0 < v["achieved_fraction"] <= 1
    assert res["variants"]["tp_exit"]["layers_run"] == 4 and res["variants"]["tp_full"]["layers_run"] == 6
    assert res["documents"] == 6
    assert res["corpus_documents"] == len(CORPUS)
    assert 0 < res["corpus_padding_efficiency"] <= 1
    assert 0 < res["padding_efficiency"] <= 1 and 0 < res["achieved_fraction"] <= 1
    assert res["machine_limit_tokens_per_s"] > 0
    r = CliRunner().invoke(main, args + ["--max-batch-tokens", "64"])
    assert r.exit_code == 0, r.output
    assert "vanilla_exit" in r.output and "padding efficiency" in r.output and "machine limit" in r.output

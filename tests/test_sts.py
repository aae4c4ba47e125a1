"""STS readers, scoring and the ``eval sts`` command, on small files written here."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.stats import spearmanr

from conftest import sts_dir
from tpsearch.cli import main
from tpsearch.eval.sts import evaluate, format_table, load_task


@pytest.fixture
def senteval(tmp_path):
    """A miniature SentEval tree: STS12 with two subsets (one unscored pair), STS-B, SICK."""
    d = tmp_path / "sts"
    s12 = d / "STS12-en-test"
    s12.mkdir(parents=True)
    (s12 / "STS.input.A.txt").write_text("a cat sits\ta cat is sitting\nrain falls\tthe sun shines\nx y\tz w\n")
    (s12 / "STS.gs.A.txt").write_text("4.8\n0.5\n\n")
    (s12 / "STS.input.B.txt").write_text("two  dogs run\tdogs are running\n")
    (s12 / "STS.gs.B.txt").write_text("4.0\n")
    b = d / "STSBenchmark"
    b.mkdir()
    rows = ["main-captions\tMSRvid\t2012test\t0001\t5.000\ta man plays\ta man is playing",
            "main-captions\tMSRvid\t2012test\t0002\t0.500\ta bird flies\tthe market fell",
            "main-captions\tMSRvid\t2012test\t0003\t2.500\ta girl reads\ta boy writes"]
    (b / "sts-dev.csv").write_text("\n".join(rows) + "\n")
    sick = d / "SICK"
    sick.mkdir()
    (sick / "SICK_test_annotated.txt").write_text(
        "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n"
        "1\tA kid runs\tA child is running\t4.7\tENTAILMENT\n"
        "2\tA kid runs\tA car is red\t1.1\tNEUTRAL\n")
    return d


def test_readers(senteval):
    s12 = load_task(senteval, "STS12")
    assert len(s12) == 3  # the pair without a gold score is skipped
    assert s12.left == ["a cat sits", "rain falls", "two dogs run"]  # whitespace re-joined
    assert list(s12.gold) == [4.8, 0.5, 4.0]
    dev = load_task(senteval, "STSBenchmark-dev")
    assert dev.right[0] == "a man is playing" and dev.gold[1] == 0.5
    sick = load_task(senteval, "SICKRelatedness")
    assert sick.left == ["A kid runs", "A kid runs"] and list(sick.gold) == [4.7, 1.1]
    assert load_task(senteval, "STS13") is None
    assert load_task(senteval, "STSBenchmark") is None


def test_score_is_spearman_of_cosines_over_all_subsets(senteval):
    rng = np.random.default_rng(0)
    table = {}

    def embed(sentences):
        for s in sentences:
            table.setdefault(s, rng.normal(size=8))
        return np.stack([table[s] for s in sentences])

    result = evaluate(embed, senteval, ["STS12", "STS13", "SICKRelatedness"])
    s12 = load_task(senteval, "STS12")
    cos = [np.dot(table[a], table[b]) / np.linalg.norm(table[a]) / np.linalg.norm(table[b])
           for a, b in zip(s12.left, s12.right)]
    assert result["tasks"]["STS12"] == pytest.approx(spearmanr(cos, s12.gold).correlation * 100)
    assert result["missing"] == ["STS13"]
    assert result["avg"] == pytest.approx(np.mean(list(result["tasks"].values())))
    text = format_table(result, ["STS12", "STS13", "SICKRelatedness"])
    assert "STS13" in text and " - " in text and "Avg." in text


def test_eval_cli_json_and_table(senteval, tiny_model_dir):
    args = ["eval", "sts", "--data-dir", str(senteval), "--model", str(tiny_model_dir("llama")),
            "--device", "cpu", "--tasks", "STS12,STSBenchmark-dev,STS15"]
    r = CliRunner().invoke(main, args + ["--json", "--tp-layers", "1:3"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output.strip().splitlines()[-1])
    assert set(out["tasks"]) == {"STS12", "STSBenchmark-dev"} and out["missing"] == ["STS15"]
    assert out["settings"]["tp_layers"] == [1, 3]
    assert all(-100 <= v <= 100 for v in out["tasks"].values())
    r = CliRunner().invoke(main, args + ["--no-tp"])
    assert r.exit_code == 0, r.output
    assert "TP off" in r.output and "| STS12 |" in r.output.replace("  ", " ")
    assert "missing (no files under" in r.output
    r = CliRunner().invoke(main, args + ["--no-tp", "--tp-layers", "1:3"])
    assert r.exit_code == 2 and "contradict" in r.output
    r = CliRunner().invoke(main, ["eval", "sts", "--data-dir", str(senteval), "--tasks", "STS99"])
    assert r.exit_code == 2 and "unknown task" in r.output


def test_real_sts_files_parse_when_present():
    d = sts_dir()
    if d is None:
        pytest.skip("STS data not found: set TPSEARCH_STS_DIR or place SentEval data in ../shared/data/sts")
    dev = load_task(d, "STSBenchmark-dev")
    assert dev is not None and len(dev) == 1500
    s12 = load_task(d, "STS12")
    assert s12 is not None and len(s12) == 3108

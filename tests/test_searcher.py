"""Searcher and the search/info CLI over an index built in the test."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from helpers import version_dir, corpus_texts
from tpsearch import Hit, Searcher, TPEncoder
from tpsearch.cli import main
from tpsearch.errors import ConfigMismatch, IndexDamaged, InputError


@pytest.fixture(scope="module")
def built(built_index):
    out, _ = built_index("qwen2", 60)
    return out, corpus_texts(60)


def test_each_document_finds_itself_first(built):
    out, texts = built
    s = Searcher.open(out, device="cpu")
    for i in (0, 17, 59):
        hits = s.search(texts[i], k=3)
        assert isinstance(hits[0], Hit)
        assert hits[0].id == f"doc-{i}" and hits[0].rank == 1 and hits[0].text == texts[i]
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert [h.rank for h in hits] == [1, 2, 3]
        assert hits[0].score >= hits[1].score >= hits[2].score


def test_search_batch_equals_repeated_search(built):
    out, texts = built
    s = Searcher.open(out, device="cpu")
    queries = [texts[3], "a guitar in the kitchen", texts[40], "omega river"]
    batch = s.search_batch(queries, k=5, batch_size=3)
    single = [s.search(q, k=5) for q in queries]
    assert [[h.id for h in hs] for hs in batch] == [[h.id for h in hs] for hs in single]
    for hb, hs in zip(batch, single):
        assert [h.score for h in hb] == pytest.approx([h.score for h in hs], abs=1e-5)


def test_embed_query_and_documents_match_the_index(built):
    out, texts = built
    s = Searcher.open(out, device="cpu")
    q = s.embed_query(texts[5])
    docs = s.embed_documents(texts[5:7])
    assert isinstance(q, list) and len(q) == s.manifest.dim
    assert q == pytest.approx(docs[0], abs=1e-5)
    stored = s.index.reconstruct(5)
    assert q == pytest.approx(stored.tolist(), abs=1e-5)


def test_k_larger_than_index(built):
    out, _ = built
    hits = Searcher.open(out, device="cpu").search("anything", k=100)
    assert len(hits) == 60


def _copy(built, tmp_path):
    out, _ = built
    dst = tmp_path / "copy"
    shutil.copytree(out, dst)
    return dst


def test_refuses_unknown_manifest_version(built, tmp_path):
    d = _copy(built, tmp_path)
    m = json.loads((version_dir(d) / "manifest.json").read_text())
    m["format_version"] = 99
    (version_dir(d) / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ConfigMismatch, match="format version 99 is not supported"):
        Searcher.open(d)


def test_refuses_missing_files(built, tmp_path):
    d = _copy(built, tmp_path)
    (version_dir(d) / "ids.parquet").unlink()
    with pytest.raises(IndexDamaged, match="ids.parquet is missing"):
        Searcher.open(d)
    with pytest.raises(InputError, match="not a tpsearch index"):
        Searcher.open(tmp_path)


def test_refuses_other_model_weights(built, tmp_path, tiny_model_dir):
    d = _copy(built, tmp_path)
    m = json.loads((version_dir(d) / "manifest.json").read_text())
    m["model"]["weights_sha256"] = "0" * 64
    (version_dir(d) / "manifest.json").write_text(json.dumps(m))
    s = Searcher.open(d, device="cpu")
    with pytest.raises(ConfigMismatch, match="now has weights"):
        s.search("x")


def test_refuses_altered_settings_and_dimension(built, tmp_path, tiny_model_dir):
    d = _copy(built, tmp_path)
    m = json.loads((version_dir(d) / "manifest.json").read_text())
    m["encoder"]["tp_layers"] = [1, 3]
    (version_dir(d) / "manifest.json").write_text(json.dumps(m))
    enc = TPEncoder.from_pretrained(str(tiny_model_dir("qwen2")), device="cpu")
    with pytest.raises(ConfigMismatch, match=r"tp_layers: \(1, 3\) vs \(1, 5\)"):
        Searcher.open(d, encoder=enc)
    m["encoder"]["tp_layers"] = [1, 5]
    m["dim"] = 32
    (version_dir(d) / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ConfigMismatch, match="dimension 64 differs"):
        Searcher.open(d)


def test_cli_search_plain_json_and_stdin(built):
    out, texts = built
    runner = CliRunner()
    r = runner.invoke(main, ["search", str(out), texts[8], "-k", "2", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0] == f"query: {texts[8]}"
    assert lines[1].split()[:3] == ["1", "1.0000", "doc-8"]
    assert len(lines) == 3
    r = runner.invoke(main, ["search", str(out), "--json", "-k", "3", "--device", "cpu"],
                      input=f"{texts[1]}\n\n{texts[2]}\n")
    assert r.exit_code == 0, r.output
    objs = [json.loads(line) for line in r.output.splitlines()]
    assert [o["query"] for o in objs] == [texts[1], texts[2]]
    assert objs[1]["hits"][0]["id"] == "doc-2" and len(objs[1]["hits"]) == 3
    assert set(objs[0]["hits"][0]) == {"rank", "score", "id", "text", "passage", "start", "end"}


def test_cli_info(built):
    out, _ = built
    r = CliRunner().invoke(main, ["info", str(out)])
    assert r.exit_code == 0, r.output
    assert "documents         60" in r.output
    assert "token prepending  1:5" in r.output
    r = CliRunner().invoke(main, ["info", str(out), "--json"])
    assert json.loads(r.output)["documents"] == 60
    r = CliRunner().invoke(main, ["info", str(out.parent / "nope")])
    assert r.exit_code == 1 and "no such index directory" in r.output

"""Hostile input: concurrent builds, threads, untrusted index directories, bad options."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import version_dir, config, corpus_texts, write_corpus
from tpsearch import Searcher
from tpsearch.cli import main
from tpsearch.errors import ConfigMismatch, IndexDamaged, InputError
from tpsearch.pipeline import build_index
from tpsearch.pipeline.workdir import BuildLock, WorkDir


@pytest.fixture(scope="module")
def built(built_index, tiny_model_dir):
    out, corpus = built_index("llama", 40, lexical=True, mode="hybrid")
    return out, tiny_model_dir("llama"), corpus


def copy_index(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def edit_manifest(d: Path, change) -> None:
    m = json.loads((version_dir(d) / "manifest.json").read_text())
    change(m)
    (version_dir(d) / "manifest.json").write_text(json.dumps(m))


# ---------------------------------------------------------------------------- data safety
def test_a_second_build_on_the_same_output_is_refused_naming_the_holder(tmp_path, built):
    _, model, corpus = built
    cfg = config(tmp_path, model, corpus)
    out = Path(cfg.out).resolve()
    with BuildLock(out):
        with pytest.raises(InputError, match="another build or update is writing .*pid"):
            build_index(cfg)
    assert not out.exists() and not WorkDir(out).root.exists()
    assert build_index(cfg).manifest.documents == 40  # the lock is free again


def test_overwrite_onto_a_regular_file_is_refused_before_any_work(tmp_path, built):
    _, model, corpus = built
    target = tmp_path / "file"
    target.write_text("keep me")
    cfg = config(tmp_path, model, corpus)
    cfg.out = str(target)
    with pytest.raises(InputError, match="not a directory"):
        build_index(cfg, overwrite=True)
    assert target.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize("change, message", [
    (dict(text_column="id"), "must differ"),
    (dict(shard_rows=0), "shard-rows must be positive"),
    (dict(passage_tokens=-1), "passage-tokens"),
    (dict(mode="lexical", lexical=False), "needs the lexical index"),
    (dict(index="nonsense"), "--index"),
    (dict(embed_filter="bogus"), "TOP:BOTTOM"),
    (dict(fusion="average"), "fusion must be"),
    ({"model.query_prompt": "no slot"}, "template containing"),
    ({"model.prompt": "{sentence} and {sentence}"}, "exactly one"),
])
def test_bad_options_are_refused_before_the_model_loads(tmp_path, change, message):
    corpus = write_corpus(tmp_path / "c.parquet", 5)
    cfg = config(tmp_path, tmp_path / "no-such-model", corpus,
                 **{k: v for k, v in change.items() if not k.startswith("model.")})
    for k, v in change.items():
        if k.startswith("model."):
            setattr(cfg.model, k[6:], v)
    with pytest.raises(InputError, match=message):
        build_index(cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.parquet"]


def test_batch_size_zero_and_wrong_config_types_give_one_line(tmp_path):
    corpus = write_corpus(tmp_path / "c.parquet", 5)
    r = CliRunner().invoke(main, ["build", str(corpus), "--out", str(tmp_path / "x"),
                                  "--batch-size", "0"])
    assert r.exit_code == 1 and "batch-size must be positive" in r.output and "Traceback" not in r.output
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"corpus: {corpus}\nout: {tmp_path / 'y'}\nbatch_size: many\n")
    r = CliRunner().invoke(main, ["build", "--config", str(cfg)])
    assert r.exit_code == 1 and "'batch_size' must be an int" in r.output


def test_pq_on_a_tiny_corpus_is_refused_with_the_reason_and_keeps_the_shards(tmp_path, built):
    _, model, _ = built
    corpus = write_corpus(tmp_path / "c.parquet", 3)
    cfg = config(tmp_path, model, corpus, index="IVF1024,PQ8")
    with pytest.raises(InputError, match="product quantisation"):
        build_index(cfg)
    cfg.index = "IVF1024,Flat"  # the list count is lowered to what 3 vectors can train
    res = build_index(cfg)
    assert res.encoded_documents == 0 and res.manifest.index.factory == "IVF1,Flat"


# ---------------------------------------------------------------------------- serving safety
def test_concurrent_searches_equal_single_threaded_results(built):
    out, _, _ = built
    s = Searcher.open(out)
    queries = corpus_texts(16)
    want = {q: [(h.id, round(h.score, 4)) for h in s.search(q, k=5)] for q in queries}
    errors, got = [], {}

    def work(offset):
        try:
            for i in range(24):
                q = queries[(i + offset) % len(queries)]
                got.setdefault(q, set()).add(tuple((h.id, round(h.score, 4)) for h in s.search(q, k=5)))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(got[q] == {tuple(want[q])} for q in got)


def test_bad_bytes_on_stdin_do_not_fail_the_other_queries(built):
    out, _, _ = built
    proc = subprocess.run([sys.executable, "-m", "tpsearch.cli", "search", str(out), "--json", "-k", "2"],
                          input=b"alpha river\n\xff\xfe broken\nstone\n", capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    lines = [json.loads(x) for x in proc.stdout.decode().splitlines()]
    assert len(lines) == 3 and all(len(x["hits"]) == 2 for x in lines)
    s = Searcher.open(out)
    assert len(s.search("lone \ud800 surrogate", k=2)) == 2


def test_search_parameters_that_do_not_apply_are_refused(built):
    out, _, _ = built
    with pytest.raises(InputError, match="nprobe does not apply"):
        Searcher.open(out).search("river", nprobe=8)
    r = CliRunner().invoke(main, ["search", str(out), "river", "--nprobe", "4"])
    assert r.exit_code == 1 and "does not apply" in r.output


@pytest.mark.parametrize("damage, error", [
    (lambda d: (version_dir(d) / "index.faiss").write_bytes((version_dir(d) / "index.faiss").read_bytes()[:100]), "bytes"),
    (lambda d: (version_dir(d) / "index.faiss").write_bytes(b""), "bytes"),
    (lambda d: edit_manifest(d, lambda m: m["encoder"].pop("tp_layers")), "encoder.tp_layers is missing"),
    (lambda d: edit_manifest(d, lambda m: m["index"].pop("file")), "index.file is missing"),
    (lambda d: edit_manifest(d, lambda m: m.update(dim="64")), "dim must be an integer"),
    (lambda d: edit_manifest(d, lambda m: m["index"].update(file="../other/index.faiss")), "outside"),
    (lambda d: edit_manifest(d, lambda m: m.update(id_map="/etc/passwd")), "outside"),
])
def test_damaged_or_hostile_index_directories_are_refused(tmp_path, built, damage, error):
    d = copy_index(built[0], tmp_path)
    damage(d)
    with pytest.raises((IndexDamaged, ConfigMismatch), match=error):
        Searcher.open(d)
    r = CliRunner().invoke(main, ["info", str(d)])
    assert r.exit_code == 1 and "Traceback" not in r.output


def test_an_index_file_copied_from_another_index_of_the_same_size_is_refused(tmp_path, built):
    out, model, _ = built
    other_corpus = write_corpus(tmp_path / "o.parquet", 40, texts=corpus_texts(80)[40:])
    other = build_index(config(tmp_path, model, other_corpus, lexical=True, mode="hybrid")).out
    d = copy_index(out, tmp_path)
    shutil.copy(version_dir(other) / "index.faiss", version_dir(d) / "index.faiss")
    assert (version_dir(d) / "index.faiss").stat().st_size == (version_dir(out) / "index.faiss").stat().st_size
    with pytest.raises(IndexDamaged, match="checksum"):
        Searcher.open(d)


def test_a_null_weights_hash_is_refused(tmp_path, built):
    d = copy_index(built[0], tmp_path)
    edit_manifest(d, lambda m: m["model"].update(weights_sha256=None))
    with pytest.raises(ConfigMismatch, match="no weights hash"):
        Searcher.open(d).search("river")


def test_model_code_never_runs_unless_allowed(tmp_path, built):
    out, model, _ = built
    evil = tmp_path / "evil-model"
    shutil.copytree(model, evil)
    marker = tmp_path / "ran"
    (evil / "evil_modeling.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n"
                                           "from transformers import LlamaModel as EvilModel\n")
    cfg = json.loads((evil / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "evil_modeling.EvilModel"}
    (evil / "config.json").write_text(json.dumps(cfg))
    d = copy_index(out, tmp_path)
    edit_manifest(d, lambda m: m["model"].update(path=str(evil)))
    cmd = [sys.executable, "-m", "tpsearch.cli", "search", str(d), "river", "--json"]
    # the edited config.json no longer matches the index's hash of it: refused before loading
    proc = subprocess.run(cmd, input=b"y\ny\n", capture_output=True, timeout=300)
    assert proc.returncode == 1 and "config.json" in proc.stderr.decode(), proc.stderr.decode()
    assert not marker.exists()
    # a model that shipped its auto_map when the index was built: loads, its code never runs
    from tpsearch.loading import definition_sha256

    edit_manifest(d, lambda m: m["model"].update(definition_sha256=definition_sha256(evil)))
    proc = subprocess.run(cmd, input=b"y\ny\n", capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    assert not marker.exists()
    json.loads(proc.stdout.decode())  # only JSON on stdout: nothing asked on the terminal


def test_a_moved_model_is_named_and_can_be_pointed_to(tmp_path, built):
    out, model, _ = built
    d = copy_index(out, tmp_path)
    edit_manifest(d, lambda m: m["model"].update(path=str(tmp_path / "gone")))
    with pytest.raises(InputError, match="if the weights moved"):
        Searcher.open(d).search("river")
    r = CliRunner().invoke(main, ["search", str(d), "river", "--model", str(model), "-k", "2"])
    assert r.exit_code == 0, r.output


def test_a_hub_model_fails_fast_offline(monkeypatch):
    from tpsearch.loading import resolve_source

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="HF_HUB_OFFLINE"):
        resolve_source("no-such-org/no-such-model")


def test_a_cli_build_while_another_holds_the_lock_is_refused_naming_it(tmp_path, built):
    """The lock is held by this test itself, so the overlap is certain on any machine (0.4's
    version raced a slow first build against the clock)."""
    _, model, _ = built
    corpus = write_corpus(tmp_path / "c.parquet", 30)
    out = tmp_path / "idx"
    cmd = [sys.executable, "-m", "tpsearch.cli", "build", str(corpus), "--out", str(out), "--model",
           str(model), "--device", "cpu", "--shard-rows", "8", "--no-progress", "--overwrite"]
    with BuildLock(out.resolve()):
        second = subprocess.run(cmd, capture_output=True, timeout=600)
    err = second.stderr.decode()
    assert second.returncode == 1, err
    assert "another build or update is writing" in err and f"pid {os.getpid()}" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and not WorkDir(out.resolve()).root.exists()  # nothing left behind
    done = subprocess.run(cmd, capture_output=True, timeout=600)  # the lock is free again
    assert done.returncode == 0, done.stderr.decode()
    s = Searcher.open(out)
    assert s.manifest.documents == 30 and len(s.idmap.ids) == s.manifest.vectors
    assert not WorkDir(out.resolve()).root.exists()

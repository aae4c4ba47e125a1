"""The build job end to end on a tiny model: outputs, bad inputs, resume after a kill."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from helpers import version_dir, WHOLE_DOCUMENT_FLAGS, config, corpus_texts, write_corpus
from tpsearch.cli import main
from tpsearch.errors import ConfigMismatch, InputError
from tpsearch.pipeline import build_index
from tpsearch import TPEncoder
from tpsearch.pipeline.reader import CorpusReader, CorpusSpec
from tpsearch.pipeline.runner import work_settings
from tpsearch.pipeline.workdir import WorkDir


def work_dir_for(out):
    return WorkDir(out).root


def _file(path: Path, content: str) -> Path:
    path.write_text(content)
    return path


def _table(path: Path, table: pa.Table) -> Path:
    pq.write_table(table, path)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


@pytest.fixture
def llama_dir(tiny_model_dir):
    return tiny_model_dir("llama")


def test_build_outputs_and_self_retrieval(tmp_path, llama_dir):
    texts = corpus_texts(100)
    texts[3] = None
    texts[10] = "   "
    corpus = write_corpus(tmp_path / "c.parquet", 100, texts=texts)
    res = build_index(config(tmp_path, llama_dir, corpus))
    out = res.out
    assert sorted(p.name for p in out.iterdir()) == ["CURRENT", "versions"]
    assert sorted(p.name for p in version_dir(out).iterdir()) == ["ids.parquet", "index.faiss",
                                                                  "manifest.json", "store"]
    assert not work_dir_for(out).exists()
    m = json.loads((version_dir(out) / "manifest.json").read_text())
    assert m["documents"] == 98 and m["skipped_rows"] == 2
    assert (m["build"]["device"], m["build"]["dtype"]) == ("cpu", "float32")
    assert m["encoder"]["tp_layers"] == [1, 5] and m["encoder"]["output_layer"] == -2
    assert m["encoder"]["templates"][0].startswith("This sentence : <PST>")
    assert m["index"]["factory"] == "Flat" and m["dim"] == 64 and m["normalized"]
    assert len(m["model"]["weights_sha256"]) == 64 and len(m["corpus"]["fingerprint"]) == 64
    idmap = pq.read_table(version_dir(out) / "ids.parquet").to_pydict()
    kept = [i for i in range(100) if i not in (3, 10)]
    assert idmap["id"] == [f"doc-{i}" for i in kept]
    assert idmap["text"] == [texts[i] for i in kept]
    index = faiss.read_index(str(version_dir(out) / "index.faiss"))
    assert index.ntotal == 98
    vecs = index.reconstruct_n(0, index.ntotal)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    _, nn = index.search(vecs, 1)
    assert (nn[:, 0] == np.arange(98)).all()


def test_integer_ids_title_column_and_no_text(tmp_path, llama_dir):
    corpus = write_corpus(tmp_path / "c.parquet", 40, ids=list(range(1000, 1040)),
                          title=[f"Title {i}" for i in range(40)])
    res = build_index(config(tmp_path, llama_dir, corpus, title_column="title", store_text=False))
    idmap = pq.read_table(version_dir(res.out) / "ids.parquet")
    assert idmap.column("id").to_pylist() == list(range(1000, 1040))
    assert "text" not in idmap.column_names
    assert res.manifest.to_dict()["id_type"] == "int"


def test_directory_and_glob_corpus_keep_file_order(tmp_path, llama_dir):
    d = tmp_path / "parts"
    d.mkdir()
    write_corpus(d / "b.parquet", 10, ids=[f"b{i}" for i in range(10)])
    write_corpus(d / "a.parquet", 10, ids=[f"a{i}" for i in range(10)])
    for spec in (str(d), str(d / "*.parquet")):
        out = tmp_path / f"idx{len(spec)}"
        cfg = config(tmp_path, llama_dir, spec)
        cfg.out = str(out)
        build_index(cfg)
        ids = pq.read_table(version_dir(out) / "ids.parquet").column("id").to_pylist()
        assert ids == [f"a{i}" for i in range(10)] + [f"b{i}" for i in range(10)]


def test_index_choices_and_recall(tmp_path, llama_dir):
    corpus = write_corpus(tmp_path / "c.parquet", 300)
    res = build_index(config(tmp_path, llama_dir, corpus, index="hnsw"))
    ix = res.manifest.to_dict()["index"]
    assert ix["factory"] == "HNSW32,Flat"
    assert ix["recall_queries"] == 200 and 0.95 <= ix["recall_at_10"] <= 1.0
    assert "efSearch" in ix["search_params"]
    cfg = config(tmp_path, llama_dir, corpus, index="IVF4,Flat")
    cfg.out = str(tmp_path / "ivf")
    ix = build_index(cfg).manifest.to_dict()["index"]
    assert ix["factory"] == "IVF4,Flat" and ix["recall_at_10"] >= 0.95 and "nprobe" in ix["search_params"]


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: p / "absent.parquet", "no such file or directory"),
        (lambda p: _file(p / "x.parquet", "not parquet"), "x.parquet: not a readable Parquet file"),
        (lambda p: _table(p / "x.parquet", pa.table({"id": ["a"], "body": ["t"]})),
         "x.parquet: no column 'text'"),
        (lambda p: _table(p / "x.parquet", pa.table({"id": ["a"], "text": [3]})),
         "column 'text' must hold strings"),
        (lambda p: _table(p / "x.parquet", pa.table({"id": pa.array([], pa.string()),
                                                     "text": pa.array([], pa.string())})), "zero rows"),
        (lambda p: write_corpus(p / "x.parquet", 4, ids=["a", "b", "a", "c"]), "duplicate id.*'a'"),
        (lambda p: write_corpus(p / "x.parquet", 3, texts=[None, None, ""]), "every row has a null or empty"),
        (lambda p: _mkdir(p / "empty"), "holds no .parquet files"),
    ],
)
def test_bad_input_refused_without_output(tmp_path, llama_dir, setup, message):
    corpus = setup(tmp_path)
    cfg = config(tmp_path, llama_dir, corpus)
    with pytest.raises(InputError, match=message):
        build_index(cfg)
    assert not Path(cfg.out).exists()
    assert not work_dir_for(Path(cfg.out).resolve()).exists()


def test_strict_refuses_empty_text_naming_the_row(tmp_path, llama_dir):
    texts = corpus_texts(10)
    texts[6] = ""
    corpus = write_corpus(tmp_path / "c.parquet", 10, texts=texts)
    with pytest.raises(InputError, match=r"corpus row 6 \(id 'doc-6'\)"):
        build_index(config(tmp_path, llama_dir, corpus, strict=True))
    assert not (tmp_path / "index").exists()
    assert not work_dir_for((tmp_path / "index").resolve()).exists()


def test_cli_bad_input_one_line_and_exit_code(tmp_path, llama_dir):
    corpus = write_corpus(tmp_path / "c.parquet", 4, ids=["a", "b", "a", "b"])
    result = CliRunner().invoke(main, ["build", str(corpus), "--out", str(tmp_path / "o"),
                                       "--model", str(llama_dir), "--no-progress"])
    assert result.exit_code == 1
    assert "Error:" in result.output and "duplicate id" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists()
    corpus = write_corpus(tmp_path / "ok.parquet", 4)
    result = CliRunner().invoke(main, ["build", str(corpus), "--out", str(tmp_path / "o"),
                                       "--model", str(llama_dir), "--whiten-power", "0.7"])
    assert result.exit_code == 1 and "whiten power must be within 0..0.5" in result.output
    assert not (tmp_path / "o").exists() and "Traceback" not in result.output


def test_a_build_into_an_index_updates_it_and_overwrite_rebuilds(tmp_path, llama_dir):
    corpus = write_corpus(tmp_path / "c.parquet", 20)
    cfg = config(tmp_path, llama_dir, corpus)
    build_index(cfg)
    again = build_index(cfg)  # into an index: an incremental build, nothing to encode
    assert again.encoded_documents == 0 and again.manifest.update.kept == 20
    full = build_index(cfg, overwrite=True)
    assert full.encoded_documents == 20 and full.manifest.update is None


def test_other_settings_refuse_leftover_shards(tmp_path, llama_dir):
    corpus = write_corpus(tmp_path / "c.parquet", 64)
    cfg = config(tmp_path, llama_dir, corpus)
    work = work_dir_for(Path(cfg.out).resolve())
    (work / "shards").mkdir(parents=True)
    reader = CorpusReader(CorpusSpec(str(corpus)))
    other = TPEncoder.from_pretrained(str(llama_dir), prompt="pcot", device="cpu")
    settings = work_settings(cfg, other, reader.fingerprint(reader.check_ids()))
    (work / "work.json").write_text(json.dumps(settings))
    with pytest.raises(ConfigMismatch, match="other settings.*encoder.prompt: 'pcot' then, 'prompteol' now"):
        build_index(cfg)
    cfg.fresh = True
    assert build_index(cfg).manifest.to_dict()["documents"] == 64


def test_config_file_same_as_options(tmp_path, llama_dir):
    corpus = write_corpus(tmp_path / "c.parquet", 30)
    conf = tmp_path / "run.yaml"
    conf.write_text(f"corpus: {corpus}\nout: {tmp_path / 'from-yaml'}\nmodel: {llama_dir}\n"
                    "tp-layers: '1:3'\nprompt: pcot\nshard-rows: 16\ndevice: cpu\n")
    result = CliRunner().invoke(main, ["build", "--config", str(conf), "--no-progress"])
    assert result.exit_code == 0, result.output
    m = json.loads((version_dir(tmp_path / "from-yaml") / "manifest.json").read_text())
    assert m["encoder"]["tp_layers"] == [1, 3] and m["encoder"]["prompt"] == "pcot"
    toml = tmp_path / "run.toml"
    toml.write_text(f'corpus = "{corpus}"\nout = "{tmp_path / "t"}"\nmodel = "{llama_dir}"\n'
                    'no_such_option = 1\n')
    result = CliRunner().invoke(main, ["build", "--config", str(toml)])
    assert result.exit_code != 0 and "unknown option(s): 'no_such_option'" in result.output


def test_token_budget_batches_give_the_same_vectors(tmp_path, llama_dir):
    corpus = write_corpus(tmp_path / "c.parquet", 60)
    plain = build_index(config(tmp_path, llama_dir, corpus)).out
    budget = tmp_path / "budget"
    result = CliRunner().invoke(main, ["build", str(corpus), "--out", str(budget), "--model", str(llama_dir),
                                       "--device", "cpu", "--dtype", "float32", "--max-batch-tokens", "40", "--no-progress",
                                       *WHOLE_DOCUMENT_FLAGS])
    assert result.exit_code == 0, result.output
    m = json.loads((version_dir(budget) / "manifest.json").read_text())
    assert m["build"]["config"]["model"]["max_batch_tokens"] == 40
    a = faiss.read_index(str(version_dir(plain) / "index.faiss"))
    b = faiss.read_index(str(version_dir(budget) / "index.faiss"))
    np.testing.assert_allclose(a.reconstruct_n(0, a.ntotal), b.reconstruct_n(0, b.ntotal), atol=1e-5)


def _build_cmd(corpus, out, model_dir):
    return [sys.executable, "-m", "tpsearch.cli", "build", str(corpus), "--out", str(out),
            "--model", str(model_dir), "--device", "cpu", "--dtype", "float32", "--shard-rows", "16",
            "--batch-size", "4",
            "--no-progress"]


def test_killed_build_resumes_to_identical_index(tmp_path, llama_dir):
    corpus = write_corpus(tmp_path / "c.parquet", 400, row_group_size=40)
    clean = tmp_path / "clean"
    subprocess.run(_build_cmd(corpus, clean, llama_dir), check=True, capture_output=True)

    out = tmp_path / "resumed"
    shards = work_dir_for(out) / "shards"
    proc = subprocess.Popen(_build_cmd(corpus, out, llama_dir), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 600  # a busy machine: no race against the clock
    while len(list(shards.glob("shard-*.parquet"))) < 3 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(shards.glob("shard-*.parquet")))
    assert 3 <= done < 25, "the build must be killed part-way"
    assert not out.exists()

    subprocess.run(_build_cmd(corpus, out, llama_dir), check=True, capture_output=True)
    m = json.loads((version_dir(out) / "manifest.json").read_text())
    assert m["build"]["encoded_now"]["documents"] < 400  # the rerun reused shards
    a = faiss.read_index(str(version_dir(clean) / "index.faiss"))
    b = faiss.read_index(str(version_dir(out) / "index.faiss"))
    np.testing.assert_array_equal(a.reconstruct_n(0, a.ntotal), b.reconstruct_n(0, b.ntotal))
    assert pq.read_table(version_dir(clean) / "ids.parquet").equals(pq.read_table(version_dir(out) / "ids.parquet"))


def test_prefetch_keeps_order_bounds_memory_and_raises_in_order():
    from tpsearch.pipeline.mapper import StageTimes
    from tpsearch.pipeline.runner import prefetch

    made = []

    def prepare(x):
        made.append(x)
        if x == 5:
            raise InputError("bad row 5")
        return x * 10

    got = []
    with pytest.raises(InputError, match="bad row 5"):
        for item in prefetch(iter(range(10)), prepare, StageTimes(), depth=2):
            assert len(made) <= len(got) + 4  # never far ahead of the consumer
            got.append(item)
    assert got == [0, 10, 20, 30, 40] and max(made) == 5


def test_one_encoder_spec_reaches_the_cli_reproducing_and_updates():
    """An option is declared once, as a dataclass field: every ModelConfig field is a build
    option (0.4's hand list lacked attn_implementation), every field an encoder's settings share
    with its options is carried back by ``reproducing`` and ``from_settings``, and an update's
    configuration is the recorded one (unknown keys of another version dropped)."""
    from dataclasses import fields

    from click.testing import CliRunner

    from tpsearch.cli import main
    from tpsearch.config import BuildConfig, ModelConfig, build_config_recorded
    from tpsearch.settings import EncoderOptions, EncoderSettings, shared_fields

    help_text = CliRunner().invoke(main, ["build", "--help"]).output
    for f in fields(ModelConfig):
        assert f"--{f.name.replace('_', '-')}" in help_text or f.name == "compile_layers", f.name
    assert "--compile" in help_text and "--attn-implementation" in help_text
    settings = EncoderSettings(model="m", prompt="prompteol", templates=("t {sentence}",),
                               tp_layers=(1, 3), output_layer=-2, n_layers=4, max_length=99,
                               normalize_sentences=False, placeholder_seed=5,
                               placeholder_init="mean", pooling="mean", quantize="int8",
                               dtype="bfloat16")
    options = EncoderOptions.reproducing(settings)
    assert set(shared_fields()) >= {"prompt", "tp_layers", "output_layer", "max_length",
                                    "normalize_sentences", "placeholder_seed",
                                    "placeholder_init", "pooling", "quantize", "dtype"}
    for name in shared_fields():
        assert getattr(options, name) == getattr(settings, name), name
    recorded = BuildConfig(corpus="c.parquet", out="o", model=ModelConfig(
        max_length=99, attn_implementation="eager")).to_dict()
    recorded["model"]["from_a_newer_tpsearch"] = 1
    cfg = build_config_recorded(recorded, corpus="u.parquet", refit=True)
    assert cfg.model.max_length == 99 and cfg.model.attn_implementation == "eager"
    assert cfg.corpus == "u.parquet" and cfg.refit and cfg.out == "o"


def test_each_role_of_the_build_can_be_replaced(tmp_path, tiny_model_dir):
    """Reader, mapper, writer and assembler are injected parts (clip-retrieval's roles): a
    build with wrapped parts calls each and gives the standard build's index."""
    from tpsearch import Searcher
    from tpsearch.pipeline import BuildParts
    from tpsearch.pipeline.assembler import assemble
    from tpsearch.pipeline.mapper import ChunkEmbedder
    from tpsearch.pipeline.writer import write_shard

    corpus = write_corpus(tmp_path / "c.parquet", 40)
    model = tiny_model_dir("llama")
    calls: dict[str, int] = {"reader": 0, "mapper": 0, "writer": 0, "assembler": 0}

    def counted(name, real):
        def part(*args):
            calls[name] += 1
            return real(*args)
        return part

    parts = BuildParts(reader=counted("reader", CorpusReader),
                       mapper=counted("mapper", ChunkEmbedder),
                       writer=counted("writer", write_shard),
                       assembler=counted("assembler", assemble))
    wrapped = build_index(config(tmp_path, model, corpus), parts=parts)
    assert calls == {"reader": 1, "mapper": 1, "writer": 2, "assembler": 1}  # 40 rows, 32 a shard
    plain_cfg = config(tmp_path, model, corpus)
    plain_cfg.out = str(tmp_path / "plain")
    plain = build_index(plain_cfg)
    a, b = Searcher.open(wrapped.out), Searcher.open(plain.out)
    assert a.document_ids() == b.document_ids()
    np.testing.assert_array_equal(a.index.reconstruct_n(0, 40), b.index.reconstruct_n(0, 40))

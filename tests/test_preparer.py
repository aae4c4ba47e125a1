"""Corpus windows prepared in a process of their own (tpsearch.pipeline.preparer)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from dataclasses import replace

import numpy as np
import pytest

from helpers import config, write_corpus
from tpsearch import TPEncoder
from tpsearch.errors import InputError, TPSearchError
from tpsearch.passages import PassageSettings
from tpsearch.pipeline import build_index
from tpsearch.pipeline.mapper import ChunkEmbedder, MapperOptions, StageTimes
from tpsearch.pipeline.preparer import PrepareJob, prepare_in_process
from tpsearch.pipeline.reader import CorpusReader, CorpusSpec
from tpsearch.pipeline import runner
from tpsearch.pipeline.runner import BuildParts, _prepare_in_process
from tpsearch.pipeline.workdir import WorkDir
from tpsearch.pipeline.writer import read_vectors

from test_follower import long_texts

OPTIONS = MapperOptions(8, None, False, "id", "text", PassageSettings(40, 8))


def _job(corpus, model, runs=((0, 96),), shard_rows=32, options=OPTIONS) -> PrepareJob:
    enc = TPEncoder.from_pretrained(str(model), device="cpu", dtype="float32")
    return PrepareJob(CorpusSpec(str(corpus)), tuple(runs), shard_rows, enc.prompter, options)


def _preparing_children() -> list[int]:
    """Pids of this process's living children running the preparer (from /proc)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z" and b"preparer" in cmdline:
            pids.append(int(stat.parent.name))
    return pids


def test_windows_prepared_in_a_process_equal_those_of_a_thread(tmp_path, tiny_model_dir):
    model = tiny_model_dir("llama")
    corpus = write_corpus(tmp_path / "c.parquet", 100, texts=long_texts(100))
    # one tokenizer thread, as beside a CPU encoder that leaves one core
    job = replace(_job(corpus, model, runs=((0, 32), (64, 100))), threads=1)
    times = StageTimes()
    got = list(prepare_in_process(job, times))
    reader = CorpusReader(CorpusSpec(str(corpus)))
    embed = ChunkEmbedder(TPEncoder.from_pretrained(str(model), device="cpu", dtype="float32"),
                          OPTIONS)
    want = [embed.prepare(c) for a, b in job.runs for c in reader.chunks(32, a, b)]
    assert [p.chunk.start for p in got] == [0, 64, 96]
    for g, w in zip(got, want):
        assert (g.ids, g.numbers, g.spans, g.embedded) == (w.ids, w.numbers, w.spans, w.embedded)
        assert g.tokenized.input_ids == w.tokenized.input_ids and g.tokens == w.tokens
        assert len(g.ids) > g.documents  # long texts: several passages per document
    assert times.read > 0


def test_an_error_in_the_process_surfaces_in_corpus_order(tmp_path, tiny_model_dir):
    texts = long_texts(96)
    texts[70] = "  "
    corpus = write_corpus(tmp_path / "c.parquet", 96, texts=texts)
    strict = MapperOptions(8, None, True, "id", "text", PassageSettings(40, 8))
    windows = prepare_in_process(_job(corpus, tiny_model_dir("llama"), options=strict), StageTimes())
    assert [next(windows).chunk.start, next(windows).chunk.start] == [0, 32]
    with pytest.raises(InputError, match="corpus row 70 .*doc-70.*null or empty"):
        next(windows)


def test_the_process_is_stopped_with_its_consumer_and_its_death_is_an_error(tmp_path,
                                                                            tiny_model_dir):
    corpus = write_corpus(tmp_path / "c.parquet", 96, texts=long_texts(96))
    job = _job(corpus, tiny_model_dir("llama"), shard_rows=8)
    windows = prepare_in_process(job, StageTimes())
    next(windows)
    assert len(_preparing_children()) == 1
    windows.close()  # the consumer stops early: the child goes too
    assert _preparing_children() == []

    # Windows of ~140 KB, over the pipe's 64 KiB: once the first is taken, the child blocks
    # part-way through sending the second, and dies there (or while preparing it).
    corpus = write_corpus(tmp_path / "big.parquet", 288, texts=long_texts(288))
    windows = prepare_in_process(_job(corpus, tiny_model_dir("llama"), runs=((0, 288),),
                                      shard_rows=144), StageTimes())
    next(windows)
    (child,) = _preparing_children()
    os.kill(child, signal.SIGKILL)
    with pytest.raises(TPSearchError, match=r"preparing the corpus windows died \(exit code -9\)"):
        for _ in windows:  # the error, never a hang on the half-sent window
            pass


def test_a_script_without_a_main_guard_runs_once(tmp_path, tiny_model_dir):
    """The preparing process imports tpsearch, never the user's script (multiprocessing's
    spawn would run a script without ``if __name__ == "__main__":`` again in the child)."""
    corpus = write_corpus(tmp_path / "c.parquet", 96, texts=long_texts(96))
    runs_file = tmp_path / "runs.txt"
    script = tmp_path / "ingest.py"
    script.write_text(textwrap.dedent(f"""
        from tpsearch import TPEncoder
        from tpsearch.passages import PassageSettings
        from tpsearch.pipeline.mapper import MapperOptions, StageTimes
        from tpsearch.pipeline.preparer import PrepareJob, prepare_in_process
        from tpsearch.pipeline.reader import CorpusSpec
        with open({str(runs_file)!r}, "a") as f:
            f.write("ran\\n")
        enc = TPEncoder.from_pretrained({str(tiny_model_dir("llama"))!r}, device="cpu",
                                        dtype="float32")
        job = PrepareJob(CorpusSpec({str(corpus)!r}), ((0, 96),), 32, enc.prompter,
                         MapperOptions(8, None, False, "id", "text", PassageSettings(40, 8)))
        print(len(list(prepare_in_process(job, StageTimes()))))
        """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["3"]
    assert runs_file.read_text() == "ran\n"


def test_a_build_prepared_in_a_process_equals_one_prepared_in_a_thread(tmp_path, tiny_model_dir):
    model = tiny_model_dir("llama")
    corpus = write_corpus(tmp_path / "c.parquet", 120, texts=long_texts(120))
    options = dict(passage_tokens=40, passage_overlap=8, transform="center", lexical=True,
                   mode="hybrid", index="flat")
    results = {}
    for arm in ("process", "thread"):
        (tmp_path / arm).mkdir()
        res = build_index(config(tmp_path / arm, model, corpus, **options), keep_shards=True,
                          parts=BuildParts(prepare_process=arm == "process"))
        shards = WorkDir(res.out).complete_shards()
        results[arm] = (res, np.concatenate([read_vectors(p) for p in shards]))
    (a, va), (b, vb) = results["process"], results["thread"]
    np.testing.assert_array_equal(va, vb)
    assert a.manifest.corpus == b.manifest.corpus and a.encoded_tokens == b.encoded_tokens
    assert a.manifest.build.stage_seconds["read"] > 0


def test_which_builds_prepare_in_a_process(tmp_path, monkeypatch):
    class Encoder:
        prompter = object()

    big = [(0, 20_000)]
    assert _prepare_in_process(BuildParts(), None, Encoder(), big, 2048)
    assert not _prepare_in_process(BuildParts(), None, Encoder(), [(0, 2000)], 2048)  # small
    assert not _prepare_in_process(BuildParts(), object(), Encoder(), big, 2048)  # an update
    assert not _prepare_in_process(BuildParts(mapper=ChunkEmbedder), None, Encoder(), big, 2048)
    assert not _prepare_in_process(BuildParts(), None, object(), big, 2048)  # no tokenizer
    assert _prepare_in_process(BuildParts(prepare_process=True), None, Encoder(), [(0, 9)], 2048)
    assert not _prepare_in_process(BuildParts(prepare_process=False), None, Encoder(), big, 2048)
    monkeypatch.setattr(runner, "process_available", lambda: False)  # not POSIX: a thread
    assert not _prepare_in_process(BuildParts(), None, Encoder(), big, 2048)
    assert not _prepare_in_process(BuildParts(prepare_process=True), None, Encoder(), big, 2048)

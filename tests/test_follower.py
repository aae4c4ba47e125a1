"""The id map and lexical units made while encoding (one-process builds) equal assembly's own."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from helpers import assert_same_hits, config, version_dir, write_corpus
from tpsearch import Searcher
from tpsearch.pipeline import build_index
from tpsearch.pipeline.assembler import assemble
from tpsearch.pipeline.follower import ShardFollower
from tpsearch.pipeline.runner import BuildParts
from tpsearch.pipeline.workdir import WorkDir

# Passages, the centring transform with its query shift (fitted on the documents' first
# sentences, which the follower collects) and BM25: everything the follower makes.
FULL = dict(passage_tokens=24, passage_overlap=4, transform="center", lexical=True,
            mode="hybrid")


def _in(path: Path) -> Path:
    path.mkdir(exist_ok=True)
    return path


def long_texts(n: int) -> list[str]:
    words = "alpha beta gamma delta river stone cloud light north south harbour".split()
    rng = np.random.default_rng(3)
    return [". ".join(" ".join(rng.choice(words, 6)) for _ in range(1 + i % 4)) + f" {i}."
            for i in range(n)]


def test_tables_made_while_encoding_equal_assemblys_own(tmp_path, tiny_model_dir):
    model = tiny_model_dir("llama")
    corpus = write_corpus(tmp_path / "c.parquet", 150, texts=long_texts(150))
    followed = build_index(config(_in(tmp_path / "a"), model, corpus, **FULL))  # the default
    # Without the follower assembly reads the shards' tables itself; a replaced assembler
    # turns it off too.
    own = build_index(config(_in(tmp_path / "b"), model, corpus, **FULL),
                      parts=BuildParts(follow=False))
    replaced = build_index(config(_in(tmp_path / "c"), model, corpus, **FULL),
                           parts=BuildParts(assembler=assemble, follow=True))
    assert "tables_while_encoding" in followed.manifest.build.stage_seconds
    assert "tables_while_encoding" not in own.manifest.build.stage_seconds
    assert "tables_while_encoding" not in replaced.manifest.build.stage_seconds
    a, b = version_dir(followed.out), version_dir(own.out)
    for seg_a, seg_b in zip(sorted(a.rglob("ids.parquet")), sorted(b.rglob("ids.parquet"))):
        assert pq.read_table(seg_a).equals(pq.read_table(seg_b))
    lex_a = {p.relative_to(a): p.read_bytes() for p in sorted(a.rglob("lexical/*"))}
    lex_b = {p.relative_to(b): p.read_bytes() for p in sorted(b.rglob("lexical/*"))}
    assert lex_a and lex_a == lex_b
    shift = [np.load(next(d.rglob("query_shift.npy"))) for d in (a, b)]
    np.testing.assert_array_equal(*shift)  # the same first sentences sampled
    qmap = [np.load(next(d.rglob("query_map.npy"))) for d in (a, b)]
    np.testing.assert_array_equal(*qmap)  # paired with the same documents' passages
    sa, sb = Searcher.open(followed.out), Searcher.open(own.out)
    for query in ("alpha river", "stone cloud north 7", "harbour light"):
        for mode in ("dense", "lexical", "hybrid"):
            assert_same_hits(sa.search(query, k=8, mode=mode), sb.search(query, k=8, mode=mode))


def test_follower_resumes_from_shards_left_by_an_interrupted_run(tmp_path, tiny_model_dir):
    model = tiny_model_dir("llama")
    corpus = write_corpus(tmp_path / "c.parquet", 150, texts=long_texts(150))
    cfg = config(tmp_path, model, corpus, **FULL)
    fresh = build_index(config(_in(tmp_path / "fresh"), model, corpus, **FULL))
    build_index(cfg, keep_shards=True)
    work = WorkDir(Path(cfg.out))
    shards = work.complete_shards()
    for p in shards[1::2]:  # as if the run had died with every other window done
        p.unlink()
    (work.root / "follow").mkdir(exist_ok=True)
    (work.root / "follow" / "ids.parquet").write_bytes(b"half-written")  # redone, not read
    res = build_index(cfg, overwrite=True)
    assert "tables_while_encoding" in res.manifest.build.stage_seconds
    assert res.encoded_documents < 150
    got = pq.read_table(next(version_dir(res.out).rglob("ids.parquet")))
    assert got.equals(pq.read_table(next(version_dir(fresh.out).rglob("ids.parquet"))))


class Recording:
    """Stands in for ShardTables: records the shards it was given, in order."""

    def __init__(self, fail_on: str | None = None):
        self.shards: list[Path] = []
        self.fail_on = fail_on
        self.closed = threading.Event()

    def add(self, path: Path) -> None:
        if path.name == self.fail_on:
            raise OSError(f"{path}: unreadable")
        self.shards.append(path)

    def close(self) -> None:
        self.closed.set()

    def covers(self, shards) -> bool:
        return [p.name for p in self.shards] == [p.name for p in shards]


def test_follower_takes_shards_in_corpus_order_whatever_order_they_come(tmp_path):
    expected = [tmp_path / f"s{i}" for i in range(4)]
    expected[2].write_text("")  # on disk already: taken without being announced
    tables = Recording()
    f = ShardFollower(expected, tables)
    for i in (3, 0, 1):
        f.written(expected[i])
    assert f.result() is tables
    assert tables.shards == expected and tables.closed.is_set()


def test_follower_without_every_shard_leaves_the_tables_to_assembly(tmp_path):
    expected = [tmp_path / f"s{i}" for i in range(3)]
    tables = Recording()
    f = ShardFollower(expected, tables)
    f.written(expected[0])
    f.written(expected[2])
    assert f.result() is None  # s1 never came: assembly makes the tables itself
    assert tables.shards == expected[:1]


def test_follower_error_is_raised_in_the_build(tmp_path):
    expected = [tmp_path / f"s{i}" for i in range(3)]
    f = ShardFollower(expected, Recording(fail_on="s1"))
    for p in expected:
        f.written(p)
    with pytest.raises(OSError, match="s1: unreadable"):
        f.result()


def test_cancelled_follower_stops_waiting(tmp_path):
    tables = Recording()
    f = ShardFollower([tmp_path / "never"], tables)
    f.cancel()
    assert tables.closed.is_set() and tables.shards == []

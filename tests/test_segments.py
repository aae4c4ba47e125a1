"""Segmented indexes: a writer's commits cost the change, and search over segments and
deletions equals a build of the same live documents."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import faiss
import numpy as np
import pytest

import tpsearch.index

from helpers import assert_same_hits, config, corpus_texts, write_corpus
from tpsearch import IndexWriter, Searcher
from tpsearch.errors import InputError
from tpsearch.layout import locate, referenced_segments
from tpsearch.merging import TieredMergePolicy
from tpsearch.pipeline import build_index
from tpsearch.segments import DenseSegments, OpenSegment

QUERIES = ("river", "Children are playing football in the park.", "brand new text", "gamma stone")
#: Passages, BM25 over whole documents, a fitted transform kept by every segment.
SETTINGS = dict(lexical=True, mode="hybrid", transform="center", passage_tokens=24,
                passage_overlap=4)


def fresh_texts(n: int, tag: str) -> list[str]:
    return [f"{tag} {i}: a note on rivers, stones and the {['kappa', 'sigma', 'omega'][i % 3]} "
            f"of number {i * 7 % 11}." for i in range(n)]


@pytest.fixture()
def built(tmp_path, tiny_model_dir):
    model = tiny_model_dir("llama")
    texts = corpus_texts(60)
    corpus = write_corpus(tmp_path / "a.parquet", 60, texts=texts)
    cfg = config(tmp_path, model, corpus, **SETTINGS)
    build_index(cfg)
    return tmp_path / "index", cfg, dict(zip([f"doc-{i}" for i in range(60)], texts))


def same_hits(got, want) -> None:
    assert_same_hits(got, want)


def reference(tmp_path, index: Path, cfg, texts: dict, live: list, name: str):
    """A one-segment build of exactly the live documents, keeping the index's transform (an
    incremental build of a copy: what a fresh build gives with the same fitted transform)."""
    corpus = write_corpus(tmp_path / f"{name}.parquet", len(live), ids=live,
                          texts=[texts[i] for i in live])
    shutil.copytree(index, tmp_path / name)
    ref = type(cfg)(**{**cfg.__dict__, "corpus": str(corpus), "out": str(tmp_path / name)})
    build_index(ref)
    return Searcher.open(tmp_path / name)


def assert_equal_search(s: Searcher, f: Searcher) -> None:
    for q in QUERIES:
        for mode in ("dense", "lexical", "hybrid"):
            for passages in (False, True):
                same_hits(s.search(q, k=8, mode=mode, passages=passages),
                          f.search(q, k=8, mode=mode, passages=passages))


@pytest.mark.parametrize("merge_shard_rows", [None, 5])
def test_commits_merges_and_compaction_search_as_one_build_of_the_live_documents(
        built, tmp_path, monkeypatch, merge_shard_rows):
    """merge_shard_rows 5: merged stores are cut into store shards of ~5 passages, so later
    merges copy stores of many shards whose documents run across shard ends."""
    index, cfg, texts = built
    if merge_shard_rows:
        import tpsearch.merging

        monkeypatch.setattr(tpsearch.merging, "MERGE_SHARD_ROWS", merge_shard_rows)
    policy = TieredMergePolicy(factor=3)
    with IndexWriter(index, merge_policy=policy) as w:
        for step in range(5):
            new = {f"new-{step}-{i}": t for i, t in enumerate(fresh_texts(3, f"step {step}"))}
            changed = {f"doc-{step * 5}": f"document {step} rewritten about gamma stones."}
            texts.update(new)
            texts.update(changed)
            w.upsert([{"id": k, "text": v} for k, v in {**new, **changed}.items()])
            w.delete([f"doc-{step * 5 + 1}", f"new-{step - 1}-0"])
            res = w.commit()
            assert res.encoded_documents == 4  # only the upserted documents were encoded
        segments = len(w.segments)
    s = Searcher.open(index)
    assert segments <= 4  # 5 commits with factor 3: merged as they piled up
    live = s.document_ids()
    assert len(live) == len(set(live)) == 60 + 5 * 3 - 5 - 4
    assert not {f"doc-{k * 5 + 1}" for k in range(5)} & set(live)
    f = reference(tmp_path, index, cfg, texts, live, "ref")
    assert f.manifest.segments is None and f.manifest.documents == len(s)
    assert_equal_search(s, f)
    # lexical scores equal those of a brand-new build (BM25 does not depend on the transform)
    fresh_corpus = write_corpus(tmp_path / "fresh.parquet", len(live), ids=live,
                                texts=[texts[i] for i in live])
    fresh_cfg = type(cfg)(**{**cfg.__dict__, "corpus": str(fresh_corpus),
                             "out": str(tmp_path / "fresh")})
    build_index(fresh_cfg)
    fresh = Searcher.open(tmp_path / "fresh")
    for q in QUERIES:
        same_hits(s.search(q, k=10, mode="lexical"), fresh.search(q, k=10, mode="lexical"))
    with IndexWriter(index) as w:
        w.compact()
        assert len(w.segments) == 1 and not w.deleted[0].any()
        if merge_shard_rows:
            assert len([n for n in w.segments[0].files if n.startswith("store/")]) > 5
    c = Searcher.open(index)
    assert c.document_ids() == live and c.manifest.segments is not None
    assert_equal_search(c, f)


def test_a_commit_writes_only_its_segment_and_deletions(built):
    index, cfg, texts = built
    before = {p: p.stat().st_mtime_ns for p in index.rglob("*") if p.is_file()}
    with IndexWriter(index, merge_policy=False) as w:
        w.upsert([{"id": "n1", "text": "one more document about rivers."}])
        w.delete(["doc-2"])
        m = w.commit().manifest
    assert [s.path.split("/")[0] for s in m.segments] == ["versions", "segments"]
    assert m.segments[0].deleted == 1 and m.segments[0].deletions
    old = locate(index).root / m.segments[0].path
    for p, t in before.items():  # the build's files are referenced, never rewritten
        if p.is_relative_to(old):
            assert p.stat().st_mtime_ns == t, p
    new_version = locate(index).path
    written = sum(p.stat().st_size for p in new_version.rglob("*") if p.is_file())
    written += sum(p.stat().st_size for p in (index / m.segments[1].path).rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in old.rglob("*") if p.is_file())
    assert written < total / 2


def test_an_open_searcher_keeps_its_version_through_commits_and_merges(built):
    index, cfg, texts = built
    s = Searcher.open(index)
    want = [(h.id, h.score) for h in s.search("river", k=5, mode="hybrid")]
    with IndexWriter(index, merge_policy=TieredMergePolicy(factor=2)) as w:
        for i in range(3):
            w.upsert([{"id": f"x{i}", "text": f"river river river {i}."}])
            w.delete([f"doc-{i}"])
            w.commit()
        w.compact()
    assert [(h.id, h.score) for h in s.search("river", k=5, mode="hybrid")] == want
    assert not s.is_current()
    r = s.reopen()
    assert {"x0", "x1", "x2"} <= set(r.document_ids()) and "doc-0" not in r.document_ids()
    assert r.search("river river river", k=3, mode="lexical")[0].id.startswith("x")


def test_a_second_writer_is_refused_and_nothing_is_lost(built):
    index, cfg, texts = built
    with IndexWriter(index, merge_policy=False) as w:
        with pytest.raises(InputError, match="another build or update"):
            IndexWriter(index, wait=0)
        w.upsert([{"id": "kept", "text": "the first writer's document."}])
        w.commit()
    with IndexWriter(index, wait=0) as w2:
        assert "kept" in w2
        w2.delete(["kept"])
        w2.commit()
    assert "kept" not in Searcher.open(index).document_ids()


def test_deleting_everything_is_refused_and_changes_nothing(built):
    index, cfg, texts = built
    version = locate(index).version
    with IndexWriter(index) as w:
        w.delete(list(texts))
        with pytest.raises(InputError, match="every document"):
            w.commit()
    assert locate(index).version == version


KILL = textwrap.dedent("""
    import os, sys
    import tpsearch.layout as layout, tpsearch.index_writer as iw, tpsearch.merging as mg
    from tpsearch import IndexWriter
    from tpsearch.merging import TieredMergePolicy
    point = sys.argv[2]
    die = lambda *a, **k: os._exit(9)
    if point == "segment":   # the new segment renamed into place, no version yet
        real = iw.seal_segment
        def seal(*a):
            real(*a); os._exit(9)
        iw.seal_segment = seal
    elif point == "pointer":  # the version staged and renamed, the pointer not swapped
        layout.write_pointer = die
    elif point == "merge":    # the merged segment written, its version not published
        real_merge = mg.merge
        def merge(writer, group):
            writer.publish = die
            return real_merge(writer, group)
        mg.merge = merge
    with IndexWriter(sys.argv[1], merge_policy=TieredMergePolicy(factor=2)) as w:
        w.upsert([{"id": "k1", "text": "written before the kill."}])
        w.delete(["doc-1"])
        w.commit()
""")


@pytest.mark.parametrize("point", ["segment", "pointer", "merge"])
def test_a_writer_killed_mid_commit_leaves_a_complete_version_and_the_rerun_finishes(
        built, tmp_path, point):
    index, cfg, texts = built
    if point == "merge":  # one commit first, so the killed one's merge has two segments
        with IndexWriter(index, merge_policy=False) as w:
            w.upsert([{"id": "k0", "text": "an earlier commit."}])
            w.commit()
    before = Searcher.open(index).document_ids()
    script = tmp_path / "kill.py"
    script.write_text(KILL)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, str(script), str(index), point], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 9, proc.stderr[-2000:]
    after = Searcher.open(index)  # complete: the old version, or (merge) the committed one
    if point == "merge":
        assert "k1" in after.document_ids() and "doc-1" not in after.document_ids()
    else:
        assert after.document_ids() == before
    with IndexWriter(index, merge_policy=TieredMergePolicy(factor=2)) as w:
        w.upsert([{"id": "k1", "text": "written before the kill."}])
        w.delete(["doc-1"])
        w.commit()
    s = Searcher.open(index)
    assert "k1" in s.document_ids() and "doc-1" not in s.document_ids()
    used = referenced_segments(index, (s.version, s.manifest.replaces))
    on_disk = {f"segments/{p.name}" for p in (index / "segments").iterdir()}
    assert on_disk <= used  # a killed writer's segment is garbage-collected
    leftovers = [p.name for d in (index / "versions", index / "segments")
                 for p in d.iterdir() if p.name.startswith((".tmp-", ".staging-"))]
    assert leftovers == []


def test_an_index_of_tpsearch_0_4_is_searched_as_it_is_and_segmented_after_its_first_commit(
        tmp_path, tiny_model_dir):
    """0.4 stored BM25 as bm25s's score matrix (format 3): read as it is; the first commit
    rebuilds it once (stored vectors reused) into today's format, segmented from then on."""
    import json

    import bm25s

    from tpsearch.integrity import file_digests
    from tpsearch.lexical import words

    texts = corpus_texts(40)
    corpus = write_corpus(tmp_path / "a.parquet", 40, texts=texts)
    cfg = config(tmp_path, tiny_model_dir("llama"), corpus, lexical=True, mode="hybrid")
    out = build_index(cfg).out
    v = locate(out).path
    shutil.rmtree(v / "lexical")
    vocab: dict = {"": 0}
    ids = [[vocab.setdefault(w, len(vocab)) for w in row] or [0] for row in words(texts)]
    old = bm25s.BM25(k1=1.2, b=0.75, method="lucene")
    old.index((ids, vocab), create_empty_token=False, show_progress=False)
    old.save(v / "lexical", show_progress=False)
    m = json.loads((v / "manifest.json").read_text())
    m["format_version"] = 3
    m["lexical"].update(library="bm25s", vocabulary=len(vocab), rows=40)
    names = sorted({n.split("/")[0] for n in m["files"]})
    m["files"] = {k: {"bytes": e.bytes, "sha256": e.sha256} for k, e in file_digests(v, names).items()}
    (v / "manifest.json").write_text(json.dumps(m))
    s = Searcher.open(out)
    want = [(h.id, h.score) for h in s.search("river stone", k=10, mode="lexical")]
    with IndexWriter(out) as w:
        assert w.legacy
        w.upsert([{"id": "n1", "text": "an added river note."}])
        res = w.commit()
        assert res.manifest.lexical.library == "tpsearch-tf" and not w.legacy
        w.delete(["n1"])
        w.commit()
    after = Searcher.open(out)
    assert after.manifest.segments is not None and "n1" not in after.document_ids()
    got = [(h.id, h.score) for h in after.search("river stone", k=10, mode="lexical")]
    assert [i for i, _ in got] == [i for i, _ in want]
    assert [x for _, x in got] == pytest.approx([x for _, x in want], abs=1e-4)


def test_info_shows_the_segments_and_compact_folds_them(built):
    from click.testing import CliRunner

    from tpsearch.cli import main

    index, cfg, texts = built
    with IndexWriter(index, merge_policy=False) as w:
        w.upsert([{"id": "c1", "text": "a compacted note."}])
        w.delete(["doc-4"])
        w.commit()
    r = CliRunner().invoke(main, ["info", str(index)])
    assert r.exit_code == 0, r.output
    assert "2: live documents 59 (-1), 1" in r.output and "term frequencies" in r.output
    r = CliRunner().invoke(main, ["compact", str(index)])
    assert r.exit_code == 0 and "2 segment(s) merged into one, 60 documents" in r.output, r.output
    r = CliRunner().invoke(main, ["compact", str(index)])
    assert r.exit_code == 0 and "nothing to compact" in r.output
    assert "1: live documents 60" in CliRunner().invoke(main, ["info", str(index)]).output


def _segment(vectors: np.ndarray, matrix: np.ndarray) -> OpenSegment:
    """A segment holding ``vectors``' images under ``matrix`` (x -> x A^T) in a flat index."""
    d = vectors.shape[1]
    lt = faiss.LinearTransform(d, d, False)
    faiss.copy_array_to_vector(matrix.astype(np.float32).ravel(), lt.A)
    lt.is_trained = True
    index = faiss.IndexPreTransform(lt, faiss.IndexFlatIP(d))
    index.add(vectors)
    info = SimpleNamespace(index=SimpleNamespace(search_params={}, factory="Flat", data_file=None))
    return OpenSegment(info=info, directory=Path("."), index=index, idmap=None, lexical=None)


def test_queries_go_through_each_distinct_transform_once_and_segments_with_their_own_keep_it(
        monkeypatch):
    rng = np.random.default_rng(0)
    d = 8
    shared, other = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    parts = [rng.normal(size=(5, d)).astype(np.float32) for _ in range(3)]
    dense = DenseSegments([_segment(parts[0], shared), _segment(parts[1], other),
                           _segment(parts[2], shared)])
    calls = []
    real = tpsearch.index.apply_chain
    monkeypatch.setattr(tpsearch.index, "apply_chain", lambda c, x: calls.append(1) or real(c, x))
    queries = rng.normal(size=(4, d)).astype(np.float32)
    scores, rows = dense.search(queries, k=15, params={})
    assert len(calls) == 2 * len(queries)  # two distinct transforms, one query at a time
    # each segment scored in its own transformed space: global rows follow segment order
    by_hand = np.hstack([(queries @ m.T) @ (p @ m.T).T
                         for p, m in zip(parts, (shared, other, shared))])
    want = np.argsort(-by_hand, axis=1, kind="stable")
    assert (rows == want).all()
    np.testing.assert_allclose(scores, np.take_along_axis(by_hand, want, 1), rtol=1e-4, atol=1e-4)

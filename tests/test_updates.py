"""Incremental builds: a build into an existing index encodes only new and changed documents,
keeps the fitted transform, and gives what a full build of the new corpus gives."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from helpers import config, corpus_texts, version_dir, write_corpus
from tpsearch import Searcher
from tpsearch.errors import ConfigMismatch, IndexDamaged
from tpsearch.pipeline import build_index


def corpora(tmp_path):
    texts = corpus_texts(60)
    a = write_corpus(tmp_path / "a.parquet", 60, texts=texts)
    # B: 10 documents removed, one changed, three added, the rest unchanged (and reordered)
    ids = [f"doc-{i}" for i in range(59, 9, -1)] + [f"new-{i}" for i in range(3)]
    new_texts = [texts[int(i[4:])] if i.startswith("doc-") else f"brand new text {i}." for i in ids]
    new_texts[ids.index("doc-17")] = "a changed document about rivers."
    b = write_corpus(tmp_path / "b.parquet", len(ids), ids=ids, texts=new_texts)
    return a, b, ids, new_texts


def test_an_update_encodes_only_the_delta_and_equals_a_full_build(tmp_path, tiny_model_dir):
    model = tiny_model_dir("llama")
    a, b, ids, texts = corpora(tmp_path)
    cfg = config(tmp_path, model, a, lexical=True, mode="hybrid", transform="none",
                 passage_tokens=24, passage_overlap=4)
    first = build_index(cfg)
    cfg.corpus = str(b)
    res = build_index(cfg)
    u = res.manifest.update
    assert (u.added, u.changed, u.removed, u.kept) == (3, 1, 10, 49)
    assert u.base == first.manifest.version and res.manifest.replaces == first.manifest.version
    assert res.encoded_documents == 4  # only the added and changed documents were encoded
    full_cfg = config(tmp_path, model, b, lexical=True, mode="hybrid", transform="none",
                      passage_tokens=24, passage_overlap=4,
                      # the update keeps its base's weight; a new index's follows its lengths
                      lexical_weight=first.manifest.fusion.lexical_weight)
    full_cfg.out = str(tmp_path / "full")
    full = build_index(full_cfg)
    s, f = Searcher.open(res.out), Searcher.open(full.out)
    assert s.idmap.ids == f.idmap.ids and s.idmap.texts == f.idmap.texts
    np.testing.assert_allclose(s.index.reconstruct_n(0, s.index.ntotal),
                               f.index.reconstruct_n(0, f.index.ntotal), atol=1e-5)
    for q in ("river", texts[5], "brand new text"):
        for mode in ("dense", "lexical", "hybrid"):
            got, want = s.search(q, k=8, mode=mode), f.search(q, k=8, mode=mode)
            assert [h.id for h in got] == [h.id for h in want], (q, mode)
            assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-4)


def test_the_fitted_transform_is_kept_unless_refit(tmp_path, tiny_model_dir):
    import faiss

    model = tiny_model_dir("llama")
    a, b, *_ = corpora(tmp_path)
    cfg = config(tmp_path, model, a, lexical=True, mode="hybrid", transform="center")
    first = build_index(cfg)

    def mean(out):
        raw = faiss.read_index(str(version_dir(out) / "index.faiss"))
        outer = faiss.downcast_index(raw)
        return faiss.vector_to_array(faiss.downcast_VectorTransform(outer.chain.at(0)).mean)

    def whitening(out):  # centering, partial whitening, normalisation (no filter: no head)
        raw = faiss.read_index(str(version_dir(out) / "index.faiss"))
        outer = faiss.downcast_index(raw)
        return faiss.vector_to_array(faiss.downcast_VectorTransform(outer.chain.at(1)).A)

    before, flat = mean(first.out), whitening(first.out)
    assert first.manifest.transform.whiten_power == 0.15
    shift = np.load(version_dir(first.out) / "query_shift.npy")
    cfg.corpus = str(b)
    res = build_index(cfg)
    assert res.manifest.update.transform == "kept" and res.manifest.update.drift > 0
    np.testing.assert_array_equal(mean(res.out), before)
    np.testing.assert_array_equal(whitening(res.out), flat)
    assert res.manifest.transform.whiten_power == 0.15
    np.testing.assert_array_equal(np.load(version_dir(res.out) / "query_shift.npy"), shift)
    cfg.refit = True
    again = build_index(cfg)
    assert again.manifest.update.transform == "fitted"
    assert not np.allclose(mean(again.out), before)
    assert [h.base for h in again.manifest.history] == [first.manifest.version]


def test_other_settings_are_refused_and_overwrite_rebuilds(tmp_path, tiny_model_dir):
    model = tiny_model_dir("llama")
    a, b, *_ = corpora(tmp_path)
    cfg = config(tmp_path, model, a)
    build_index(cfg)
    cfg.corpus = str(b)
    cfg.model.tp_layers = (1, 3)
    with pytest.raises(ConfigMismatch, match="tp_layers.*--overwrite rebuilds"):
        build_index(cfg)
    res = build_index(cfg, overwrite=True)
    assert res.manifest.update is None and res.encoded_documents == 53


def test_an_index_without_a_store_or_with_a_damaged_one_is_refused(tmp_path, tiny_model_dir):
    model = tiny_model_dir("llama")
    a, b, *_ = corpora(tmp_path)
    cfg = config(tmp_path, model, a)
    out = build_index(cfg).out
    store = sorted((version_dir(out) / "store").glob("shard-*.parquet"))
    store[0].write_bytes(store[0].read_bytes()[:-10] + b"x" * 10)
    cfg.corpus = str(b)
    with pytest.raises(IndexDamaged, match="store/shard-.*does not match"):
        build_index(cfg)
    m = json.loads((version_dir(out) / "manifest.json").read_text())
    m.pop("store")
    (version_dir(out) / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexDamaged, match="built before tpsearch 0.3.*--overwrite"):
        build_index(cfg)
    assert Searcher.open(out).manifest.documents == 60  # the index itself still serves


def test_add_replace_and_delete_by_id_equal_a_full_build(tmp_path, tiny_model_dir):
    import pyarrow as pa

    import tpsearch

    model = tiny_model_dir("llama")
    texts = corpus_texts(40)
    langs = ["en" if i % 2 else "de" for i in range(40)]
    a = tmp_path / "a.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": [f"doc-{i}" for i in range(40)], "text": texts,
                             "lang": langs}), a)
    cfg = config(tmp_path, model, a, lexical=True, mode="hybrid", transform="none",
                 metadata_columns="lang")
    out = build_index(cfg).out
    res = tpsearch.update(out, upsert=[{"id": "doc-3", "text": "a replaced text about stones.",
                                        "lang": "fr"},
                                       {"id": "extra-1", "text": "an added document.", "lang": "en"}],
                          delete=["doc-5", "doc-6", "no-such-id"])
    u = res.manifest.update
    assert (u.added, u.changed, u.removed, u.kept) == (1, 1, 2, 37) and res.encoded_documents == 2
    # the same documents, built in full, in the index's order (the new segment's last)
    ids = Searcher.open(out).document_ids()
    assert sorted(ids) == sorted([f"doc-{i}" for i in range(40) if i not in (5, 6)] + ["extra-1"])
    new_texts = {f"doc-{i}": t for i, t in enumerate(texts)}
    new_texts.update({"doc-3": "a replaced text about stones.", "extra-1": "an added document."})
    new_langs = {f"doc-{i}": lg for i, lg in enumerate(langs)}
    new_langs.update({"doc-3": "fr", "extra-1": "en"})
    b = tmp_path / "b.parquet"
    pq.write_table(pa.table({"id": ids, "text": [new_texts[i] for i in ids],
                             "lang": [new_langs[i] for i in ids]}), b)
    full_cfg = config(tmp_path, model, b, lexical=True, mode="hybrid", transform="none",
                      metadata_columns="lang")
    full_cfg.out = str(tmp_path / "full")
    full = build_index(full_cfg).out
    s, f = Searcher.open(out), Searcher.open(full)
    assert s.document_ids() == f.document_ids()
    for q in ("stones", texts[9], "added"):
        for mode in ("dense", "lexical", "hybrid"):
            got = s.search(q, k=6, mode=mode, filter={"lang": {"$ne": "de"}})
            want = f.search(q, k=6, mode=mode, filter={"lang": {"$ne": "de"}})
            assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-5)
            assert {h.id for h in got} == {h.id for h in want}, (q, mode)


def test_add_and_delete_from_the_command_line(tmp_path, tiny_model_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from click.testing import CliRunner

    from tpsearch.cli import main

    a, *_ = corpora(tmp_path)
    out = build_index(config(tmp_path, tiny_model_dir("llama"), a)).out
    new = tmp_path / "new.parquet"
    pq.write_table(pa.table({"id": ["n1", "n2"], "text": ["first new.", "second new."]}), new)
    r = CliRunner().invoke(main, ["add", str(out), str(new), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "2 added, 0 changed, 0 removed, 60 kept; 2 documents encoded" in r.output
    changed = tmp_path / "changed.parquet"
    pq.write_table(pa.table({"id": ["n1"], "text": ["first new, changed."]}), changed)
    r = CliRunner().invoke(main, ["add", str(out), str(changed), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "0 added, 1 changed, 0 removed, 61 kept; 1 documents encoded" in r.output
    newest = Searcher.open(out).manifest.segments[-1]  # the commit's own segment
    idmap = pq.read_table(out / newest.path / "ids.parquet").to_pydict()
    row = idmap["id"].index("n1")
    from tpsearch.pipeline.reuse import doc_hash
    assert idmap["doc_sha256"][row] == doc_hash(None, "first new, changed.")
    ids = tmp_path / "gone.txt"
    ids.write_text("doc-1\ndoc-2\n")
    r = CliRunner().invoke(main, ["delete", str(out), "doc-0", "--ids-file", str(ids), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "0 added, 0 changed, 3 removed, 59 kept; 0 documents encoded" in r.output
    s = Searcher.open(out)
    assert s.manifest.documents == 59
    assert "doc-1" not in s.document_ids() and "n2" in s.document_ids()
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"key": ["x"], "text": ["y"]}), bad)
    r = CliRunner().invoke(main, ["add", str(out), str(bad)])
    assert r.exit_code == 1 and "no column 'id'" in r.output and "Traceback" not in r.output


def test_an_open_searcher_keeps_its_version_through_an_update(tmp_path, tiny_model_dir):
    import tpsearch

    a, *_ = corpora(tmp_path)
    out = build_index(config(tmp_path, tiny_model_dir("llama"), a, lexical=True,
                             mode="hybrid")).out
    s = Searcher.open(out)
    before = [h.id for h in s.search("river", k=60, mode="lexical")]
    tpsearch.update(out, delete=before[:5])
    assert [h.id for h in s.search("river", k=60, mode="lexical")] == before
    assert not s.is_current()
    after = [h.id for h in s.reopen().search("river", k=60, mode="lexical")]
    assert after == before[5:]


def test_kill_9_during_an_update_leaves_the_old_or_the_new_version(tmp_path, tiny_model_dir):
    import signal
    import subprocess
    import sys
    import time

    model = tiny_model_dir("llama")
    texts = corpus_texts(400)
    a = write_corpus(tmp_path / "a.parquet", 400, texts=texts)
    out = build_index(config(tmp_path, model, a, lexical=True, mode="hybrid")).out
    old = Searcher.open(out).version
    b = write_corpus(tmp_path / "b.parquet", 400, texts=[t + " changed." for t in texts])
    cmd = [sys.executable, "-m", "tpsearch.cli", "build", str(b), "--out", str(out), "--model",
           str(model), "--device", "cpu", "--dtype", "float32", "--passage-tokens", "0",
           "--shard-rows", "32", "--batch-size", "1", "--no-progress"]
    for delay in (0.5, 2.0, 4.0, 6.0):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        s = Searcher.open(out)  # complete, whichever version it is
        assert s.manifest.documents == 400 and len(s.search("river", k=3)) == 3
    done = subprocess.run(cmd, capture_output=True, timeout=600)  # resumes and publishes
    assert done.returncode == 0, done.stderr.decode()
    s = Searcher.open(out)
    assert s.version != old and s.idmap.texts[0] == texts[0] + " changed."


def test_an_index_without_stored_texts_keeps_none_and_still_updates_from_a_corpus(tmp_path, tiny_model_dir):
    import pyarrow.parquet as pq

    import tpsearch

    model = tiny_model_dir("llama")
    a, b, ids, texts = corpora(tmp_path)
    cfg = config(tmp_path, model, a, lexical=True, mode="hybrid", transform="none",
                 store_text=False)
    out = build_index(cfg).out
    for shard in (version_dir(out) / "store").glob("shard-*.parquet"):
        assert "text" not in pq.read_schema(shard).names
    cfg.corpus = str(b)
    res = build_index(cfg)
    assert res.encoded_documents == 4
    full_cfg = config(tmp_path, model, b, lexical=True, mode="hybrid", transform="none",
                      store_text=False)
    full_cfg.out = str(tmp_path / "full")
    full = build_index(full_cfg).out
    s, f = Searcher.open(out), Searcher.open(full)
    for q in ("river", "brand new"):
        assert [h.id for h in s.search(q, k=8, mode="lexical")] == [h.id for h in f.search(q, k=8, mode="lexical")]
    # by id too: a commit stores no text either, and a merge needs none (term frequencies)
    tpsearch.update(out, delete=["doc-12"], upsert=[{"id": "late", "text": "a late river note."}])
    s = Searcher.open(out)
    assert "doc-12" not in s.document_ids() and s.idmap.texts is None
    for shard in (out / s.manifest.segments[-1].path / "store").glob("shard-*.parquet"):
        assert "text" not in pq.read_schema(shard).names
    before = [(h.id, h.score) for h in s.search("late river note", k=5, mode="lexical")]
    assert before[0][0] == "late"
    with tpsearch.IndexWriter(out) as w:
        w.compact()
    after = [(h.id, h.score) for h in Searcher.open(out).search("late river note", k=5, mode="lexical")]
    assert [i for i, _ in after] == [i for i, _ in before]
    assert [x for _, x in after] == pytest.approx([x for _, x in before], abs=1e-5)


def test_the_query_prompt_of_an_index_is_kept_by_its_updates(tmp_path, tiny_model_dir):
    """A new index takes the model's preset query prompt (none for a model without a preset);
    an update keeps the index's (its query shift was made with it); another prompt on an
    update without --refit is refused; 'same' means the documents' prompt."""
    model = tiny_model_dir("llama")
    a, b, *_ = corpora(tmp_path)
    cfg = config(tmp_path, model, a, transform="center")
    cfg.model.query_prompt = "question"
    first = build_index(cfg).manifest
    assert first.query_prompt == "question" and "This question" in first.query_templates[0]
    cfg.corpus, cfg.model.query_prompt = str(b), None
    assert build_index(cfg).manifest.query_prompt == "question"  # kept
    cfg.model.query_prompt = "same"
    with pytest.raises(ConfigMismatch, match="query shift"):
        build_index(cfg)
    cfg.refit = True
    assert build_index(cfg).manifest.query_prompt is None
    cfg.model.query_prompt, cfg.refit = None, False
    fresh = build_index(replace(config(tmp_path, model, a), out=str(tmp_path / "other")))
    assert fresh.manifest.query_prompt is None  # no preset for this model: the documents' own


def test_an_index_recording_no_fusion_or_filter_searches_as_it_was_built(tmp_path, tiny_model_dir):
    """Indexes of tpsearch 0.3 record neither the embed filter nor (where it was the default)
    anything newer: they keep min-max fusion at 0.7, no filter, their own query prompt."""
    model = tiny_model_dir("gpt2")
    a, *_ = corpora(tmp_path)
    cfg = config(tmp_path, model, a, lexical=True, mode="hybrid", transform="center",
                 fusion="minmax", lexical_weight=0.7, embed_filter="none", whiten_power=0.0)
    res = build_index(cfg)
    s = Searcher.open(res.out)
    queries = ["a quiet river", "music in the evening", "doc"]
    before = [[(h.id, round(h.score, 6)) for h in hs] for hs in s.search_batch(queries, k=8)]
    path = version_dir(res.out) / "manifest.json"
    m = json.loads(path.read_text())
    m.pop("fusion")
    for key in ("embed_filter", "out_dim", "whiten_power"):
        m["transform"].pop(key)
    path.write_text(json.dumps(m))
    old = Searcher.open(res.out)
    assert old.manifest.fusion.method == "minmax" and old.manifest.fusion.lexical_weight == 0.7
    assert old.manifest.transform.embed_filter is None and old.manifest.transform.whiten_power == 0
    after = [[(h.id, round(h.score, 6)) for h in hs] for hs in old.search_batch(queries, k=8)]
    assert after == before


def test_the_lexical_weight_follows_document_length_and_updates_keep_it(tmp_path, tiny_model_dir):
    """Unset, a new index's lexical weight is the one for its BM25 units' mean length (short
    texts: less lexical weight); its incremental builds and updates keep the recorded weight
    even when the documents they add are long; a weight given is recorded as given."""
    import tpsearch
    from tpsearch.fusion import lexical_weight_for
    from tpsearch.lexical import words

    model = tiny_model_dir("llama")
    texts = corpus_texts(40)
    a = write_corpus(tmp_path / "a.parquet", 40, texts=texts)
    cfg = config(tmp_path, model, a, lexical=True, mode="hybrid", transform="none")
    first = build_index(cfg).manifest
    mean = float(np.mean([len(w) for w in words(texts)]))
    assert first.lexical.mean_length == pytest.approx(mean, abs=1e-3)
    assert first.fusion.lexical_weight == lexical_weight_for(mean) < 0.5
    long_text = " ".join(f"{w} river stone delta {i}." for i, w in enumerate(texts[:20]))
    res = tpsearch.update(cfg.out, upsert=[{"id": f"long-{i}", "text": long_text} for i in range(40)])
    assert res.manifest.fusion.lexical_weight == first.fusion.lexical_weight
    cfg.corpus = str(write_corpus(tmp_path / "b.parquet", 40, texts=[long_text] * 40))
    assert build_index(cfg).manifest.fusion.lexical_weight == first.fusion.lexical_weight
    other = build_index(replace(cfg, out=str(tmp_path / "long")))  # a new index of long texts
    assert other.manifest.fusion.lexical_weight > first.fusion.lexical_weight
    given = build_index(replace(cfg, out=str(tmp_path / "given"), lexical_weight=0.7))
    assert given.manifest.fusion.lexical_weight == 0.7
    assert Searcher.open(cfg.out).manifest.fusion.lexical_weight == first.fusion.lexical_weight
    from click.testing import CliRunner

    from tpsearch.cli import main

    shown = CliRunner().invoke(main, ["info", str(other.out)]).output
    assert f"lexical weight {other.manifest.fusion.lexical_weight}, by document length" in shown
    assert f"of {other.manifest.lexical.mean_length:.1f} terms on average" in shown
    assert "lexical weight 0.7)" in CliRunner().invoke(main, ["info", str(given.out)]).output

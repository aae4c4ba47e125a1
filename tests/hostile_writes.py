"""The hostile probe's second part: updates and serving that never lose, mix or stall (each
case is one finding of the hostile run against 0.4; all failed there). Registered into
``hostile_cases.CASES``: ``tests/test_hostile.py`` runs them, and so does

    python tests/hostile_cases.py
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import tpsearch
from hostile_cases import Env, case, cli_fails, deadline, edit, refused
from helpers import write_corpus
from tpsearch import Searcher
from tpsearch.errors import ConfigMismatch, DiskError, IndexDamaged, InputError, TPSearchError
from tpsearch.pipeline import build_index
from tpsearch.pipeline.workdir import BuildLock
from tpsearch.shapes import kernels_row_invariant


def _ids(d: Path) -> set:
    s = Searcher.open(d)
    return set(s.document_ids())


def _int_index(env: Env) -> Path:
    t = env.tmp()
    corpus = write_corpus(t / "ints.parquet", 20, ids=list(range(1, 21)))
    return build_index(env.cfg(t / "ints", corpus)).out


# ------------------------------------------------------------------------------ lost updates
@case("lost updates")
def two_writers_at_once_lose_no_acknowledged_document(env: Env):
    """Two threads upsert and delete on one index at once: every acknowledged write is in the
    final version, every refused one changed nothing (0.4: 3 acknowledged documents lost)."""
    d = env.copy()
    acknowledged: dict[str, set] = {"a": set(), "b": set()}
    deleted: set = set()
    refusals: list[str] = []

    def writer(name: str, victims: list[str]) -> None:
        for n in range(3):
            doc = f"{name}-{n}"
            try:
                tpsearch.update(d, upsert=[{"id": doc, "text": f"river {name} number {n}."}],
                                delete=[victims[n]])
            except TPSearchError as exc:
                refusals.append(str(exc))
                continue
            acknowledged[name].add(doc)
            deleted.add(victims[n])

    threads = [threading.Thread(target=writer, args=("a", ["doc-1", "doc-2", "doc-3"])),
               threading.Thread(target=writer, args=("b", ["doc-4", "doc-5", "doc-6"]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not refusals, refusals  # writers wait for each other's lock
    final = _ids(d)
    assert acknowledged["a"] | acknowledged["b"] <= final, final
    assert not deleted & final
    assert len(final) == 40 - 6 + 6


@case("lost updates")
def an_update_reads_its_base_under_the_lock(env: Env):
    """An update that had to wait for the lock starts from the version published meanwhile."""
    d = env.copy()
    lock = BuildLock(d.resolve())
    done: list = []
    with lock:
        t = threading.Thread(target=lambda: done.append(
            tpsearch.update(d, upsert=[{"id": "late", "text": "a late river."}])))
        t.start()
        t.join(timeout=1.0)
        assert t.is_alive()  # it waits for the lock, having read nothing yet
        # while it waits, another writer (this test, holding the lock) publishes a version
        cfg = env.cfg(d, write_corpus(env.tmp() / "c.parquet", 5, ids=[f"doc-{i}" for i in range(5)]))
        from tpsearch.pipeline.runner import build_index as run

        run(cfg, locked=True)
    t.join()
    assert done and _ids(d) == {f"doc-{i}" for i in range(5)} | {"late"}


@case("lost updates")
def an_interrupted_update_is_discarded_by_the_next_or_resumed_by_itself(env: Env):
    """An update failing mid-commit (here: while assembling its segment) changes nothing and
    leaves nothing; the next one works (a killed one: tests/test_segments.py)."""
    from tpsearch import index_writer

    d = env.copy()
    real = index_writer.assemble
    before = _ids(d)

    def crash(*a, **k):
        raise RuntimeError("killed during assembly")

    index_writer.assemble = crash
    try:
        refused(lambda: tpsearch.update(d, upsert=[{"id": "x1", "text": "first river."}]),
                RuntimeError, "killed")
    finally:
        index_writer.assemble = real
    assert _ids(d) == before
    res = tpsearch.update(d, upsert=[{"id": "x2", "text": "second river."}])  # another update
    assert {"x2"} <= _ids(d) and "x1" not in _ids(d) and res.encoded_documents == 1
    assert not [p for p in (d / "segments").iterdir() if p.name.startswith(".tmp-")]


@case("lost updates")
def a_full_disk_during_an_update_is_one_line_and_the_next_update_works(env: Env):
    from tpsearch import index_writer

    d = env.copy()
    real = index_writer.write_shard

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", "shard.parquet")

    index_writer.write_shard = full
    try:
        refused(lambda: tpsearch.update(d, upsert=[{"id": "x1", "text": "river."}]), DiskError,
                "No space left")
    finally:
        index_writer.write_shard = real
    tpsearch.update(d, delete=["doc-0"])
    assert "doc-0" not in _ids(d) and "x1" not in _ids(d)
    real_manifest = index_writer.write_manifest

    def full_manifest(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    index_writer.write_manifest = full_manifest
    try:
        refused(lambda: tpsearch.update(d, delete=["doc-1"]), DiskError, "index is unchanged")
    finally:
        index_writer.write_manifest = real_manifest
    assert "doc-1" in _ids(d)


# ------------------------------------------------------------------------------ id confusion
@case("id confusion")
def ids_of_the_wrong_type_are_refused_and_change_nothing(env: Env):
    d = _int_index(env)
    before = Searcher.open(d).version
    for bad, needle in (([3.7], "3.7"), ([True], "True"), ("12", "list of ids"),
                        ([np.float64(4.0)], "4.0"), (["5"], "'5'"), (5, "list of ids"),
                        ({"id": 3}, "list of ids")):
        refused(lambda: tpsearch.update(d, delete=bad), InputError, needle)
    for rows, needle in (([{"id": 100.5, "text": "x"}], "100.5"), ([{"id": True, "text": "x"}], "True"),
                         ([{"id": "7", "text": "x"}], "'7'")):
        refused(lambda: tpsearch.update(d, upsert=rows), InputError, needle)
    cli_fails(["delete", d, "1_0"], "'1_0'")
    cli_fails(["delete", d, "\u0663"], "not an integer")
    assert Searcher.open(d).version == before and _ids(d) == set(range(1, 21))
    tpsearch.update(d, delete=[np.int64(3), 4], upsert=[{"id": 100, "text": "a new river."}])
    assert _ids(d) == set(range(1, 21)) - {3, 4} | {100}
    s = Searcher.open(env.index)
    refused(lambda: tpsearch.update(env.copy(), delete=[12]), InputError, "12", "str ids")
    assert s.manifest.id_type == "str"


@case("bad input")
def upserted_records_must_be_mappings_with_text(env: Env):
    d = env.copy()
    before = Searcher.open(d).version
    for upsert, needle in (({"id": "a", "text": "x"}, "one dict"), (["doc-1"], "record 0"),
                           ([{"id": "doc-2", "text": ""}], "has no text"),
                           ([{"id": "doc-2", "text": "   "}], "has no text"),
                           ([{"id": "doc-2", "text": None}], "has no text"),
                           ([{"id": "z", "text": "a"}, {"id": "z", "text": "b"}], "twice")):
        refused(lambda: tpsearch.update(d, upsert=upsert), InputError, needle)
    assert Searcher.open(d).version == before and "doc-2" in _ids(d)


@case("bad input")
def an_ids_file_of_garbage_or_without_end_is_refused(env: Env):
    d = env.copy()
    garbage = env.tmp() / "ids.bin"
    garbage.write_bytes(bytes(range(256)) * 4)
    cli_fails(["delete", d, "--ids-file", garbage], "not UTF-8")
    with deadline(30):
        cli_fails(["delete", d, "--ids-file", "/dev/zero"], "not a regular file")


# ------------------------------------------------------------------------------ identity
@case("encoder identity")
def an_edited_model_config_is_refused_at_search_and_update(env: Env):
    t = env.tmp()
    model = t / "model"
    shutil.copytree(env.model, model)
    corpus = write_corpus(t / "c.parquet", 10)
    cfg = env.cfg(t / "idx", corpus)
    cfg.model.model = str(model)
    d = build_index(cfg).out
    conf = json.loads((model / "config.json").read_text())
    conf["rms_norm_eps"] = 0.5
    (model / "config.json").write_text(json.dumps(conf))
    refused(lambda: Searcher.open(d).search("river", mode="dense"), ConfigMismatch, "config.json")
    refused(lambda: tpsearch.update(d, upsert=[{"id": "n", "text": "new."}]), ConfigMismatch,
            "config")
    refused(lambda: Searcher.open(d, encoder=tpsearch.TPEncoder.from_pretrained(
        str(model), device="cpu", dtype="float32")), ConfigMismatch, "config/tokenizer")


# ------------------------------------------------------------------------------ bf16
@case("batch dependence")
def bfloat16_queries_do_not_depend_on_their_batch(env: Env):
    t = env.tmp()
    cfg = env.cfg(t / "bf16", env.corpus)
    cfg.model.dtype = "bfloat16"
    d = build_index(cfg).out
    s = Searcher.open(d)
    queries = [f"river stone {'kitchen ' * (i % 4)}number {i}" for i in range(16)]
    batch = s.encode_queries(queries)
    alone = np.stack([s.embed_query(q) for q in queries])
    if not kernels_row_invariant(s.encoder.dtype):  # this CPU's kernels depend on the row count
        np.testing.assert_allclose(batch, alone, atol=2e-2)
        return
    assert np.array_equal(batch, alone), np.abs(batch - alone).max()
    for mode in ("dense", "hybrid"):
        together = s.search_batch(queries, k=10, mode=mode)
        one_by_one = [s.search(q, k=10, mode=mode) for q in queries]
        assert [[(h.id, h.score) for h in hs] for hs in together] == \
               [[(h.id, h.score) for h in hs] for hs in one_by_one], mode
    docs = s.encoder.encode(queries, batch_size=5)
    assert np.array_equal(docs, np.stack([s.encoder.encode([q])[0] for q in queries]))


# ------------------------------------------------------------------------------ bounded
@case("unbounded growth")
def the_update_history_stays_bounded(env: Env):
    d = env.copy()
    tpsearch.update(d, delete=["doc-0"])
    one = json.loads((Searcher.open(d).location.path / "manifest.json").read_text())["update"]
    edit(d, lambda m: m.update(history=[one] * 150))
    tpsearch.update(d, delete=["doc-1"])
    m = Searcher.open(d).manifest
    assert len(m.history) == 100 and m.history_dropped == 51


# ------------------------------------------------------------------------------ races
RACE = textwrap.dedent("""
    import sys, threading, numpy as np
    from tpsearch import Searcher, TPEncoder
    a, b, model = sys.argv[1:4]
    errors = []
    def search(d):
        try:
            Searcher.open(d).search("river stone", k=3, mode="dense")
        except BaseException as exc:
            errors.append(repr(exc))
    ts = [threading.Thread(target=search, args=(d,)) for d in (a, b)]
    [t.start() for t in ts]; [t.join() for t in ts]
    enc = TPEncoder.from_pretrained(model, device="cpu", dtype="float32")
    stop = False
    def encode():
        try:
            while not stop:
                enc.encode(["a river runs by the stone"] * 4)
        except BaseException as exc:
            errors.append(repr(exc))
    t = threading.Thread(target=encode); t.start()
    for _ in range(3):
        TPEncoder.from_pretrained(model, device="cpu", dtype="bfloat16")
    stop = True; t.join()
    print("\\n".join(errors)); sys.exit(1 if errors else 0)
""")


@case("races")
def first_searches_and_loads_in_threads_do_not_race(env: Env):
    """Two first searches in a fresh process (0.4: ImportError), and bfloat16 loads while
    another thread encodes (0.4: 'expected m1 and m2 to have the same dtype')."""
    script = env.tmp() / "race.py"
    script.write_text(RACE)
    r = subprocess.run([sys.executable, str(script), str(env.copy()), str(env.copy()),
                        str(env.model)], capture_output=True, text=True, timeout=900,
                       env={**os.environ, "TPSEARCH_NATIVE_BF16": "0"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


# ------------------------------------------------------------------------------ store
@case("untrusted directory")
def a_store_rewritten_with_another_dimension_is_refused(env: Env):
    d = env.copy()
    v = Searcher.open(d).location.path
    for shard in sorted((v / "store").glob("shard-*.parquet")):
        table = pq.read_table(shard)
        vectors = np.zeros((table.num_rows, 7), dtype=np.float32)
        col = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 7)
        pq.write_table(table.set_column(table.schema.get_field_index("vector"), "vector", col), shard)
    edit(d, lambda m: None)
    # a merge reads the store (a delete alone does not): compaction refuses it
    tpsearch.update(d, delete=["doc-3"])

    def compact():
        with tpsearch.IndexWriter(d) as w:
            w.compact()

    refused(compact, IndexDamaged, "store", "rebuild")

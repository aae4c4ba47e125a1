"""A hostile probe of tpsearch on tiny models: data loss, untrusted index directories, bad
input, and one source for every default. Each case is one function; pytest runs them all
(``tests/test_hostile.py``) and ``python tests/hostile_cases.py`` prints a report by class:

    python tests/hostile_cases.py            # a few minutes on 2 CPU cores
    python tests/hostile_cases.py NAME ...   # only these cases

A case passes when tpsearch gives a correct answer or a one-line refusal that names the file,
column, row or option, leaves nothing half-written, and never hangs or loses data.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("TPSEARCH_NATIVE_BF16", "0")

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from conftest import CORPUS  # noqa: E402
from helpers import config, corpus_texts, version_dir, write_corpus  # noqa: E402
from tpsearch import Searcher, TPEncoder  # noqa: E402
from tpsearch.cli import main  # noqa: E402
from tpsearch.errors import ConfigMismatch, IndexDamaged, InputError, TPSearchError  # noqa: E402
from tpsearch.manifest import file_digests  # noqa: E402
from tpsearch.pipeline import build_index  # noqa: E402
from tpsearch.pipeline.workdir import WorkDir  # noqa: E402
from tpsearch.testing import save_tiny_model  # noqa: E402


@dataclass
class Case:
    kind: str  # the class it belongs to, as the issue lists them
    name: str
    run: Callable[["Env"], None]


CASES: list[Case] = []


def case(kind: str):
    def register(fn):
        CASES.append(Case(kind, fn.__name__, fn))
        return fn

    return register


class Env:
    """A tiny model, a corpus and a hybrid index (passages, centring with a query shift,
    BM25), built once; each case works on copies."""

    def __init__(self, root: Path, model: Path | None = None):
        """``model``: a tiny llama made already (the test session's); else one is made."""
        self.root = root
        self.model = model or save_tiny_model(root / "model", "llama", CORPUS)
        self.corpus = write_corpus(root / "corpus.parquet", 40)
        self.index = build_index(self.cfg(root / "base", self.corpus)).out
        self._n = 0

    def cfg(self, out: Path, corpus: Path, **kw):
        c = config(out.parent, self.model, corpus, lexical=True, mode="hybrid",
                   transform="center", **kw)
        c.out = str(out)
        return c

    def tmp(self) -> Path:
        self._n += 1
        p = self.root / f"case{self._n}"
        p.mkdir()
        return p

    def copy(self) -> Path:
        dst = self.tmp() / "index"
        shutil.copytree(self.index, dst, symlinks=True)
        return dst


# ------------------------------------------------------------------------------ helpers
def edit(d: Path, change: Callable[[dict], None], relist: bool = True) -> Path:
    """Change the manifest of ``d``'s current version; with ``relist`` the file list is
    made to match the files again, as a careful attacker would."""
    v = version_dir(d)
    m = json.loads((v / "manifest.json").read_text())
    change(m)
    if relist:
        names = sorted({n.split("/")[0] for n in m.get("files", {})})
        m["files"] = {k: {"bytes": e.bytes, "sha256": e.sha256}
                      for k, e in file_digests(v, names).items()}
    (v / "manifest.json").write_text(json.dumps(m))
    return v


def relist(d: Path) -> None:
    edit(d, lambda m: None)


def refused(fn: Callable, errors, *needles: str) -> str:
    """``fn()`` must raise one of ``errors`` with every needle in its one-line message."""
    try:
        fn()
    except errors as exc:
        text = str(exc)
        assert "\n" not in text.strip(), f"not one line: {text!r}"
        for n in needles:
            assert n in text, f"{n!r} not in {text!r}"
        return text
    raise AssertionError(f"not refused: {fn}")


def cli_fails(args: list[str], *needles: str) -> str:
    """The CLI exits 1 with one 'Error:' line naming each needle, and no traceback."""
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 1, (r.exit_code, r.output)
    assert "Traceback" not in r.output, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, r.output
    for n in needles:
        assert n in r.output, f"{n!r} not in {r.output!r}"
    return r.output


@contextmanager
def deadline(seconds: float):
    """Fail a case that hangs (a FIFO read, a device file hashed forever)."""
    def alarm(*_):
        raise AssertionError(f"still running after {seconds} s: it hangs")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def ids_of(hits) -> list:
    return [h.id for h in hits]


# ------------------------------------------------------------------------------ data loss
@case("data loss")
def overwrite_never_deletes_the_corpus_folder(env: Env):
    data = env.tmp() / "data"
    data.mkdir()
    corpus = write_corpus(data / "docs.parquet", 10)
    (data / "notes.txt").write_text("mine")
    cli_fails(["build", corpus, "--out", data, "--overwrite", "--model", env.model], "corpus")
    assert sorted(p.name for p in data.iterdir()) == ["docs.parquet", "notes.txt"]


@case("data loss")
def overwrite_never_deletes_a_folder_that_is_not_an_index(env: Env):
    folder = env.tmp() / "notes"
    folder.mkdir()
    (folder / "todo.md").write_text("keep")
    cli_fails(["build", env.corpus, "--out", folder, "--overwrite", "--model", env.model],
              "not a tpsearch index", "todo.md")
    assert (folder / "todo.md").read_text() == "keep"


@case("data loss")
def overwrite_never_deletes_a_folder_holding_the_corpus(env: Env):
    top = env.tmp() / "project"
    (top / "in").mkdir(parents=True)
    corpus = write_corpus(top / "in" / "c.parquet", 10)
    cli_fails(["build", corpus, "--out", top, "--overwrite", "--model", env.model], "holds the corpus")
    assert corpus.is_file()


@case("data loss")
def overwrite_keeps_a_users_file_inside_an_index(env: Env):
    d = env.copy()
    (d / "README.txt").write_text("notes about this index")
    build_index(env.cfg(d, env.corpus), overwrite=True)
    assert (d / "README.txt").read_text() == "notes about this index"
    assert Searcher.open(d).manifest.documents == 40


@case("data loss")
def an_open_searcher_answers_from_one_version(env: Env):
    d = env.copy()
    s = Searcher.open(d)
    before = s.search_batch(["river stone", "guitar kitchen"], k=5, mode="lexical")
    other = write_corpus(env.tmp() / "other.parquet", 30, ids=[f"new-{i}" for i in range(30)],
                         texts=[f"index paint java {i}." for i in range(30)])
    build_index(env.cfg(d, other), overwrite=True)
    for mode in ("lexical", "hybrid", "dense"):
        hits = s.search("river mountain", k=5, mode=mode)
        assert hits and all(h.id.startswith("doc-") for h in hits), (mode, hits)
    lex = s.search("river mountain", k=5, mode="lexical")
    assert all("river" in h.text or "mountain" in h.text for h in lex), lex
    assert s.search_batch(["river stone", "guitar kitchen"], k=5, mode="lexical") == before
    assert not s.is_current()
    new = s.reopen()
    assert new.is_current() and new.version != s.version
    assert all(h.id.startswith("new-") for h in new.search("paint", k=3, mode="lexical"))


@case("data loss")
def a_resumed_build_notices_changed_text_of_the_same_size(env: Env):
    t = env.tmp()
    texts = corpus_texts(40)
    corpus = t / "c.parquet"

    def write(rows):  # uncompressed, so a same-length edit keeps the file size
        pq.write_table(pa.table({"id": [f"doc-{i}" for i in range(40)], "text": rows}), corpus,
                       compression="none", use_dictionary=False, write_statistics=False)

    write(texts)
    cfg = env.cfg(t / "idx", corpus, index="IVF1024,PQ8", shard_rows=8)
    refused(lambda: build_index(cfg), InputError, "product quantisation")  # shards kept
    assert len(WorkDir(Path(cfg.out).resolve()).complete_shards()) == 5
    size = corpus.stat().st_size
    changed = texts[:]
    changed[12] = "Z" + changed[12][1:]
    assert changed[12] != texts[12] and len(changed[12]) == len(texts[12])
    write(changed)
    assert corpus.stat().st_size == size, "the edit must keep the file size"
    cfg.index = "flat"
    res = build_index(cfg)
    assert 0 < res.encoded_documents <= 8  # only the changed window is encoded again
    s = Searcher.open(res.out)
    assert s.idmap.texts[12] == changed[12]
    fresh = build_index(env.cfg(t / "fresh", corpus))
    a = Searcher.open(fresh.out)
    np.testing.assert_allclose(a.index.reconstruct_n(0, 40), s.index.reconstruct_n(0, 40), atol=1e-5)


@case("data loss")
def a_crash_before_the_pointer_swap_leaves_the_old_version(env: Env):
    from tpsearch import layout

    d = env.copy()
    old = Searcher.open(d).version
    real = layout.write_pointer
    layout.write_pointer = lambda root, name: (_ for _ in ()).throw(OSError(errno.EIO, "crash"))
    try:
        refused(lambda: build_index(env.cfg(d, env.corpus), overwrite=True), TPSearchError)
    finally:
        layout.write_pointer = real
    s = Searcher.open(d)
    assert s.version == old and s.manifest.documents == 40  # complete, the old one
    res = build_index(env.cfg(d, env.corpus), overwrite=True)
    versions = sorted(p.name for p in (d / "versions").iterdir())
    assert versions == sorted([old, res.manifest.version])  # the orphan is gone


@case("data loss")
def an_index_left_aside_by_a_crashed_old_publish_is_found_and_restored(env: Env):
    d = env.copy()
    aside = d.parent / f".{d.name}.old-4242"
    os.replace(d, aside)  # tpsearch 0.2 crashed between its two renames
    assert Searcher.open(d).manifest.documents == 40
    build_index(env.cfg(d, env.corpus), overwrite=True)
    assert not aside.exists() and Searcher.open(d).is_current()


@case("data loss")
def a_flat_tpsearch_02_index_is_read_and_upgraded_in_one_step(env: Env):
    flat = env.tmp() / "flat"
    shutil.copytree(version_dir(env.index), flat)
    m = json.loads((flat / "manifest.json").read_text())
    m["format_version"] = 2
    m["encoder"].pop("dtype")
    for key in ("version", "replaces", "store", "update", "history", "metadata"):
        m.pop(key)
    shutil.rmtree(flat / "store")  # tpsearch 0.2 kept no store
    m["files"] = {k: v for k, v in m["files"].items() if not k.startswith("store/")}
    (flat / "manifest.json").write_text(json.dumps(m))
    s = Searcher.open(flat)
    assert s.version is None and s.manifest.encoder.dtype == "float32"
    assert len(s.search("river", k=3)) == 3
    build_index(env.cfg(flat, env.corpus), overwrite=True)
    assert sorted(p.name for p in flat.iterdir()) == ["CURRENT", "versions"]
    assert Searcher.open(flat).version is not None
    assert s.search("river", k=3)  # the old reader still answers from its files


@case("data loss")
def format_1_directories_without_checksums_are_refused(env: Env):
    d = env.copy()
    edit(d, lambda m: m.update(format_version=1), relist=False)
    refused(lambda: Searcher.open(d), ConfigMismatch, "format version 1", "rebuild")


# ------------------------------------------------------------------------------ untrusted
@case("untrusted directory")
def a_manifest_without_its_file_list_is_refused(env: Env):
    for files in (None, {}):
        d = env.copy()
        edit(d, lambda m: m.pop("files") if files is None else m.update(files=files), relist=False)
        refused(lambda: Searcher.open(d), (IndexDamaged, ConfigMismatch), "files")


@case("untrusted directory")
def a_link_in_the_lexical_folder_is_refused(env: Env):
    d = env.copy()
    vocab = version_dir(d) / "lexical" / "words.parquet"
    vocab.unlink()
    vocab.symlink_to("/etc/passwd")
    refused(lambda: Searcher.open(d), IndexDamaged, "lexical/words.parquet", "not a regular")


@case("untrusted directory")
def an_unlisted_file_in_the_lexical_folder_is_refused(env: Env):
    d = env.copy()
    np.save(version_dir(d) / "lexical" / "nonoccurrence_array.index.npy", np.zeros(3))
    refused(lambda: Searcher.open(d), IndexDamaged, "nonoccurrence_array", "not listed")


@case("untrusted directory")
def fifos_never_hang_a_reader(env: Env):
    for name in ("lexical/extra.npy", "lexical/indptr.npy", "index.faiss", "manifest.json"):
        d = env.copy()
        target = version_dir(d) / name
        target.unlink(missing_ok=True)
        os.mkfifo(target)
        with deadline(20):
            refused(lambda: Searcher.open(d), (IndexDamaged, InputError), name.split("/")[-1])


@case("untrusted directory")
def weights_that_are_a_device_never_hang_a_reader(env: Env):
    evil = env.tmp() / "evil-model"
    shutil.copytree(env.model, evil)
    (evil / "model.safetensors").unlink()
    (evil / "model.safetensors").symlink_to("/dev/zero")
    d = env.copy()
    with deadline(20):
        refused(lambda: Searcher.open(d, model=str(evil)).search("river", mode="dense"),
                InputError, "not a regular file")


@case("untrusted directory")
def search_parameters_in_the_manifest_are_range_checked(env: Env):
    for factory, params, needle in (("HNSW32,Flat", {"efSearch": 2**31 - 1}, "efSearch"),
                                    ("HNSW32,Flat", {"efSearch": -5}, "efSearch"),
                                    ("Flat", {"efSearch": "many"}, "efSearch"),
                                    ("Flat", {"nprobe": 8}, "nprobe"),
                                    ("Flat", {"os.system": 1}, "search_params")):
        d = env.copy()
        edit(d, lambda m: m["index"].update(factory=factory, search_params=params))
        refused(lambda: Searcher.open(d), IndexDamaged, needle)


@case("untrusted directory")
def search_parameters_per_call_are_range_checked(env: Env):
    s = Searcher.open(env.index)
    for params, needle in (({"efSearch": 2**31 - 1}, "does not apply"), ({"nprobe": -1}, "nprobe"),
                           ({"bogus": 1}, "unknown search parameter")):
        refused(lambda: s.search("river", **params), InputError, needle)


@case("untrusted directory")
def fusion_settings_are_range_checked(env: Env):
    for fusion, needle in (({"method": "minmax", "lexical_weight": float("nan")}, "lexical_weight"),
                           ({"method": "minmax", "lexical_weight": "0.5"}, "lexical_weight"),
                           ({"method": "minmax", "lexical_weight": 7}, "lexical_weight"),
                           ({"method": "eval", "lexical_weight": 0.5}, "fusion.method")):
        d = env.copy()
        edit(d, lambda m: m.update(fusion=fusion))
        refused(lambda: Searcher.open(d), IndexDamaged, needle)


@case("untrusted directory")
def an_index_that_ranks_by_l2_distance_is_refused(env: Env):
    d = env.copy()
    v = version_dir(d)
    base = faiss.read_index(str(v / "index.faiss"))
    l2 = faiss.IndexFlatL2(base.d)
    l2.add(base.reconstruct_n(0, base.ntotal))
    faiss.write_index(l2, str(v / "index.faiss"))
    relist(d)
    refused(lambda: Searcher.open(d), IndexDamaged, "inner product")


@case("untrusted directory")
def deeply_nested_or_huge_manifests_are_refused(env: Env):
    d = env.copy()
    (version_dir(d) / "manifest.json").write_text('{"format": "tpsearch-index", "x": '
                                                  + "[" * 50_000 + "]" * 50_000 + "}")
    refused(lambda: Searcher.open(d), IndexDamaged, "manifest.json")
    d = env.copy()
    edit(d, lambda m: m["build"].update(config={"a": {"b": {"c": {"d": {"e": {"f": {"g": {
        "h": {"i": {"j": 1}}}}}}}}}}))
    refused(lambda: Searcher.open(d), IndexDamaged, "build.config")
    d = env.copy()
    with open(version_dir(d) / "manifest.json", "a") as f:
        f.write(" " * (17 << 20))
    refused(lambda: Searcher.open(d), IndexDamaged, "bytes")


@case("untrusted directory")
def a_query_shift_with_a_hostile_npy_header_is_refused(env: Env):
    for header in ("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000,), }",
                   "{'descr': '<f4', 'fortran_order': False, 'shape': (64,), }" + " " * 60_000,
                   "{'descr': '|O', 'fortran_order': False, 'shape': (64,), }"):
        d = env.copy()
        path = version_dir(d) / "query_shift.npy"
        body = header + "\n"
        path.write_bytes(b"\x93NUMPY\x02\x00" + len(body).to_bytes(4, "little") + body.encode()
                         + b"\x00" * 256)
        relist(d)
        with deadline(20):
            refused(lambda: Searcher.open(d), IndexDamaged, "query_shift.npy")


@case("untrusted directory")
def values_out_of_range_are_refused_naming_the_field(env: Env):
    for change, needle in ((lambda m: m.update(dim=10**9), "dim"),
                           (lambda m: m.update(documents=-3), "documents"),
                           (lambda m: m.update(vectors=1), "vectors"),
                           (lambda m: m["encoder"].update(max_length="long"), "encoder.max_length"),
                           (lambda m: m["lexical"].update(dir="../../etc"), "outside"),
                           (lambda m: m["transform"].update(query_shift_file="/etc/passwd"), "outside"),
                           (lambda m: m["transform"].update(whiten_power=3), "transform.whiten_power"),
                           (lambda m: m.update(metric="L2"), "metric")):
        d = env.copy()
        edit(d, change)
        refused(lambda: Searcher.open(d), (IndexDamaged, ConfigMismatch), needle)


@case("untrusted directory")
def a_hostile_version_pointer_is_refused(env: Env):
    for content in ("../../etc\n", "v000001-zzzzzzzz\n", "x" * 5000):
        d = env.copy()
        (d / "CURRENT").write_text(content)
        refused(lambda: Searcher.open(d), IndexDamaged, "CURRENT")
    d = env.copy()
    (d / "CURRENT").unlink()
    os.mkfifo(d / "CURRENT")
    with deadline(20):
        refused(lambda: Searcher.open(d), IndexDamaged, "CURRENT")
    d = env.copy()
    name = (d / "CURRENT").read_text().strip()
    shutil.rmtree(d / "versions" / name)
    (d / "versions" / name).symlink_to(version_dir(env.index))
    refused(lambda: Searcher.open(d), IndexDamaged, "link")


@case("untrusted directory")
def an_id_map_of_the_wrong_types_is_refused(env: Env):
    d = env.copy()
    v = version_dir(d)
    t = pq.read_table(v / "ids.parquet")
    t = t.set_column(t.schema.get_field_index("id"), "id", pa.array(range(t.num_rows)))
    pq.write_table(t, v / "ids.parquet")
    relist(d)
    refused(lambda: Searcher.open(d), IndexDamaged, "ids.parquet", "'id'")


@case("untrusted directory")
def the_weights_memo_notices_an_edit_that_keeps_size_and_mtime(env: Env):
    from tpsearch.loading import file_sha256

    f = env.tmp() / "weights.bin"
    f.write_bytes(b"a" * 4096)
    st = f.stat()
    first = file_sha256(f)
    f.write_bytes(b"b" * 4096)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
    assert file_sha256(f) != first


# ------------------------------------------------------------------------------ bad input
@case("bad input")
def id_columns_of_different_widths_or_string_kinds_build(env: Env):
    t = env.tmp()
    parts = t / "parts"
    parts.mkdir()
    texts = corpus_texts(20)
    pq.write_table(pa.table({"id": pa.array(range(10), pa.int8()), "text": texts[:10]}),
                   parts / "a.parquet")
    pq.write_table(pa.table({"id": pa.array(range(10, 20), pa.int64()), "text": texts[10:]}),
                   parts / "b.parquet")
    res = build_index(env.cfg(t / "ints", parts))
    assert Searcher.open(res.out).idmap.ids == list(range(20))
    strs = t / "strs"
    strs.mkdir()
    pq.write_table(pa.table({"id": pa.array(["a", "b"], pa.string()), "text": texts[:2]}),
                   strs / "a.parquet")
    pq.write_table(pa.table({"id": pa.array(["c", "d"], pa.large_string()), "text": texts[2:4]}),
                   strs / "b.parquet")
    res = build_index(env.cfg(t / "strs-idx", strs))
    assert Searcher.open(res.out).idmap.ids == ["a", "b", "c", "d"]


@case("bad input")
def an_output_inside_the_corpus_folder_is_refused(env: Env):
    t = env.tmp()
    corpus_dir = t / "corpus"
    corpus_dir.mkdir()
    write_corpus(corpus_dir / "c.parquet", 10)
    cli_fails(["build", corpus_dir, "--out", corpus_dir / "idx", "--model", env.model],
              "inside the corpus directory")
    assert sorted(p.name for p in corpus_dir.iterdir()) == ["c.parquet"]


@case("bad input")
def invalid_utf8_names_the_row_and_leaves_nothing(env: Env):
    t = env.tmp()
    good = [s.encode() for s in corpus_texts(30)]
    good[17] = b"bad \xff\xfe bytes"
    raw = pa.array(good, pa.binary())
    text = pa.Array.from_buffers(pa.string(), len(good), raw.buffers())
    corpus = t / "bad.parquet"
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(30)], "text": text}), corpus)
    cli_fails(["build", corpus, "--out", t / "idx", "--model", env.model, "--device", "cpu"],
              "bad.parquet", "'text'", "corpus row 17", "UTF-8")
    # nothing but the (empty) lock file, which a build keeps beside its output
    assert sorted(p.name for p in t.iterdir()) == [".idx.lock", "bad.parquet"]


@case("bad input")
def a_full_disk_is_one_line_and_keeps_the_finished_shards(env: Env):
    import tpsearch.pipeline.runner as runner

    t = env.tmp()
    corpus = write_corpus(t / "c.parquet", 40)
    real, calls = runner.write_shard, []

    def full(path, *args):
        calls.append(path)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, *args)

    runner.write_shard = full
    try:
        out = cli_fails(["build", corpus, "--out", t / "idx", "--model", env.model, "--device",
                         "cpu", "--shard-rows", "8", "--no-progress"],
                        "No space left on device", "resume")
    finally:
        runner.write_shard = real
    assert "shard-" in out
    assert len(WorkDir((t / "idx").resolve()).complete_shards()) == 2 and not (t / "idx").exists()


@case("bad input")
def unknown_or_absent_devices_are_one_line(env: Env):
    import torch

    cli_fails(["build", env.corpus, "--out", env.tmp() / "x", "--model", env.model, "--device",
               "bogus"], "bogus")
    if not torch.cuda.is_available():
        cli_fails(["build", env.corpus, "--out", env.tmp() / "x", "--model", env.model,
                   "--device", "cuda"], "CUDA is not available")
        cli_fails(["search", env.index, "river", "--device", "cuda", "--mode", "dense"],
                  "CUDA is not available")
    refused(lambda: TPEncoder.from_pretrained(str(env.model), device="bogus"), InputError, "bogus")


@case("bad input")
def an_unwritable_hash_memo_does_not_stop_search(env: Env):
    from tpsearch import loading

    cache = env.tmp() / "cache"
    (cache / "hashes.json").mkdir(parents=True)  # cannot be written: a read-only cache
    old = os.environ.get("TPSEARCH_CACHE")
    os.environ["TPSEARCH_CACHE"] = str(cache)
    try:
        assert len(Searcher.open(env.index).search("river", k=3, mode="dense")) == 3
        assert loading.file_sha256(Path(env.model) / "model.safetensors")
    finally:
        if old is None:
            os.environ.pop("TPSEARCH_CACHE")
        else:
            os.environ["TPSEARCH_CACHE"] = old


@case("bad input")
def hostile_config_files_are_one_line(env: Env):
    t = env.tmp()
    bomb = t / "bomb.yaml"
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        lines.append(f"{name}: &{name} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]")
    lines.append("corpus: *i")
    bomb.write_text("\n".join(lines) + "\n")
    started = time.perf_counter()
    out = cli_fails(["build", "--config", bomb], "bomb.yaml", "not allowed")
    assert time.perf_counter() - started < 10 and len(out) < 400
    keys = t / "keys.yaml"
    keys.write_text("1: 2\ncorpus: x\n")
    cli_fails(["build", "--config", keys], "keys.yaml", "option names must be strings")
    keys.write_text("? [1, 2]\n: x\n")
    cli_fails(["build", "--config", keys], "keys.yaml", "not valid YAML")
    deep = t / "deep.yaml"
    deep.write_text("corpus: " + "[" * 20_000 + "]" * 20_000 + "\n")
    cli_fails(["build", "--config", deep], "deep.yaml")
    deep_toml = t / "deep.toml"
    deep_toml.write_text("corpus = " + "[" * 20_000 + "]" * 20_000 + "\n")
    cli_fails(["build", "--config", deep_toml], "deep.toml")
    nested = t / "nested.yaml"
    nested.write_text(f"corpus: {env.corpus}\nout: {t / 'o'}\nbatch_size: {{a: 1}}\n")
    cli_fails(["build", "--config", nested], "batch_size", "plain value")


@case("bad input")
def a_string_where_a_list_of_queries_belongs_is_refused(env: Env):
    s = Searcher.open(env.index)
    refused(lambda: s.search_batch("river", k=2), InputError, "list of strings")
    refused(lambda: s.search(["river", "stone"], k=2), InputError, "search_batch")
    refused(lambda: s.embed_documents("river"), InputError, "list of strings")
    assert len(s.search_batch(("river", "stone"), k=2)) == 2


# ------------------------------------------------------------------------------ one source
@case("one source of truth")
def the_library_and_the_cli_build_the_same_index(env: Env):
    from tpsearch.config import BuildConfig, ModelConfig
    from tpsearch.fusion import FusionSettings, lexical_weight_for
    from tpsearch.passages import PassageSettings
    from tpsearch.transform import TransformSettings

    t = env.tmp()
    r = CliRunner().invoke(main, ["build", str(env.corpus), "--out", str(t / "cli"), "--model",
                                  str(env.model), "--no-progress"])
    assert r.exit_code == 0, r.output
    api = build_index(BuildConfig(corpus=str(env.corpus), out=str(t / "api"),
                                  model=ModelConfig(model=str(env.model))))
    a, c = Searcher.open(api.out).manifest, Searcher.open(t / "cli").manifest
    for section in ("encoder", "passages", "transform", "lexical", "fusion", "default_mode",
                    "index", "dim", "vectors"):
        assert getattr(a, section) == getattr(c, section), section
    assert {**a.build.config, "out": ""} == {**c.build.config, "out": ""}
    enc = TPEncoder.from_pretrained(str(env.model))
    assert enc.settings == c.encoder and enc.settings.max_length == 256
    assert a.passages == PassageSettings()
    assert a.fusion == FusionSettings(lexical_weight=lexical_weight_for(a.lexical.mean_length))
    assert a.transform.kind == TransformSettings().kind
    va = Searcher.open(api.out).index.reconstruct_n(0, a.vectors)
    vc = Searcher.open(t / "cli").index.reconstruct_n(0, c.vectors)
    np.testing.assert_array_equal(va, vc)


@case("one source of truth")
def search_parameters_are_per_call_and_the_index_is_never_changed(env: Env):
    t = env.tmp()
    corpus = write_corpus(t / "c.parquet", 300)
    res = build_index(env.cfg(t / "hnsw", corpus, index="hnsw"))
    s = Searcher.open(res.out)
    hnsw = faiss.downcast_index(faiss.downcast_index(s.index).index).hnsw
    before = hnsw.efSearch
    queries = corpus_texts(300)[:12]
    want = {(q, ef): ids_of(s.search(q, k=5, mode="dense", efSearch=ef))
            for q in queries for ef in (16, 512)}
    assert hnsw.efSearch == before
    errors, got = [], {}

    def work(ef):
        try:
            for q in queries:
                got[(q, ef)] = ids_of(s.search(q, k=5, mode="dense", efSearch=ef))
        except Exception as exc:  # noqa: BLE001 - collected below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(ef,)) for ef in (16, 512, 16, 512)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors and got == want and hnsw.efSearch == before


@case("one source of truth")
def dense_search_of_a_batch_is_one_faiss_call(env: Env):
    import tpsearch.segments

    s = Searcher.open(env.index)
    calls = []
    real = tpsearch.segments.faiss_search

    def counting(index, x, *a, **kw):
        calls.append(len(x))
        return real(index, x, *a, **kw)

    single = [ids_of(s.search(q, k=3, mode="dense")) for q in ("river", "stone", "guitar")]
    tpsearch.segments.faiss_search = counting
    try:
        batch = s.search_batch(["river", "stone", "guitar"], k=3, mode="dense")
    finally:
        tpsearch.segments.faiss_search = real
    assert calls == [3] and [ids_of(h) for h in batch] == single


# ------------------------------------------------------------------------------ runner
def run_all(selected: list[Case] | None = None) -> int:
    """Run the cases, print a table by class; returns the number of failures."""
    cases = selected or CASES
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        env = Env(Path(tmp))
        print(f"set-up (tiny model, corpus, index): {time.perf_counter() - t0:.1f} s")
        results: dict[str, list[tuple[str, str | None]]] = {}
        for c in cases:
            t1 = time.perf_counter()
            try:
                c.run(env)
                error = None
            except BaseException as exc:  # noqa: BLE001 - reported, counted
                error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
            results.setdefault(c.kind, []).append((c.name, error))
            print(f"  {'ok  ' if error is None else 'FAIL'} {c.kind:<22} {c.name} "
                  f"({time.perf_counter() - t1:.1f} s){'' if error is None else ': ' + error}")
    print()
    print(f"{'class':<24}{'cases':>6}{'passed':>8}{'failed':>8}")
    failures = 0
    for kind, rows in results.items():
        bad = sum(1 for _, e in rows if e is not None)
        failures += bad
        print(f"{kind:<24}{len(rows):>6}{len(rows) - bad:>8}{bad:>8}")
    total = sum(len(r) for r in results.values())
    print(f"{total - failures} passed, {failures} failed")
    return failures


if __name__ == "__main__":
    # The cases live in the importable module (hostile_writes registers its own there).
    import hostile_cases as probe
    import hostile_writes  # noqa: F401

    names = set(sys.argv[1:])
    sys.exit(1 if probe.run_all([c for c in probe.CASES if not names or c.name in names]) else 0)

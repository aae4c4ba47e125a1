"""FAISS index choice, training, search-parameter tuning and recall measurement.

Inner product on L2-normalised vectors (cosine). ``auto`` chooses as autofaiss does, by the
document count and an optional memory budget:

* exact (``Flat``) up to :data:`FLAT_MAX_DOCS` vectors: below that a brute-force query costs
  less than a tenth of encoding the query on a 2-core CPU (measured with
  ``benchmarks/bench_search.py``: ~24 ms flat vs ~1.2 ms HNSW over 20k x 640 dims);
* ``HNSW32,Flat`` above it when the vectors plus graph fit the budget;
* ``IVF{nlist},PQ{m}`` otherwise, with ``m`` the largest code size that fits.

ANN search parameters (``nprobe``, ``efSearch``) are tuned on a sample of the corpus' own
vectors used as queries: the smallest value reaching :data:`TARGET_RECALL` recall@10 against
exact search.
"""

from __future__ import annotations

import math
import os
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator

import faiss
import numpy as np

from .errors import InputError, UnbuildableIndex

FLAT_MAX_DOCS = 20_000
TARGET_RECALL = 0.95
NPROBE_LADDER = (1, 2, 4, 8, 16, 32, 64, 128, 256)
EF_LADDER = (16, 32, 64, 128, 256, 512)


@dataclass
class IndexPlan:
    """The chosen index: a FAISS factory string and why; ``ondisk``: an IVF index whose
    inverted lists live in a file beside it, memory-mapped at search time (for indexes larger
    than memory: only the coarse centroids, the transform and the id map stay in RAM)."""

    factory: str
    reason: str
    ondisk: bool = False

    @property
    def is_exact(self) -> bool:
        return self.factory == "Flat"


def nlist_for(n: int) -> int:
    """About 4 sqrt(n) lists, a power of two, at least 39 training points per list."""
    k = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n))))
    return int(max(1, min(k, n // 39, 65536)))


def _pq_m(dim: int, n: int, budget: int | None, largest: int = 128) -> int:
    """Largest PQ code size (bytes per vector, at most ``largest``) dividing ``dim`` that fits
    ``budget``."""
    choices = [m for m in (128, 96, 64, 48, 32, 24, 16, 8, 4)
               if dim % m == 0 and m <= dim and m <= largest]
    for m in choices:
        if budget is None or n * (m + 8) * 1.1 <= budget:
            return m
    raise InputError(f"no IVF-PQ index of {n} vectors fits a memory budget of {budget} bytes")


#: The ``--index`` names; anything else must be a FAISS factory string.
NAMED_INDEXES = ("auto", "flat", "hnsw", "ivf", "ivfpq", "ivf-disk", "ivfpq-disk")
#: The inverted lists' file of an on-disk IVF index: beside its index file, where FAISS
#: looks for it when reading with IO_FLAG_ONDISK_SAME_DIR (memory-mapped).
ONDISK_FILE = "index.ivfdata"
#: Largest PQ code (bytes per vector) of an index whose codes live on disk.
DISK_PQ_MAX = 64
#: A dimension FAISS can build most factory strings for (8! = 2^7 * 3^2 * 5 * 7: divisible by
#: every PQ code size up to 10 and by 12, 16, 32, 64, 128, ...): ``--index`` is checked with it
#: before the model (and so the real dimension) is known; the real one is checked again.
PROBE_DIM = 40320


def check_index_spec(spec: str) -> str:
    """``--index`` as given, refused in one line unless it is a name or a FAISS factory
    string, before the dimension is known (the build's early check; :func:`choose_index`
    parses the same way and checks a factory string at the real dimension)."""
    s = _index_name(spec)
    if s not in NAMED_INDEXES:
        _factory(s, PROBE_DIM)
    return s


def _index_name(spec: str) -> str:
    """``spec`` stripped, lower-cased where it is one of :data:`NAMED_INDEXES`."""
    if not isinstance(spec, str) or not spec.strip():
        raise UnbuildableIndex(f"--index {spec!r}: use {', '.join(NAMED_INDEXES)} or a FAISS "
                               "factory string such as 'IVF1024,PQ64'")
    s = spec.strip()
    return s.lower() if s.lower() in NAMED_INDEXES else s


def _factory(s: str, dim: int) -> faiss.Index:
    try:
        return faiss.index_factory(dim, s, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        reason = str(exc).splitlines()[0].rsplit(": ", 1)[-1]  # past FAISS's source location
        raise UnbuildableIndex(f"--index {s!r}: not a FAISS factory string for {dim}-dimensional "
                               f"vectors ({reason}); use "
                               f"{', '.join(NAMED_INDEXES)} or e.g. 'IVF1024,PQ64'") from None


def choose_index(spec: str, n: int, dim: int, memory_budget: int | None = None) -> IndexPlan:
    """Turn ``--index`` (auto, flat, hnsw, ivf, ivfpq or a factory string) into a plan."""
    s = _index_name(spec)  # a factory string is checked once, below, at the real dimension
    key = s.lower()
    flat_bytes = n * dim * 4
    if key == "auto":
        if n <= FLAT_MAX_DOCS and (memory_budget is None or flat_bytes <= memory_budget):
            return IndexPlan("Flat", f"{n} vectors <= {FLAT_MAX_DOCS}: exact search is cheap")
        hnsw_bytes = flat_bytes + n * 32 * 2 * 4
        if memory_budget is None or hnsw_bytes <= memory_budget:
            return IndexPlan("HNSW32,Flat", f"{n} vectors > {FLAT_MAX_DOCS}; "
                             f"vectors and graph need {hnsw_bytes / 2**20:.0f} MiB")
        try:
            m = _pq_m(dim, n, memory_budget)
        except InputError:  # not even the smallest codes fit: the lists go to disk
            m = _pq_m(dim, n, None, DISK_PQ_MAX)
            return IndexPlan(f"IVF{nlist_for(n)},PQ{m}", f"{n} vectors; even 4-byte codes exceed "
                             f"the memory budget: {m} B/vector in inverted lists on disk, "
                             "memory-mapped", ondisk=True)
        return IndexPlan(f"IVF{nlist_for(n)},PQ{m}", f"{n} vectors; HNSW needs "
                         f"{hnsw_bytes / 2**20:.0f} MiB, over the budget: compressed to {m} B/vector")
    if key == "flat":
        return IndexPlan("Flat", "asked for")
    if key == "hnsw":
        return IndexPlan("HNSW32,Flat", "asked for")
    if key == "ivf":
        return IndexPlan(f"IVF{nlist_for(n)},Flat", "asked for")
    if key == "ivfpq":
        return IndexPlan(f"IVF{nlist_for(n)},PQ{_pq_m(dim, n, memory_budget)}", "asked for")
    if key == "ivf-disk":
        return IndexPlan(f"IVF{nlist_for(n)},Flat", "asked for: inverted lists on disk", True)
    if key == "ivfpq-disk":
        return IndexPlan(f"IVF{nlist_for(n)},PQ{_pq_m(dim, n, None, DISK_PQ_MAX)}",
                         "asked for: inverted lists on disk", True)
    _factory(s, dim)
    return IndexPlan(s, "asked for")


#: Centroids of each PQ codebook (8-bit codes): k-means needs at least this many vectors.
PQ_CENTROIDS = 256


def fit_plan(plan: IndexPlan, n: int) -> IndexPlan:
    """The plan made trainable on ``n`` vectors: an IVF list count above ``n`` is lowered (and
    said so); a PQ index on fewer than 256 vectors is refused with the reason."""
    m = re.search(r"IVF(\d+)", plan.factory)
    factory, reason = plan.factory, plan.reason
    if m and int(m.group(1)) > n:
        lists = max(1, n // 39) if n >= 39 else 1
        factory = factory.replace(m.group(0), f"IVF{lists}", 1)
        reason += f"; {m.group(0)} lowered to IVF{lists}: only {n} vectors to train on"
    if re.search(r"PQ\d+", factory) and n < PQ_CENTROIDS:
        raise UnbuildableIndex(
            f"--index {plan.factory!r}: product quantisation trains {PQ_CENTROIDS} centroids per "
            f"code and the corpus has only {n} vectors; use --index flat (or auto). The encoded "
            "shards are kept: the same command with another --index resumes without encoding")
    return IndexPlan(factory, reason, plan.ondisk)


def new_index(plan: IndexPlan, dim: int) -> faiss.Index:
    return faiss.index_factory(dim, plan.factory, faiss.METRIC_INNER_PRODUCT)


#: Search parameters and the index kind (in the factory string) each applies to.
SEARCH_PARAMS = {"nprobe": "IVF", "efSearch": "HNSW"}
#: The largest value each may take (more probes or candidates than this only burns memory).
SEARCH_PARAM_MAX = {"nprobe": 65536, "efSearch": 32768}


def check_search_params(factory: str, params: dict) -> None:
    """Refuse a parameter the index does not have (``nprobe`` on a Flat index), or a bad value."""
    if not isinstance(params, dict):
        raise InputError(f"search parameters must be a mapping, got {type(params).__name__}")
    for name, value in params.items():
        if name not in SEARCH_PARAMS:
            raise InputError(f"unknown search parameter {str(name)[:40]!r}; known: "
                             f"{', '.join(SEARCH_PARAMS)}")
        if SEARCH_PARAMS[name] not in factory:
            raise InputError(f"{name} does not apply to this index ({factory}); it applies to "
                             f"{SEARCH_PARAMS[name]} indexes")
        top = SEARCH_PARAM_MAX[name]
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
            raise InputError(f"{name} must be an integer in 1..{top}, got {str(value)[:40]}")


#: Below this share of allowed vectors a filtered search is "selective": HNSW then searches
#: its flat storage exactly over the allowed rows (a graph walk restricted to 1% of its nodes
#: loses recall and time). Above it, and for IVF, the search is widened by 1/share.
SELECTIVE_SHARE = 0.2


def transform_chain(index: faiss.Index) -> list:
    """The vector transforms an ``IndexPreTransform`` applies, in order ([] for others)."""
    outer = faiss.downcast_index(index)
    if not isinstance(outer, faiss.IndexPreTransform):
        return []
    return [faiss.downcast_VectorTransform(outer.chain.at(i)) for i in range(outer.chain.size())]


def apply_chain(chain: list, x: np.ndarray) -> np.ndarray:
    """Rows ``x`` through FAISS vector transforms in order (float32, as FAISS takes them)."""
    for vt in chain:
        x = vt.apply(np.ascontiguousarray(x, dtype=np.float32))
    return x


class CallParameters:
    """FAISS ``SearchParameters`` for one search call: the shared index object is never
    changed, so concurrent searches with different parameters (or filters) need no lock.
    Holds the Python objects FAISS points to, so they live as long as the call.

    ``allowed`` (sorted row ids) restricts the search to those rows (pre-filtering, through
    an ``IDSelector``); a selective one moves an HNSW search to its exact flat storage.
    The search runs on ``target``, the index behind its ``IndexPreTransform``, with queries
    through :meth:`prepare`, which applies the transform one query at a time."""

    def __init__(self, index: faiss.Index, params: dict, allowed: np.ndarray | None = None,
                 allowed_bits: tuple[np.ndarray, int] | None = None):
        """``allowed_bits``: the allowed rows as a packed bitmap (little bit order) made
        beforehand and how many rows it allows (a segment's live rows, reused by every
        search), instead of ``allowed``."""
        self.parts: list = []
        self.params = None
        outer = faiss.downcast_index(index)
        wrapped = isinstance(outer, faiss.IndexPreTransform)
        inner = faiss.downcast_index(outer.index) if wrapped else outer
        self.target: faiss.Index = inner
        self.outer = outer
        sel = None
        selective = False
        n_allowed = None  # rows the search may return (None: all)
        if allowed is not None:
            # A bitmap (one bit per row) answers "is this row allowed?" with one load, where
            # IDSelectorBatch's hash set cost 11x the unfiltered time at 50% allowed on IVF.
            mask = np.zeros(index.ntotal, dtype=bool)
            mask[allowed] = True
            allowed_bits = (np.packbits(mask, bitorder="little"), len(allowed))
        if allowed_bits is not None:
            bits, count = allowed_bits
            sel = faiss.IDSelectorBitmap(index.ntotal, faiss.swig_ptr(bits))
            self.parts += [bits, sel]
            selective = count < SELECTIVE_SHARE * max(1, index.ntotal)
            n_allowed = count
        if sel is None and not params:
            return
        if isinstance(inner, faiss.IndexHNSW) and selective:
            self.target = faiss.downcast_index(inner.storage)
            p = faiss.SearchParameters()
            p.sel = sel
            self.parts.append(p)
            self.params = p
            return
        # A filter allowing a share s of the rows scales the search's breadth by 1/s, so about
        # as many allowed rows are visited as an unfiltered search visits rows.
        share = n_allowed / max(1, index.ntotal) if n_allowed is not None else 1.0
        if isinstance(inner, faiss.IndexHNSW):
            p = faiss.SearchParametersHNSW()
            ef = int(params.get("efSearch", inner.hnsw.efSearch))
            p.efSearch = min(SEARCH_PARAM_MAX["efSearch"], math.ceil(ef / share))
        elif isinstance(inner, faiss.IndexIVF):
            p = faiss.SearchParametersIVF()
            p.nprobe = min(int(inner.nlist), math.ceil(int(params.get("nprobe", inner.nprobe)) / share))
        else:
            p = faiss.SearchParameters()
        if sel is not None:
            p.sel = sel
        self.parts.append(p)
        self.params = p

    def prepare(self, queries: np.ndarray) -> np.ndarray:
        """Queries as ``target`` takes them (:func:`prepare_queries`)."""
        return prepare_queries(transform_chain(self.outer), queries)


def prepare_queries(chain: list, queries: np.ndarray) -> np.ndarray:
    """Queries through ``chain`` (an index's transforms), each query on its own, so that a
    query's vector, and so its hits and scores, never depend on the other queries of the call
    (a matrix product may round a row differently in a batch: the embed filter and partial
    whitening are matrices)."""
    x = np.ascontiguousarray(queries, dtype=np.float32)
    if not chain:
        return x
    rows = [apply_chain(chain, row[None]) for row in x]
    return np.vstack(rows) if rows else np.zeros((0, chain[-1].d_out), np.float32)


def chain_key(chain: list) -> bytes:
    """An index's transforms (:func:`transform_chain`) as bytes (FAISS's own serialisation):
    two chains with the same key transform a query identically, so it need go through one of
    them only."""
    out = []
    for vt in chain:
        writer = faiss.VectorIOWriter()
        faiss.write_VectorTransform(vt, writer)
        out.append(faiss.vector_to_array(writer.data).tobytes())
    return b"".join(len(b).to_bytes(8, "little") + b for b in out)


def search(index: faiss.Index, queries: np.ndarray, k: int, params: dict | None = None,
           allowed: np.ndarray | None = None, allowed_bits: tuple[np.ndarray, int] | None = None,
           transformed: bool = False):
    """``index.search`` with per-call parameters and, with ``allowed`` (sorted rows) or
    ``allowed_bits`` (a packed bitmap and its count), only over those rows: (scores, rows),
    each (len(queries), k); rows are -1 past the last match. ``transformed``: the queries
    went through the index's transforms already (:func:`prepare_queries`)."""
    call = CallParameters(index, params or {}, allowed, allowed_bits)
    x = np.ascontiguousarray(queries, dtype=np.float32)
    if not transformed:
        x = np.ascontiguousarray(call.prepare(x))
    return call.target.search(x, k, params=call.params)


class ExactTopK:
    """Exact top-k row numbers of ``queries`` over vectors added batch by batch (never all in
    memory): the truth ANN recall is measured against."""

    def __init__(self, queries: np.ndarray, k: int):
        self.queries, self.k, self.offset = queries, k, 0
        self.best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
        self.best_i = np.full((len(queries), k), -1, dtype=np.int64)

    def add(self, vecs: np.ndarray) -> None:
        k = self.k
        if len(vecs):
            scores = self.queries @ vecs.T
            top = min(k, scores.shape[1])
            part = np.argpartition(-scores, top - 1, axis=1)[:, :top]
            s = np.concatenate([self.best_s, np.take_along_axis(scores, part, 1)], axis=1)
            i = np.concatenate([self.best_i, part + self.offset], axis=1)
            order = np.argsort(-s, axis=1, kind="stable")[:, :k]
            self.best_s, self.best_i = np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)
        self.offset += len(vecs)


def exact_topk(queries: np.ndarray, batches: Iterable[np.ndarray], k: int) -> np.ndarray:
    """Exact top-k row numbers over vectors streamed in batches (never all in memory)."""
    top = ExactTopK(queries, k)
    for vecs in batches:
        top.add(vecs)
    return top.best_i


def ann_recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Mean fraction of the exact top-k found in the returned top-k."""
    hits = [len(set(f[:k]) & set(t[:k]) - {-1}) / max(1, len(set(t[:k]) - {-1}))
            for f, t in zip(found, truth)]
    return float(np.mean(hits)) if hits else 1.0


def tune_search(index: faiss.Index, plan: IndexPlan, queries: np.ndarray, truth: np.ndarray,
                k: int = 10) -> tuple[dict, float]:
    """The cheapest search parameter reaching the target recall; returns (params, recall)."""
    if plan.is_exact:
        return {}, 1.0
    if "HNSW" in plan.factory:
        name, ladder = "efSearch", EF_LADDER
    elif "IVF" in plan.factory:
        name, ladder = "nprobe", tuple(v for v in NPROBE_LADDER if v <= _nlist_of(index))
    else:
        _, found = index.search(queries, k)
        return {}, ann_recall_at_k(found, truth, k)
    params, recall = {}, 0.0
    per_list = mapped_list_bytes(index)
    for value in ladder:
        params = {name: value}
        if per_list is None:
            _, found = search(index, queries, k, params)
        else:  # lists on disk: queries in batches, their mapped pages released between
            batch = max(1, int(TUNE_MAPPED_BYTES // (value * per_list)))
            parts = []
            for at in range(0, len(queries), batch):
                parts.append(search(index, queries[at:at + batch], k, params)[1])
                release_mapped_lists(index)
            found = np.concatenate(parts) if parts else np.zeros((0, k), np.int64)
        recall = ann_recall_at_k(found, truth, k)
        if recall >= TARGET_RECALL:
            break
    return params, recall


#: Bytes of on-disk lists recall tuning reads through the memory map between releases.
TUNE_MAPPED_BYTES = 64 << 20


def ondisk_lists(index: faiss.Index):
    """The index's ``OnDiskInvertedLists`` if it is an IVF index whose lists are on disk,
    else None."""
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:  # not an IVF index
        return None
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    return lists if isinstance(lists, faiss.OnDiskInvertedLists) else None


def mapped_list_bytes(index: faiss.Index) -> float | None:
    """The mean bytes of one inverted list if the index's lists are on disk, else None."""
    lists = ondisk_lists(index)
    return None if lists is None else max(1.0, float(lists.totsize) / max(1, lists.nlist))


def _nlist_of(index: faiss.Index) -> int:
    ivf = faiss.extract_index_ivf(index)
    return int(ivf.nlist)


@contextmanager
def c_stdout_silenced() -> Iterator[None]:
    """Send what C code writes to standard output meanwhile to /dev/null (file descriptor 1,
    with C's buffers flushed before it is restored), so ``--json`` output stays JSON."""
    import ctypes

    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)
        yield
    finally:
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


def release_mapped_lists(index: faiss.Index) -> None:
    """Drop this process's resident pages of an index's memory-mapped on-disk inverted lists
    (``madvise(MADV_DONTNEED)`` on FAISS's shared file mapping: the data stays in the file and
    the page cache, and is faulted back in when read again). Reading lists through the map
    makes their pages count in the process's resident set until then; this keeps an index
    larger than memory from growing its reader's RSS toward the file's size. No-op for lists in
    memory and on systems without ``madvise``."""
    lists = ondisk_lists(index)
    if lists is None or lists.ptr is None or not lists.totsize:
        return
    import ctypes
    import mmap

    advice = getattr(mmap, "MADV_DONTNEED", None)
    madvise = getattr(ctypes.CDLL(None, use_errno=True), "madvise", None)
    if advice is None or madvise is None:
        return
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    if madvise(ctypes.c_void_p(int(lists.ptr)), ctypes.c_size_t(int(lists.totsize)), advice):
        err = ctypes.get_errno()
        raise OSError(err, f"madvise on the on-disk inverted lists: {os.strerror(err)}")


def read_index_file(path, lists_on_disk: bool) -> faiss.Index:
    """A FAISS index file; ``lists_on_disk``: its inverted lists lie in :data:`ONDISK_FILE`
    beside it (the file names them where the build wrote them, before publishing moved them)
    and are memory-mapped from there. FAISS printf()s the path it maps: silenced, so
    library code never prints and ``--json`` output stays JSON."""
    if not lists_on_disk:
        return faiss.read_index(str(path))
    with c_stdout_silenced():
        return faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR)

"""Assembler: shards in, the searchable index directory's files out.

Streams the shards (never all vectors in memory): fits the transform on a sample, trains the
FAISS index if it needs it, fills it, writes the id map (one row per passage) and the lexical
index, and tunes ANN search parameters for recall against exact search.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import faiss
import numpy as np
import pyarrow.parquet as pq

from ..errors import InputError, UnbuildableIndex
from ..index import (ONDISK_FILE, ExactTopK, IndexPlan, c_stdout_silenced, choose_index, fit_plan, new_index,
                     tune_search)
from ..lexical import LexicalBuilder
from ..metadata import PREFIX
from ..integrity import inside
from ..manifest import ID_MAP_FILE, INDEX_FILE, IndexInfo, LexicalInfo, TransformInfo
from ..passages import sentence_spans
from ..transform import (FIT_SAMPLE, QUERY_SAMPLE, FittedTransform, TransformSettings,
                         fit_transform, read_example_queries, read_vector)
from .mapper import StageTimes
from .reader import join_title
from .writer import read_table, read_vectors, shard_meta, shard_rows

log = logging.getLogger("tpsearch")

RECALL_QUERIES = 200
#: Codes an on-disk index build holds in RAM at most, without a memory budget.
ONDISK_BATCH_BYTES = 1 << 30

TRAIN_SAMPLE_PER_LIST = 64
QUERY_SHIFT_FILE = "query_shift.npy"

#: Encodes query-like texts with the index's query prompt (the runner passes the encoder's).
QueryEncoder = Callable[[list[str]], np.ndarray]


def no_query_encoder(texts: list[str]) -> np.ndarray:
    """The query encoder of an assembly that keeps a fitted transform (a segment of an index):
    it is never fitted again, so no query is encoded."""
    raise AssertionError("an assembly that keeps its transform encodes no queries")


@dataclass
class AssemblyOptions:
    index: str  # --index
    memory_budget: int | None
    store_text: bool
    transform: TransformSettings
    lexical: bool
    lexical_unit: str = "document"  # document | passage
    metadata: tuple[str, ...] = ()  # columns kept in the id map (as meta.NAME)
    keep_transform: "KeptTransform | None" = None  # the base version's, kept
    unembedding: Any = None  # the model's output matrix, for the embed filter
    segment: bool = False  # a segment of a version: an index too small to train is made Flat
    # (an empty index file trained once, its plan): every segment of a sharded build starts
    # from it, so IVF segments share one coarse quantizer
    trained: "tuple[Path, IndexPlan] | None" = None
    # an index filled already (IVF segments merged list by list): the shards give the id map,
    # the lexical index and the recall check only
    prefilled: "tuple[Any, IndexPlan] | None" = None


@dataclass(frozen=True)
class KeptTransform:
    """Where a version's fitted transform lies: in a FAISS index file (its transform chain)
    and the query shift's file, as its manifest describes them."""

    index_path: Path
    shift_path: Path | None
    info: TransformInfo
    dim: int

    @classmethod
    def of(cls, location, manifest) -> "KeptTransform":
        """The transform of a version (its first segment's index holds the chain)."""
        from ..segments import segment_dir, segments_of

        first = segments_of(location, manifest)[0]
        index_path = inside(segment_dir(location.root, first.path), first.index.file)
        shift = manifest.transform.query_shift_file
        return cls(index_path, inside(location.path, shift) if shift else None,
                   manifest.transform, manifest.dim)


@dataclass
class Assembled:
    """What the manifest needs to know about the files written."""

    index: IndexInfo
    transform: TransformInfo
    lexical: LexicalInfo | None
    dim: int
    documents: int
    vectors: int
    skipped: int
    truncated: int
    tokens: int
    transform_source: str = "fitted"  # or "kept" (an incremental build)
    drift: float | None = None
    reused: int = 0  # documents taken from the base version (incremental builds)
    changed: int = 0
    added: int = 0


def sample_rows(n: int, k: int, seed: int = 0) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=min(n, k), replace=False))


def gather(shards: list[Path], counts: list[int], rows: np.ndarray) -> np.ndarray:
    """Vectors at global positions ``rows`` (sorted), reading one shard at a time."""
    return gather_many(shards, counts, [rows])[0]


def gather_many(shards: list[Path], counts: list[int], row_sets: list[np.ndarray]) -> list[np.ndarray]:
    """The vectors at each set of global positions (each sorted), reading each shard that
    holds any of them once."""
    out: list[list[np.ndarray]] = [[] for _ in row_sets]
    offset = 0
    for path, n in zip(shards, counts):
        picks = [rows[(rows >= offset) & (rows < offset + n)] - offset for rows in row_sets]
        if any(len(p) for p in picks):
            vecs = read_vectors(path)
            for o, p in zip(out, picks):
                if len(p):
                    o.append(vecs[p])
        offset += n
    dim = shard_meta(shards[0])["dim"] if shards else 0
    return [np.concatenate(o) if o else np.zeros((0, dim), np.float32) for o in out]


def first_sentences(shards: list[Path], limit: int) -> list[str]:
    """The first sentence of up to ``limit`` documents, spread over the corpus: query-like text."""
    texts = []
    for path in shards:
        t = read_table(path, ["passage", "text"]).to_pydict()
        for number, text in zip(t["passage"], t["text"]):
            if number == 0:
                span = next(iter(sentence_spans(text)), None)
                if span:
                    texts.append(text[span[0]:span[1]])
    if len(texts) > limit:
        texts = [texts[i] for i in sample_rows(len(texts), limit, seed=2)]
    return texts


def _kept(sample: np.ndarray, opts: AssemblyOptions):
    """The base version's fitted transform and query shift, unchanged, and how far the
    documents' mean has moved from the one it was fitted on (relative to the spread)."""
    kept = opts.keep_transform
    info = kept.info
    chain = []
    if info.kind != "none":
        raw = faiss.read_index(str(kept.index_path))  # owns the chain
        outer = faiss.downcast_index(raw)
        with tempfile.TemporaryDirectory() as tmp:  # a copy of each transform, through its file
            for i in range(outer.chain.size()):
                path = str(Path(tmp) / f"t{i}")
                faiss.write_VectorTransform(outer.chain.at(i), path)
                chain.append(faiss.read_VectorTransform(path))
    out_dim = chain[-1].d_out if chain else sample.shape[1]
    shift = read_vector(kept.shift_path, kept.dim) if kept.shift_path else None
    fitted = FittedTransform(info.kind, chain, out_dim, shift, info.note,
                             filtered=info.embed_filter is not None)
    drift = None
    if chain and hasattr(chain[0], "mean") and len(sample):
        mu = faiss.vector_to_array(faiss.downcast_VectorTransform(chain[0]).mean)
        spread = float(np.linalg.norm(sample - mu, axis=1).mean()) or 1.0
        drift = round(float(np.linalg.norm(sample.mean(0) - mu)) / spread, 4)
    return fitted, info, drift


def _fit(shards, sample: np.ndarray, opts: AssemblyOptions, encode_queries: QueryEncoder):
    ts = opts.transform
    if opts.keep_transform is not None:
        fitted, info, drift = _kept(sample, opts)
        log.info("transform: kept from the base version (documents' mean moved %.3f of their "
                 "spread)", drift or 0.0)
        return fitted, sample, info, "kept", drift
    queries, source = None, None
    if ts.kind != "none":
        if ts.query_examples:
            texts, source = read_example_queries(ts.query_examples), f"examples:{ts.query_examples}"
        else:
            texts, source = first_sentences(shards, QUERY_SAMPLE), "first-sentences"
        queries = encode_queries(texts) if texts else None
    fitted = fit_transform(sample, queries, ts, opts.unembedding)
    if fitted.note:
        log.info("transform: %s", fitted.note)
    info = TransformInfo(kind=fitted.kind, dim=fitted.out_dim if fitted.kind == "whiten" else None,
                         embed_filter=list(ts.embed_filter) if fitted.filtered else None,
                         out_dim=fitted.out_dim,
                         fitted_on=len(sample) if fitted.kind != "none" else 0,
                         query_stats=source if fitted.query_shift is not None else None,
                         query_samples=len(queries) if fitted.query_shift is not None else 0,
                         query_shift_file=QUERY_SHIFT_FILE if fitted.query_shift is not None else None,
                         note=fitted.note)
    return fitted, sample, info, "fitted", None


class ListSpill:
    """For an index whose inverted lists live on disk: the lists filled so far are written to
    a partial index file whenever they pass ``limit`` bytes in RAM, and all partials are merged
    into one memory-mapped file at the end (FAISS's on-disk merge), so the build never holds
    more than ``limit`` bytes of codes."""

    def __init__(self, index, work: Path, limit: int):
        self.index, self.work, self.limit = index, work, max(1, limit)
        self.ivf = faiss.extract_index_ivf(index)
        self.parts: list[str] = []
        self.next_id = 0
        work.mkdir(parents=True, exist_ok=True)

    def add(self, vecs: np.ndarray) -> None:
        """Add with their global row numbers as ids (each partial index counts from 0)."""
        ids = np.arange(self.next_id, self.next_id + len(vecs), dtype=np.int64)
        self.index.add_with_ids(vecs, ids)
        self.next_id += len(vecs)
        if self.index.ntotal * (self.ivf.code_size + 8) >= self.limit:
            self._spill()

    def _spill(self) -> None:
        if self.index.ntotal:
            path = self.work / f"part-{len(self.parts):05d}.faiss"
            faiss.write_index(self.index, str(path))
            self.parts.append(str(path))
            self.index.reset()  # the lists only: the quantizer stays trained

    def finish(self, data_file: Path) -> None:
        from faiss.contrib.ondisk import merge_ondisk

        self._spill()
        with c_stdout_silenced():  # FAISS printf()s as it sizes the file
            merge_ondisk(self.index, self.parts, str(data_file), shift_ids=False)
        shutil.rmtree(self.work, ignore_errors=True)


def _fill(index, shards: list[Path], final: Path, opts: AssemblyOptions,
          truth: ExactTopK | None = None, fitted=None,
          spill: ListSpill | None = None, add: bool = True) -> LexicalInfo | None:
    """Add every shard's vectors (unless ``add`` is false: the index holds them already);
    write the id map and the lexical index beside; with ``truth``, the exact top-k of the
    recall queries is found in the same pass."""
    lexical = LexicalBuilder() if opts.lexical else None
    cols = ["id", "passage", "start", "end", "row", "doc_sha256"] + (["text"] if opts.store_text else [])
    cols += [PREFIX + c for c in opts.metadata]
    read = cols + [c for c in ("title", "text") if lexical is not None and c not in cols]
    writer = None
    try:
        for path in shards:
            vecs = read_vectors(path)
            if add:
                (spill.add if spill is not None else index.add)(vecs)
            if truth is not None:
                truth.add(fitted.apply(vecs))
            shard = read_table(path, read)
            table = shard.select(cols).rename_columns(
                [("corpus_row" if c == "row" else c) for c in cols])
            if writer is None:
                writer = pq.ParquetWriter(final / ID_MAP_FILE, table.schema)
            writer.write_table(table)
            if lexical is not None:
                t = shard.to_pydict()
                if opts.lexical_unit == "passage":
                    lexical.add([join_title(a, b) for a, b in zip(t["title"], t["text"])])
                else:
                    lexical.add(document_texts(t))
    finally:
        if writer is not None:
            writer.close()
    return lexical.save(final, opts.lexical_unit) if lexical is not None else None


def document_texts(t: dict) -> list[str]:
    """Each document's text (title first) rebuilt from its passages, in corpus order: the
    passages of a document are consecutive, numbered from 0, and overlap where they share
    sentences; the white space between sentences becomes one space."""
    docs: list[str] = []
    pieces: list[str] = []
    prev_end = 0
    for i, (row, number, start, end, text) in enumerate(
            zip(t["row"], t["passage"], t["start"], t["end"], t["text"])):
        if number == 0:
            if i:
                docs.append("".join(pieces))
            pieces, prev_end = [t["title"][i] + ". "] if t["title"][i] else [], 0
        if end > prev_end:
            skip = max(0, prev_end - start)
            pieces.append((" " if pieces and start > prev_end else "") + text[skip:])
            prev_end = end
    if t["row"]:
        docs.append("".join(pieces))
    return docs


def _recall(index, plan: IndexPlan, queries: np.ndarray, truth: ExactTopK | None) -> tuple[dict, float, int]:
    if plan.is_exact or truth is None:
        return {}, 1.0, 0
    params, recall = tune_search(index, plan, queries, truth.best_i)
    log.info("recall@10 against exact search on %d sampled passages: %.3f (%s)",
             len(queries), recall, params or "default parameters")
    return params, recall, len(queries)


def train_index(index, plan: IndexPlan, sample: np.ndarray,
                gather_rows: Callable[[np.ndarray], np.ndarray], n: int) -> None:
    """Train an index that needs it (IVF's coarse quantizer, PQ's codebooks) on ``sample``, or
    on a larger sample of the ``n`` vectors where IVF's lists need more."""
    if index.is_trained:
        return
    nlist = faiss.extract_index_ivf(index).nlist if "IVF" in plan.factory else 256
    train = sample if len(sample) >= nlist * TRAIN_SAMPLE_PER_LIST else gather_rows(
        sample_rows(n, max(nlist * TRAIN_SAMPLE_PER_LIST, 10_000)))
    log.info("training on %d vectors", len(train))
    index.train(train)


def index_plan(opts: AssemblyOptions, n: int, dim: int) -> IndexPlan:
    """The index for ``n`` vectors; a segment too small for the asked index type (a PQ index
    on fewer than 256 vectors) is searched exactly instead."""
    try:
        return fit_plan(choose_index(opts.index, n, dim, opts.memory_budget), n)
    except UnbuildableIndex as exc:
        if not opts.segment:
            raise
        return IndexPlan("Flat", f"a segment of {n} vectors: {str(exc).split(';')[0]}")


def assemble(shards: list[Path], final: Path, opts: AssemblyOptions, times: StageTimes,
             encode_queries: QueryEncoder, corpus: str, text_column: str) -> Assembled:
    """Write index.faiss, ids.parquet, the query shift and the lexical index into ``final``."""
    metas = [shard_meta(p) for p in shards]
    counts = [shard_rows(p) for p in shards]
    n, dim = sum(counts), max(m["dim"] for m in metas)
    if n == 0:
        raise InputError(f"{corpus}: every row has a null or empty {text_column!r}")
    t0 = time.perf_counter()
    # The shards' vectors are read twice: once for the samples (transform fit, recall queries),
    # once to fill the index (the recall queries' exact neighbours found on the way).
    sample, queries = gather_many(shards, counts, [sample_rows(n, FIT_SAMPLE),
                                                   sample_rows(n, RECALL_QUERIES, seed=1)])
    fitted, sample, tinfo, source, drift = _fit(shards, sample, opts, encode_queries)
    if opts.prefilled is not None:
        index, plan = opts.prefilled
    elif opts.trained is not None:  # an index trained once for all segments (rank assembly)
        path, plan = opts.trained
        index = faiss.read_index(str(path))
    else:
        plan = index_plan(opts, n, fitted.out_dim)
        index = fitted.wrap(new_index(plan, fitted.out_dim))
        train_index(index, plan, sample, lambda rows: gather(shards, counts, rows), n)
    log.info("index: %s (%s)", plan.factory, plan.reason)
    truth = None if plan.is_exact else ExactTopK(fitted.apply(queries), 10)
    spill = None
    if plan.ondisk:
        limit = opts.memory_budget // 2 if opts.memory_budget else ONDISK_BATCH_BYTES
        spill = ListSpill(index, final / ".lists", limit)
    lexical = _fill(index, shards, final, opts, truth, fitted, spill,
                    add=opts.prefilled is None)
    if spill is not None:
        spill.finish(final / ONDISK_FILE)
    params, recall, n_queries = _recall(index, plan, queries, truth)
    faiss.write_index(index, str(final / INDEX_FILE))
    if fitted.query_shift is not None:
        np.save(final / QUERY_SHIFT_FILE, fitted.query_shift)
    times.index += time.perf_counter() - t0
    info = IndexInfo(factory=plan.factory, reason=plan.reason, file=INDEX_FILE,
                     search_params=params, recall_at_10=round(recall, 4), recall_queries=n_queries,
                     data_file=ONDISK_FILE if plan.ondisk else None)
    return Assembled(index=info, transform=tinfo, lexical=lexical, dim=dim,
                     transform_source=source, drift=drift,
                     documents=sum(m["documents"] for m in metas), vectors=n,
                     skipped=sum(m["skipped"] for m in metas),
                     truncated=sum(m["truncated"] for m in metas),
                     reused=sum(m.get("reused", 0) for m in metas),
                     changed=sum(m.get("changed", 0) for m in metas),
                     added=sum(m.get("added", 0) for m in metas),
                     tokens=sum(m["tokens"] for m in metas))

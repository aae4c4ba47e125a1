"""Assembler: shards in, the searchable index directory's files out.

Streams the shards (never all vectors in memory): fits the transform on a sample, trains the
FAISS index if it needs it, fills it, writes the id map (one row per passage) and the lexical
index, and tunes ANN search parameters for recall against exact search.
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import faiss
import numpy as np
import pyarrow.parquet as pq

from ..errors import InputError, UnbuildableIndex
from ..index import (ONDISK_FILE, TARGET_RECALL, ExactTopK, IndexPlan, choose_index, fit_plan,
                     new_index, read_index_file, tune_search)
from ..lexical import LexicalBuilder
from ..metadata import PREFIX
from ..ondisk import ListWriter
from ..integrity import inside
from ..manifest import ID_MAP_FILE, INDEX_FILE, IndexInfo, LexicalInfo, TransformInfo
from ..passages import sentence_spans
from ..query_adapter import DEFAULT_ADAPTER_SETTINGS, read_query_map
from ..transform import (FIT_SAMPLE, QUERY_SAMPLE, FittedTransform, QueryPairs,
                         TransformSettings, fit_transform, mean_drift, read_example_queries,
                         read_vector, with_query_map)
from .mapper import StageTimes
from .prefill import RESEATED, Prefilled, reseat
from .reader import join_title
from .writer import read_table, read_vectors, shard_meta, shard_rows

log = logging.getLogger("tpsearch")

RECALL_QUERIES = 200
#: Bytes of list records an on-disk index build sorts at a time (a quarter of
#: ``--max-index-memory`` where one is given: the chunk and its sorted copy fit in half).
ONDISK_CHUNK_BYTES = 256 << 20

TRAIN_SAMPLE_PER_LIST = 64
QUERY_SHIFT_FILE = "query_shift.npy"
QUERY_MAP_FILE = "query_map.npy"

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
    # the id map, lexical units and first sentences made while encoding (one-process builds)
    tables: "ShardTables | None" = None
    # the graph filled while encoding, kept if its rules allow (tpsearch.pipeline.prefill)
    graph: Any = None


@dataclass(frozen=True)
class KeptTransform:
    """Where a version's fitted transform lies: in a FAISS index file (its transform chain)
    and the query side's files (shift, adapter map), as its manifest describes them."""

    index_path: Path
    shift_path: Path | None
    info: TransformInfo
    dim: int
    lists_on_disk: bool = False  # the index file's inverted lists lie beside it
    map_path: Path | None = None

    def query_files(self) -> list[tuple[Path, str]]:
        """(where each query-side file lies, its name in a version)."""
        return [(p, n) for p, n in ((self.shift_path, self.info.query_shift_file),
                                    (self.map_path, self.info.query_map_file)) if p and n]

    @classmethod
    def of(cls, location, manifest) -> "KeptTransform":
        """The transform of a version (its first segment's index holds the chain)."""
        from ..segments import segment_dir, segments_of

        first = segments_of(location, manifest)[0]
        index_path = inside(segment_dir(location.root, first.path), first.index.file)
        shift, qmap = manifest.transform.query_shift_file, manifest.transform.query_map_file
        return cls(index_path, inside(location.path, shift) if shift else None,
                   manifest.transform, manifest.dim, bool(first.index.data_file),
                   inside(location.path, qmap) if qmap else None)


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
    dim = shard_meta(shards[0])["dim"] if shards else 0
    # filled in place, one shard's picks at a time: a sample of a million vectors is held
    # once, not once in pieces and again concatenated
    out = [np.empty((len(rows), dim), np.float32) for rows in row_sets]
    filled = [0] * len(row_sets)
    offset = 0
    for path, n in zip(shards, counts):
        picks = [rows[(rows >= offset) & (rows < offset + n)] - offset for rows in row_sets]
        if any(len(p) for p in picks):
            vecs = read_vectors(path)
            for i, p in enumerate(picks):
                if len(p):
                    out[i][filled[i]:filled[i] + len(p)] = vecs[p]
                    filled[i] += len(p)
        offset += n
    return out


#: A document's first sentence and the global row of the document's first passage.
FirstSentence = tuple[str, int]


def shard_first_sentences(t: dict, offset: int = 0) -> list[FirstSentence]:
    """The first sentence of each document that starts in a shard (columns passage, text),
    with its first passage's row counted from ``offset`` (the shard's first)."""
    out = []
    for i, (number, text) in enumerate(zip(t["passage"], t["text"])):
        if number == 0:
            span = next(iter(sentence_spans(text)), None)
            if span:
                out.append((text[span[0]:span[1]], offset + i))
    return out


def sample_sentences(texts: list, limit: int) -> list:
    """Up to ``limit`` of ``texts``, spread over the corpus (a fixed seed)."""
    if len(texts) > limit:
        texts = [texts[i] for i in sample_rows(len(texts), limit, seed=2)]
    return texts


def first_sentences(shards: list[Path], limit: int) -> list[FirstSentence]:
    """The first sentence of up to ``limit`` documents, spread over the corpus: query-like text."""
    texts, offset = [], 0
    for path in shards:
        t = read_table(path, ["passage", "text"]).to_pydict()
        texts += shard_first_sentences(t, offset)
        offset += len(t["passage"])
    return sample_sentences(texts, limit)


def query_pairs(shards: list[Path], firsts: list[FirstSentence],
                more: int = 0) -> tuple[QueryPairs, list[str], np.ndarray]:
    """The passage vectors of the first sentences' documents (every passage with the same
    corpus row as the first one, in its shard), each owned by its sentence; and up to ``more``
    further pseudo-queries per document, its first passage's sentences after the first, with
    the position of the first sentence (the document) each one belongs to."""
    counts = [shard_rows(p) for p in shards]
    bounds = np.cumsum([0] + counts)
    heads = np.array([r for _, r in firsts], dtype=np.int64)
    rows, owner, texts, labels = [], [], [], []
    for k, path in enumerate(shards):
        mine = np.flatnonzero((heads >= bounds[k]) & (heads < bounds[k + 1]))
        if not len(mine):
            continue
        t = read_table(path, ["row", "text"] if more else ["row"])
        corpus_row = t.column("row").to_numpy()
        for i in mine:
            local = heads[i] - bounds[k]
            same = np.flatnonzero(corpus_row == corpus_row[local])
            rows.append(bounds[k] + same)
            owner.append(np.full(len(same), i))
            if more:
                text = t.column("text")[int(local)].as_py() or ""
                spans = itertools.islice(sentence_spans(text), 1, 1 + more)
                found = [text[a:b] for a, b in spans]
                texts += found
                labels += [i] * len(found)
    rows_all, owner_all = np.concatenate(rows), np.concatenate(owner)
    order = np.argsort(rows_all, kind="stable")
    return (QueryPairs(gather(shards, counts, rows_all[order]), owner_all[order]), texts,
            np.array(labels, dtype=np.int64))


def _kept(sample: np.ndarray, opts: AssemblyOptions):
    """The base version's fitted transform and query shift, unchanged, and how far the
    documents' mean has moved from the one it was fitted on (relative to the spread)."""
    kept = opts.keep_transform
    info = kept.info
    chain = []
    if info.kind != "none":
        raw = read_index_file(kept.index_path, kept.lists_on_disk)  # owns the chain
        outer = faiss.downcast_index(raw)
        with tempfile.TemporaryDirectory() as tmp:  # a copy of each transform, through its file
            for i in range(outer.chain.size()):
                path = str(Path(tmp) / f"t{i}")
                faiss.write_VectorTransform(outer.chain.at(i), path)
                chain.append(faiss.read_VectorTransform(path))
    out_dim = chain[-1].d_out if chain else sample.shape[1]
    shift = read_vector(kept.shift_path, kept.dim) if kept.shift_path else None
    qmap = read_query_map(kept.map_path, kept.dim) if kept.map_path else None
    fitted = FittedTransform(info.kind, chain, out_dim, shift, info.note,
                             filtered=info.embed_filter is not None, query_map=qmap,
                             adapter_pairs=info.adapter_pairs, whiten_power=info.whiten_power)
    drift = None
    if chain and hasattr(chain[0], "mean") and len(sample):
        drift = mean_drift(sample, faiss.vector_to_array(
            faiss.downcast_VectorTransform(chain[0]).mean))
    return fitted, info, drift


def _fit(shards, sample: np.ndarray, opts: AssemblyOptions, encode_queries: QueryEncoder,
         firsts: list[str] | None = None):
    ts = opts.transform
    if opts.keep_transform is not None:
        fitted, info, drift = _kept(sample, opts)
        log.info("transform: kept from the base version (documents' mean moved %.3f of their "
                 "spread)", drift or 0.0)
        return fitted, sample, info, "kept", drift
    queries, source, pairs = _query_vectors(shards, ts, encode_queries, firsts)
    fitted = _adapted(fit_transform(sample, queries, ts, opts.unembedding), queries, pairs, ts)
    if fitted.note:
        log.info("transform: %s", fitted.note)
    return fitted, sample, _transform_info(fitted, ts, len(sample), source, queries), "fitted", None


def _fit_prefilled(graph: Prefilled, shards, opts: AssemblyOptions,
                   encode_queries: QueryEncoder, firsts: list[str] | None,
                   why: str) -> tuple[FittedTransform, TransformInfo]:
    """The transform fitted on the prefix while encoding, with the query shift made as
    :func:`_fit` makes it (the documents' mean being the prefix's)."""
    ts = opts.transform
    queries, source, pairs = _query_vectors(shards, ts, encode_queries, firsts)
    shift = (graph.mean - np.asarray(queries, dtype=np.float32).mean(0)).astype(np.float32) \
        if queries is not None and len(queries) else None
    note = "; ".join(x for x in (graph.fitted.note, why) if x)
    fitted = _adapted(replace(graph.fitted, query_shift=shift, note=note), queries, pairs, ts)
    return fitted, _transform_info(fitted, ts, graph.fitted_on, source, queries)


def _adapted(fitted: FittedTransform, queries, pairs: QueryPairs | None,
             ts: TransformSettings) -> FittedTransform:
    """``fitted`` with the query adapter fitted where asked for (timed in the log)."""
    t0 = time.perf_counter()
    fitted = with_query_map(fitted, queries, pairs, ts)
    if fitted.query_map is not None:
        log.info("query adapter: fitted on %d (pseudo-query, document) pairs in %.1f s",
                 fitted.adapter_pairs, time.perf_counter() - t0)
    return fitted


def _query_vectors(shards, ts: TransformSettings, encode_queries: QueryEncoder,
                   firsts: list[FirstSentence] | None
                   ) -> tuple[np.ndarray | None, str | None, QueryPairs | None]:
    """Query-like vectors for the query shift (example queries, or the documents' first
    sentences), where they came from, and (first sentences only, where the settings ask for
    the query adapter) the passage vectors of their documents with the further pseudo-queries
    (the documents' next sentences; they are not part of the shift's mean)."""
    if ts.kind == "none":
        return None, None, None
    if ts.query_examples:
        texts = read_example_queries(ts.query_examples)
        return (encode_queries(texts) if texts else None), f"examples:{ts.query_examples}", None
    firsts = (sample_sentences(firsts, QUERY_SAMPLE) if firsts is not None
              else first_sentences(shards, QUERY_SAMPLE))
    if not firsts:
        return None, "first-sentences", None
    texts = [t for t, _ in firsts]
    if not ts.query_adapter:
        return encode_queries(texts), "first-sentences", None
    adapter = DEFAULT_ADAPTER_SETTINGS
    more = adapter.more_sentences if len(firsts) >= adapter.min_pairs else 0
    pairs, more, labels = query_pairs(shards, firsts, more)
    vectors = encode_queries(texts + more)  # one call: a text's vector is its own either way
    pairs = replace(pairs, more=vectors[len(texts):], more_owner=labels)
    return vectors[:len(texts)], "first-sentences", pairs


def _transform_info(fitted: FittedTransform, ts: TransformSettings, fitted_on: int,
                    source: str | None, queries: np.ndarray | None) -> TransformInfo:
    return TransformInfo(kind=fitted.kind, dim=fitted.out_dim if fitted.kind == "whiten" else None,
                         embed_filter=list(ts.embed_filter) if fitted.filtered else None,
                         out_dim=fitted.out_dim,
                         fitted_on=fitted_on if fitted.kind != "none" else 0,
                         query_stats=source if fitted.query_shift is not None else None,
                         query_samples=len(queries) if fitted.query_shift is not None else 0,
                         query_shift_file=QUERY_SHIFT_FILE if fitted.query_shift is not None else None,
                         query_map_file=QUERY_MAP_FILE if fitted.query_map is not None else None,
                         adapter_pairs=fitted.adapter_pairs if fitted.query_map is not None else 0,
                         whiten_power=fitted.whiten_power, note=fitted.note)


def save_query_files(fitted: FittedTransform, folder: Path) -> None:
    """The query shift and the adapter's map, where fitted, into ``folder``."""
    if fitted.query_shift is not None:
        np.save(folder / QUERY_SHIFT_FILE, fitted.query_shift)
    if fitted.query_map is not None:
        np.save(folder / QUERY_MAP_FILE, fitted.query_map)


def drop_query_files(folder: Path) -> None:
    """A segment's copies of the query-side files (the version holds them)."""
    for name in (QUERY_SHIFT_FILE, QUERY_MAP_FILE):
        (folder / name).unlink(missing_ok=True)


def needs_first_sentences(opts: AssemblyOptions) -> bool:
    """Whether fitting the transform encodes the documents' first sentences as query examples."""
    ts = opts.transform
    return opts.keep_transform is None and ts.kind != "none" and not ts.query_examples


class ShardTables:
    """What assembly makes of the shards besides their vectors, taken one shard at a time in
    corpus order: the id map (one row per passage, written as the shards come), the lexical
    index's units and, where the transform will need them, the documents' first sentences.
    None of it depends on the transform, so a one-process build feeds it each shard as soon as
    it is written (:class:`~tpsearch.pipeline.follower.ShardFollower`), while encoding goes on."""

    def __init__(self, opts: AssemblyOptions, id_map: Path, first_sentences: bool = False):
        self.opts, self.id_map = opts, id_map
        self.lexical = LexicalBuilder() if opts.lexical else None
        self.cols = (["id", "passage", "start", "end", "row", "doc_sha256"]
                     + (["text"] if opts.store_text else []) + [PREFIX + c for c in opts.metadata])
        self.firsts: list[FirstSentence] | None = [] if first_sentences else None
        self.rows = 0  # passages seen so far (the next shard's first global row)
        extra = (["title", "text"] if self.lexical is not None
                 else ["text"] if self.firsts is not None else [])
        self.read = self.cols + [c for c in extra if c not in self.cols]
        self.shards: list[Path] = []
        self._writer = None

    def add(self, path: Path) -> None:
        shard = read_table(path, self.read)
        table = shard.select(self.cols).rename_columns(
            [("corpus_row" if c == "row" else c) for c in self.cols])
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.id_map, table.schema)
        self._writer.write_table(table)
        if self.lexical is not None or self.firsts is not None:
            t = shard.to_pydict()
            if self.firsts is not None:
                self.firsts += shard_first_sentences(t, self.rows)
            if self.lexical is not None:
                self.lexical.add([join_title(a, b) for a, b in zip(t["title"], t["text"])]
                                 if self.opts.lexical_unit == "passage" else document_texts(t))
        self.rows += shard.num_rows
        self.shards.append(path)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def covers(self, shards: list[Path]) -> bool:
        """Whether these are the tables of exactly ``shards`` (same files, same order)."""
        return [p.name for p in self.shards] == [p.name for p in shards]

    def save(self, final: Path) -> LexicalInfo | None:
        """Move the id map into ``final`` and write the lexical index there."""
        self.close()
        if self.id_map != final / ID_MAP_FILE:
            os.replace(self.id_map, final / ID_MAP_FILE)
        return self.lexical.save(final, self.opts.lexical_unit) if self.lexical is not None else None


def _fill(index, shards: list[Path], final: Path, opts: AssemblyOptions,
          truth: ExactTopK | None = None, fitted=None,
          lists: ListWriter | None = None, add: bool = True,
          tables: ShardTables | None = None,
          store: Callable[[np.ndarray], None] | None = None) -> LexicalInfo | None:
    """Add every shard's vectors (unless ``add`` is false: the index holds them already);
    write the id map and the lexical index beside (taken from ``tables`` where the build made
    them while encoding); with ``truth``, the exact top-k of the recall queries is found in
    the same pass; ``store`` gets every shard's transformed vectors (a re-seated graph's)."""
    own = tables is None
    if own:
        tables = ShardTables(opts, final / ID_MAP_FILE)
    try:
        for path in shards:
            if add or truth is not None or store is not None:
                vecs = read_vectors(path)
                if add:
                    (lists.add if lists is not None else index.add)(vecs)
                if truth is not None or store is not None:
                    seen = fitted.apply(vecs)
                    if store is not None:
                        store(seen)
                    if truth is not None:
                        truth.add(seen)
            if own:
                tables.add(path)
    finally:
        tables.close()
    return tables.save(final)


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
    tables = opts.tables if opts.tables is not None and opts.tables.covers(shards) else None
    firsts = tables.firsts if tables is not None else None
    graph, why = None, None
    if opts.graph is not None and opts.prefilled is None and opts.trained is None:
        graph, why = opts.graph.take(sample, lambda dim: index_plan(opts, n, dim), n)
        log.info("graph filled while encoding %s: %s", "kept" if graph is not None else "not kept",
                 why)
    prefilled, store = opts.prefilled, None
    if graph is not None and not graph.reseat:
        fitted, tinfo = _fit_prefilled(graph, shards, opts, encode_queries, firsts, why)
        source, drift, prefilled = "fitted", graph.drift, (graph.index, graph.plan)
    else:
        fitted, sample, tinfo, source, drift = _fit(shards, sample, opts, encode_queries, firsts)
        if graph is not None:  # the graph's links kept, its vectors stored anew (fill below)
            index, store = reseat(graph, fitted)
            prefilled, drift = (index, graph.plan), graph.drift
        if why and opts.graph.index is not None:
            # a graph was filled while encoding: the note says what became of it
            tinfo = replace(tinfo, note="; ".join(x for x in (tinfo.note, why) if x))
    if prefilled is not None:
        index, plan = prefilled
    elif opts.trained is not None:  # an index trained once for all segments (rank assembly)
        path, plan = opts.trained
        index = faiss.read_index(str(path))
    else:
        plan = index_plan(opts, n, fitted.out_dim)
        index = fitted.wrap(new_index(plan, fitted.out_dim))
        train_index(index, plan, sample, lambda rows: gather(shards, counts, rows), n)
    log.info("index: %s (%s)", plan.factory, plan.reason)
    truth = None if plan.is_exact else ExactTopK(fitted.apply(queries), 10)
    lists = None
    if plan.ondisk and prefilled is None:  # a prefilled index has its lists file already
        chunk = opts.memory_budget // 4 if opts.memory_budget else ONDISK_CHUNK_BYTES
        lists = ListWriter(index, final / ".lists", chunk_bytes=chunk)
    try:
        lexical = _fill(index, shards, final, opts, truth, fitted, lists,
                        add=prefilled is None, tables=tables, store=store)
    except BaseException:
        if lists is not None:
            lists.abort()
        raise
    if lists is not None:
        lists.finish(final / ONDISK_FILE)
    params, recall, n_queries = _recall(index, plan, queries, truth)
    if store is not None and recall < TARGET_RECALL:
        log.info("re-seated graph: recall@10 %.3f under %.2f at every search setting: rebuilt",
                 recall, TARGET_RECALL)
        index = fitted.wrap(new_index(plan, fitted.out_dim))
        for path in shards:
            index.add(read_vectors(path))
        params, recall, n_queries = _recall(index, plan, queries, truth)
        tinfo = replace(tinfo, note=tinfo.note.replace(
            RESEATED, f"the graph filled while encoding re-seated, then rebuilt (recall@10 "
            f"under {TARGET_RECALL})"))
    faiss.write_index(index, str(final / INDEX_FILE))
    save_query_files(fitted, final)
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

"""Merging segments: a tiered policy (as Lucene's) and the merge itself.

Each commit adds a small segment; left alone, searches would visit more and more of them.
:class:`TieredMergePolicy` groups segments by size tier (live documents, powers of
``factor``): when a tier holds ``factor`` segments they are merged into one of the next tier,
so an index that had ``u`` small commits holds at most ``factor - 1`` segments per tier, about
``(factor - 1) * log_factor(documents)`` in all. A segment more than ``max_deleted`` deleted is
rewritten without its deleted documents.

A merge reads only stored data: the segments' raw vectors (store), their id maps and their BM25
term frequencies; no text is tokenised or encoded again, and the index's fitted transform is
kept. It writes one new segment, then publishes a version that uses it in place of the merged
ones; the merged ones are removed when no kept version refers to them. It runs under the
writer's lock; readers keep their version and never wait.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .index import ONDISK_FILE, IndexPlan, read_index_file
from .integrity import inside
from .ivf_merge import merge_ivf_lists, merge_ivf_lists_on_disk, shared_layout
from .layout import SEGMENTS
from .lexical import LexicalSegments, TermPostings, merge_postings
from .manifest import SegmentInfo
from .pipeline.mapper import StageTimes
from .pipeline.reuse import STORE_DIR, read_store_shard, store_files
from .pipeline.runner import BuildResult
from .pipeline.workdir import shard_name
from .segments import new_segment_name, seal_segment, segment_dir

if TYPE_CHECKING:
    from .index_writer import IndexWriter

#: Rows per shard of a merged segment's store.
MERGE_SHARD_ROWS = 65536


@dataclass(frozen=True)
class TieredMergePolicy:
    """Which segments to merge: ``factor`` segments of one size tier, or one segment with
    more than ``max_deleted`` of its documents deleted."""

    factor: int = 10
    max_deleted: float = 0.5

    def tier(self, live: int) -> int:
        return int(math.log(max(1, live), self.factor)) if live > 1 else 0

    def plan(self, segments: list[SegmentInfo], deleted: list[np.ndarray]) -> list[list[int]]:
        """Groups of segment positions to merge, smallest tier first (empty: none)."""
        live = [len(m) - int(m.sum()) for m in deleted]
        tiers: dict[int, list[int]] = {}
        for i, n in enumerate(live):
            tiers.setdefault(self.tier(n), []).append(i)
        for t in sorted(tiers):
            if len(tiers[t]) >= self.factor:
                return [tiers[t][:self.factor]]
        for i, (n, m) in enumerate(zip(live, deleted)):
            if len(m) and m.sum() > self.max_deleted * len(m):
                return [[i]]
        return []


def merge(writer: "IndexWriter", group: list[int]) -> BuildResult:
    """Merge the segments at positions ``group`` of the writer's current version into one
    (placed where the first of them was) and publish the version that uses it."""
    began, times = time.perf_counter(), StageTimes()
    m = writer.manifest
    name = new_segment_name(writer.root)
    tmp = writer.root / SEGMENTS / f".tmp-{name}"
    final = tmp / "final"
    store = final / STORE_DIR
    store.mkdir(parents=True)
    try:
        shards: list = []
        lexical_parts = []
        kept_rows = []
        next_doc = 0
        for i in group:
            info, deleted = writer.segments[i], writer.deleted[i]
            where = segment_dir(writer.root, info.path)
            live_rows, next_doc = _copy_live_store(where, info, deleted, m.dim, store, shards,
                                                   next_doc)
            kept_rows.append(live_rows)
            if info.lexical is not None:
                postings = TermPostings(inside(where, info.lexical.dir + "/"), info.lexical)
                live = (~deleted if info.lexical.unit == "document" else live_rows)
                lexical_parts.append((postings, live))
        seg = writer.assemble_segment(shards, final, times, lexical_from_text=False,
                                      prefilled=_lists_merged(writer, group, kept_rows, final))
        if lexical_parts:
            seg = replace(seg, lexical=merge_postings(final, lexical_parts, m.lexical.unit))
        placed = seal_segment(final, writer.root / SEGMENTS, name, seg)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    first = group[0]
    segments, masks = [], []
    for i, (info, mask) in enumerate(zip(writer.segments, writer.deleted)):
        if i == first:
            segments.append(placed)
            masks.append(np.zeros(placed.documents, bool))
        elif i not in group:
            segments.append(info)
            masks.append(mask)
    manifest = writer.publish(segments, masks, None, began, times)  # a merge changes no document
    return BuildResult(writer.root, manifest, 0, 0)


def _copy_live_store(where: Path, info, deleted: np.ndarray | None, dim: int, store: Path,
                     shards: list, next_doc: int) -> tuple[np.ndarray | None, int]:
    """Copy the passages of the live documents of one segment's store into the merged
    ``store`` (shards of whole documents, appended to ``shards``), one store shard at a time,
    so a merge holds one shard's vectors in RAM, not a segment's. The kept documents are
    numbered on from ``next_doc``. Returns which stored passages were kept (None: all) and the
    next document number."""
    files = store_files(where, info)
    names = sorted(files)
    # first the passages' document rows only (8 bytes a passage): the documents are the store's
    # distinct rows, in order, as ``deleted`` counts them
    rows = np.concatenate([read_store_shard(where, n, files[n], dim, ["row"]).column("row")
                           .to_numpy() for n in names]) if names else np.zeros(0, np.int64)
    doc = np.unique(rows, return_inverse=True)[1].reshape(-1)
    documents = int(doc.max()) + 1 if len(doc) else 0
    live_docs = np.ones(documents, bool) if deleted is None else ~np.asarray(deleted[:documents])
    kept = None if deleted is None else live_docs[doc]
    number = next_doc + np.cumsum(live_docs) - 1  # each live document's new number
    pending: list[pa.Table] = []
    start = 0
    for name in names:
        table = read_store_shard(where, name, files[name], dim)
        part = slice(start, start + table.num_rows)
        start += table.num_rows
        if kept is not None:
            table = table.filter(pa.array(kept[part]))
        new_rows = number[doc[part] if kept is None else doc[part][kept[part]]]
        table = table.set_column(table.schema.get_field_index("row"), "row",
                                 pa.array(new_rows.astype(np.int64)))
        if table.num_rows:
            pending.append(table)
        pending = _write_whole_documents(store, shards, pending, final=False)
    _write_whole_documents(store, shards, pending, final=True)
    return kept, next_doc + int(live_docs.sum())


def _write_whole_documents(store: Path, shards: list, pending: list, final: bool) -> list:
    """Write store shards of about :data:`MERGE_SHARD_ROWS` passages of whole documents from
    ``pending`` (tables in order); returns what is left (a document that may go on in the next
    table), or nothing when ``final``."""
    if not pending:
        return []
    table = pa.concat_tables(pending, promote_options="permissive")
    rows = table.column("row").to_numpy()
    start = 0
    while start < table.num_rows:
        stop = min(table.num_rows, start + MERGE_SHARD_ROWS)
        while stop < table.num_rows and rows[stop] == rows[stop - 1]:
            stop += 1
        if stop == table.num_rows and not final:
            break  # the last document may go on in the next store shard
        shards.append(_write_store_shard(store, len(shards), table.slice(start, stop - start)))
        start = stop
    return [table.slice(start)] if start < table.num_rows else []


def _lists_merged(writer: "IndexWriter", group: list[int], kept: list, final: Path):
    """(index, plan) of IVF segments that share one quantizer and codec, merged list by list
    (:mod:`tpsearch.ivf_merge`; segments whose lists are on disk into a new lists file in
    ``final``); None where they do not (the merge adds the vectors anew)."""
    infos = [writer.segments[i] for i in group]
    on_disk = [bool(s.index.data_file) for s in infos]
    if any("IVF" not in s.index.factory for s in infos) or len(set(on_disk)) > 1:
        return None
    indexes = [read_index_file(segment_dir(writer.root, s.path) / s.index.file, on_disk[0])
               for s in infos]
    layout = shared_layout(indexes)
    if layout is None:
        return None
    if on_disk[0]:
        merged = merge_ivf_lists_on_disk(layout, indexes, kept, final / ONDISK_FILE,
                                         final / ".lists")
    else:
        merged = merge_ivf_lists(layout, indexes, kept)
    first = infos[0].index
    return merged, IndexPlan(first.factory, f"{len(group)} segments merged list by list "
                             f"(one coarse quantizer): {first.reason}", ondisk=on_disk[0])


def _write_store_shard(store, number: int, table: pa.Table):
    """One shard of a merged store, with the counts the assembler reads from a shard."""
    rows = table.column("row").to_numpy()
    meta = {"window_rows": int(len(np.unique(rows))), "documents": int(len(np.unique(rows))),
            "skipped": 0, "truncated": int(pc.sum(table.column("truncated")).as_py() or 0),
            "tokens": int(pc.sum(table.column("tokens")).as_py() or 0),
            "dim": int(table.schema.field("vector").type.list_size), "source_sha256": ""}
    path = store / shard_name(number)
    pq.write_table(table.replace_schema_metadata({"tpsearch": json.dumps(meta)}), path)
    return path


__all__ = ["TieredMergePolicy", "merge", "LexicalSegments"]

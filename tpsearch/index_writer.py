"""IndexWriter: add, replace and delete documents of an index at the cost of the change.

    import tpsearch
    with tpsearch.IndexWriter("idx") as w:      # takes the index's lock; the model loads once
        w.upsert([{"id": "a1", "text": "..."}])  # new id: added; known id: replaced
        w.delete(["old-7"])
        w.commit()                               # publishes the next version
        w.upsert(...); w.commit()                # the encoder stays loaded between commits

A commit encodes only the upserted documents, into a new immutable segment (its own FAISS
index with the index's fitted transform, id map, BM25 term frequencies and store), marks the
replaced and deleted documents of older segments in small bit files of the new version, and
publishes that version atomically (:mod:`tpsearch.layout`): no other segment is read, rewritten
or copied. Then the merge policy (:mod:`tpsearch.merging`) may fold small segments together;
readers keep answering from the version they opened meanwhile.

One writer at a time: the writer holds the index's lock from open to :meth:`close` (another
writer, build or update waits up to ``wait`` seconds, then is refused; nothing is lost). Every
acknowledged commit is in every later version. A writer killed at any point leaves the last
published version complete; what it had half-written is removed by the next writer.

An index written by tpsearch <= 0.4 (BM25 stored by bm25s) is rebuilt whole at its first
commit (the incremental build: stored vectors reused) and is segmented from then on.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa

from . import layout
from .config import BuildConfig, build_config_recorded, parse_size
from .encoder import TPEncoder
from .errors import DiskError, InputError
from .idmap import IdMap
from .integrity import file_digests, inside
from .layout import SEGMENTS, VERSIONS, new_version_name, read_pointer
from .lexical import TF_LIBRARY
from .manifest import Manifest, SegmentInfo, UpdateInfo, open_manifest, write_manifest
from .metadata import PREFIX
from .pipeline.assembler import (AssemblyOptions, KeptTransform, assemble, drop_query_files,
                                 no_query_encoder)
from .pipeline.mapper import ChunkEmbedder, MapperOptions, StageTimes
from .pipeline.reader import Chunk
from .pipeline.reuse import STORE_DIR, fill_store
from .pipeline.runner import DISK_ERRORS, BuildResult, bounded_history
from .pipeline.workdir import BuildLock, shard_name
from .pipeline.writer import write_shard
from .segments import (new_segment_name, read_deletions, seal_segment, segment_dir,
                       segments_of, write_deletions)
from .updates import LOCK_WAIT, _rows, _upsert_ids, _update_locked, id_list, typed_id
from .version import __version__

log = logging.getLogger("tpsearch")
STAGING = ".staging-"


class IndexWriter:
    """Writes changes to one index directory as new versions; see the module's docs."""

    def __init__(self, directory: str | Path, encoder: TPEncoder | None = None,
                 wait: float = LOCK_WAIT, show_progress: bool = False, merge_policy=None,
                 device: str = "auto", model: str | None = None):
        """``encoder``: a loaded encoder of the index's model (else it loads at the first
        commit with upserts, checked against the manifest); ``wait``: seconds to wait for
        another writer's lock; ``merge_policy``: a :class:`~tpsearch.merging.TieredMergePolicy`
        (the default one if None; ``False``: never merge after a commit)."""
        from .merging import TieredMergePolicy

        self.root = Path(directory).resolve()
        if not layout.is_index_dir(self.root):
            raise InputError(f"{self.root}: not a tpsearch index; build one first")
        self.show_progress = show_progress
        self.merge_policy = TieredMergePolicy() if merge_policy is None else merge_policy
        self.device, self.model = device, model
        self._encoder = encoder
        self._lock: BuildLock | None = BuildLock(self.root, wait=wait)
        self._lock.__enter__()
        try:
            self._clean_leftovers()
            self._load()
        except BaseException:
            self.close()
            raise
        self._upserts: dict[Any, dict] = {}
        self._deletes: set = set()
        self.last_drift: float | None = None

    # ------------------------------------------------------------------ state
    def _clean_leftovers(self) -> None:
        """Remove what a killed writer left half-written (under the lock: nobody uses it)."""
        for folder in (self.root / VERSIONS, self.root / SEGMENTS):
            if folder.is_dir():
                for p in folder.iterdir():
                    if p.name.startswith((STAGING, ".tmp-")):
                        shutil.rmtree(p, ignore_errors=True)
        shutil.rmtree(self.root.parent / f".{self.root.name}.update", ignore_errors=True)

    def _load(self) -> None:
        """Read the current version: its segments, their deletions and where each live id is."""
        self.location, self.manifest = open_manifest(self.root)
        m = self.manifest
        self.legacy = (self.location.version is None or not m.store
                       or (m.lexical is not None and m.lexical.library != TF_LIBRARY))
        self.segments = segments_of(self.location, m)
        self.deleted: list[np.ndarray] = []
        self.rows_per_doc: list[np.ndarray] = []
        self.where: dict = {}
        self.metadata_types: dict[str, pa.DataType] = {}
        for n, info in enumerate(self.segments):
            idmap = IdMap.read(inside(segment_dir(self.root, info.path), m.id_map), False,
                               m.id_type)
            ids = idmap.document_ids()
            mask = read_deletions(self.location.path, info)
            mask = np.zeros(len(ids), bool) if mask is None else mask
            self.deleted.append(mask)
            self.rows_per_doc.append(np.bincount(idmap.doc_of_row, minlength=len(ids)))
            for d, doc_id in enumerate(ids):
                if not mask[d]:
                    self.where[doc_id] = (n, d)
            if idmap.metadata is not None and not self.metadata_types:
                self.metadata_types = {f.name[len(PREFIX):]: f.type for f in idmap.metadata.schema}

    @property
    def documents(self) -> int:
        """Live documents of the current version (pending changes not counted)."""
        return len(self.where)

    def __contains__(self, doc_id) -> bool:
        return doc_id in self.where

    # ------------------------------------------------------------------ changes
    def upsert(self, records: Any) -> int:
        """Add documents (a Parquet path, a pyarrow Table or a list of dicts with the index's
        id, text, title and metadata columns); a known id replaces its document. Checked now
        (types, missing columns, empty texts, repeated ids: one-line errors), encoded at
        :meth:`commit`. Returns the number of documents given."""
        from .updates import _records

        self._check_open()
        c = self.manifest.corpus
        rows = _rows(_records(records), self.columns, self.root)
        ids = _upsert_ids(rows, c.id_column, c.text_column, self.manifest.id_type)
        for doc_id, row in zip(ids, rows.to_pylist()):
            self._deletes.discard(doc_id)
            self._upserts.pop(doc_id, None)  # a later upsert of an id wins, in its new place
            self._upserts[doc_id] = row
        return len(ids)

    def delete(self, ids: Iterable) -> int:
        """Delete documents by id at :meth:`commit` (ids must have the index's id type; ids
        the index does not hold are ignored). Returns how many of them it holds now."""
        self._check_open()
        given = [typed_id(i, self.manifest.id_type, "delete") for i in id_list(ids, "delete")]
        for doc_id in given:
            self._upserts.pop(doc_id, None)
            self._deletes.add(doc_id)
        return sum(1 for i in given if i in self.where)

    @property
    def upserted(self) -> frozenset:
        """The ids upserted and not committed yet."""
        return frozenset(self._upserts)

    @property
    def pending(self) -> int:
        return len(self._upserts) + len(self._deletes)

    @property
    def columns(self) -> list[str]:
        c = self.manifest.corpus
        return [c.id_column, c.text_column] + ([c.title_column] if c.title_column else []) + list(
            self.manifest.metadata)

    def rollback(self) -> None:
        """Forget the changes not committed yet."""
        self._upserts.clear()
        self._deletes.clear()

    # ------------------------------------------------------------------ commit
    def commit(self, merge: bool = True) -> BuildResult | None:
        """Publish the pending changes as the index's next version (None: nothing pending),
        then let the merge policy fold segments (``merge=False``: not now)."""
        self._check_open()
        if not self.pending:
            return None
        try:
            if self.legacy:
                result = self._commit_whole()
            else:
                result = self._commit_segment()
        except OSError as exc:
            if exc.errno not in DISK_ERRORS:
                raise
            raise DiskError(f"{exc.filename or self.root}: {exc.strerror} while committing; the "
                            "index is unchanged (its last version is complete)") from exc
        self.rollback()
        self._load()
        if merge and self.merge_policy:
            self.maybe_merge()
        return result

    def _commit_whole(self) -> BuildResult:
        """tpsearch <= 0.4's index: one incremental build makes it a segment of today's."""
        tmp = self.root.parent / f".{self.root.name}.update"
        try:
            return _update_locked(self.root, list(self._upserts.values()) or None,
                                  list(self._deletes), False, self.show_progress, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _commit_segment(self) -> BuildResult:
        began = time.perf_counter()
        times = StageTimes()
        new, docs, tokens = None, 0, 0
        if self._upserts:
            new, docs, tokens = self.write_segment(list(self._upserts.values()), times)
        masks = [m.copy() for m in self.deleted]
        removed = changed = 0
        for doc_id in list(self._deletes) + list(self._upserts):
            if doc_id in self.where:
                n, d = self.where[doc_id]
                masks[n][d] = True
                if doc_id in self._upserts:
                    changed += 1
                else:
                    removed += 1
        segments = list(self.segments)
        if new is not None:
            segments.append(new)
            masks.append(np.zeros(new.documents, bool))
        update = UpdateInfo(base=self.location.version, added=len(self._upserts) - changed,
                            changed=changed, removed=removed, kept=self.documents - changed - removed,
                            transform="kept", drift=self.last_drift if new is not None else None)
        manifest = self.publish(segments, masks, update, began, times, docs, tokens)
        log.info("committed %s: %d added, %d replaced, %d deleted", manifest.version,
                 update.added, changed, removed)
        return BuildResult(self.root, manifest, docs, tokens)

    # ------------------------------------------------------------------ building blocks
    @property
    def encoder(self) -> TPEncoder:
        """The index's encoder, loaded once (checked against the manifest)."""
        if self._encoder is None:
            from .index_encoder import load_index_encoder

            self._encoder = load_index_encoder(self.root, self.manifest, self.device, self.model)
        else:
            from .index_encoder import check_encoder

            check_encoder(self.manifest, self._encoder)
        return self._encoder

    def build_config(self) -> BuildConfig:
        return build_config_recorded(self.manifest.build.config, out=str(self.root), fresh=False)

    def write_segment(self, records: list[dict], times: StageTimes) -> tuple[SegmentInfo, int, int]:
        """Encode ``records`` into a new segment (written under a temporary name, flushed,
        renamed into ``segments/``); returns its entry, documents and tokens encoded."""
        m, config = self.manifest, self.build_config()
        c = m.corpus
        name = new_segment_name(self.root)
        tmp = self.root / SEGMENTS / f".tmp-{name}"
        work, final = tmp / "work", tmp / "final"
        work.mkdir(parents=True)
        final.mkdir()
        try:
            embed = ChunkEmbedder(self.encoder, MapperOptions(
                config.model.batch_size, config.model.max_batch_tokens, False, c.id_column,
                c.text_column, m.passages or config.passage_settings()))
            kinds = {col: (m.metadata[col], self.metadata_types[col]) for col in m.metadata}
            shards, docs, tokens = [], 0, 0
            bar = None
            if self.show_progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(records), unit="doc", desc="embedding")
            try:
                for start in range(0, len(records), config.shard_rows):
                    part = records[start:start + config.shard_rows]
                    chunk = Chunk(start, [r[c.id_column] for r in part],
                                  [r[c.text_column] for r in part],
                                  [r[c.title_column] for r in part] if c.title_column else None,
                                  {col: [r[col] for r in part] for col in m.metadata})
                    shard = embed.encode(embed.prepare(chunk), times,
                                         bar.update if bar is not None else None)
                    shards.append(write_shard(work / shard_name(start), shard, m.id_type, kinds))
                    docs, tokens = docs + shard.encoded_documents, tokens + shard.encoded_tokens
            finally:
                if bar is not None:
                    bar.close()
            info = self.assemble_segment(shards, final, times, lexical_from_text=True)
            fill_store(shards, final / STORE_DIR, m.store_text, keep=False)
            return seal_segment(final, self.root / SEGMENTS, name, info), docs, tokens
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def assemble_segment(self, shards: list[Path], final: Path, times: StageTimes,
                          lexical_from_text: bool, prefilled=None) -> SegmentInfo:
        """FAISS index, id map (and BM25 from the texts) of a segment's shards, with the
        index's kept transform; returns its entry without files (see :func:`~tpsearch.segments.seal_segment`).
        ``prefilled``: (index, plan) holding the shards' vectors already (a list-by-list merge)."""
        m, config = self.manifest, self.build_config()
        opts = AssemblyOptions(config.index, parse_size(config.max_index_memory), m.store_text,
                               config.transform_settings(),
                               lexical=lexical_from_text and m.lexical is not None,
                               lexical_unit=m.lexical.unit if m.lexical else "document",
                               metadata=tuple(m.metadata),
                               keep_transform=KeptTransform.of(self.location, m), segment=True,
                               prefilled=prefilled)
        part = assemble(shards, final, opts, times, no_query_encoder, str(self.root),
                        m.corpus.text_column)
        #: How far the segment's documents' mean lies from the one the transform was fitted on.
        self.last_drift = part.drift
        drop_query_files(final)  # the version holds them
        return SegmentInfo(path="", documents=part.documents, vectors=part.vectors,
                           index=part.index, files={}, lexical=part.lexical)

    def publish(self, segments: list[SegmentInfo], masks: list[np.ndarray],
                update: UpdateInfo | None, began: float, times: StageTimes, docs: int = 0,
                tokens: int = 0) -> Manifest:
        """Write and publish the version made of ``segments`` with ``masks`` (deleted documents
        of each); a segment with nothing live is left out."""
        base = self.manifest
        name = new_version_name(self.root)
        staged = self.root / VERSIONS / f"{STAGING}{name}"
        staged.mkdir(parents=True)
        try:
            for query_file in base.transform.query_files():
                shutil.copy2(inside(self.location.path, query_file), staged / query_file)
            kept, rows_per_doc = [], {}
            for info, mask in zip(segments, masks):
                if mask.all() and len(mask):
                    continue  # every document of it deleted: the version no longer needs it
                if mask.any():
                    info = replace(info, deleted=int(mask.sum()),
                                   deletions=write_deletions(staged, len(kept), mask))
                else:
                    info = replace(info, deleted=0, deletions=None)
                kept.append((info, mask))
            for info, rows in zip(self.segments, self.rows_per_doc):
                rows_per_doc[info.path] = rows
            documents = sum(i.documents - i.deleted for i, _ in kept)
            vectors = sum(i.vectors - (int(rows_per_doc[i.path][mask].sum())
                                       if i.path in rows_per_doc and mask.any() else 0)
                          for i, mask in kept)
            infos = [i for i, _ in kept]
            if not infos:
                raise InputError(f"{self.root}: the commit would delete every document; an "
                                 "index needs at least one (delete the directory instead)")
            main = max(infos, key=lambda i: i.documents - i.deleted)
            own = base.transform.query_files()
            own += [i.deletions for i in infos if i.deletions]
            lexical = base.lexical
            if lexical is not None:
                live_units = (documents if lexical.unit == "document" else vectors)
                lexical = replace(lexical, rows=live_units, library=TF_LIBRARY,
                                  vocabulary=max(i.lexical.vocabulary for i in infos))
            history, dropped = bounded_history(base)
            seconds = time.perf_counter() - began
            manifest = replace(
                base, segments=infos, documents=documents, vectors=vectors, index=main.index,
                lexical=lexical, files=file_digests(staged, own), version=name,
                replaces=read_pointer(self.root), update=update, history=history,
                history_dropped=dropped, format_version=4, tpsearch_version=__version__,
                build=replace(base.build, started_at=datetime.now(timezone.utc).isoformat(
                    timespec="seconds"), seconds=round(seconds, 2),
                    stage_seconds=times.as_dict(), encoded_now={"documents": docs,
                                                                "tokens": tokens}))
            manifest.check(str(staged))
            write_manifest(staged, manifest)
            layout.publish(self.root, staged, name, self.root / VERSIONS)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        return manifest

    # ------------------------------------------------------------------ merging
    def maybe_merge(self) -> list[BuildResult]:
        """Apply the merge policy until it has nothing to merge; one version per merge."""
        from .merging import merge

        out = []
        while True:
            groups = self.merge_policy.plan(self.segments, self.deleted) if self.merge_policy else []
            if not groups:
                return out
            out.append(merge(self, groups[0]))
            self._load()

    def compact(self) -> BuildResult | None:
        """Merge every segment into one, dropping deleted documents (None: nothing to do)."""
        from .merging import merge

        self._check_open()
        if self.pending:
            raise InputError("commit (or roll back) the pending changes before compacting")
        if self.legacy or (len(self.segments) == 1 and not self.deleted[0].any()):
            return None
        result = merge(self, list(range(len(self.segments))))
        self._load()
        return result

    # ------------------------------------------------------------------ lifetime
    def _check_open(self) -> None:
        if self._lock is None:
            raise InputError(f"{self.root}: this IndexWriter is closed")

    def close(self) -> None:
        """Release the index's lock (pending changes not committed are dropped)."""
        if self._lock is not None:
            lock, self._lock = self._lock, None
            lock.__exit__(None, None, None)

    def __enter__(self) -> "IndexWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the lock file goes with the process
            pass

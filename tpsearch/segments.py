"""Segments: a version of an index is a list of immutable segments plus deletions.

Layout inside an index directory ``OUT`` (see :mod:`tpsearch.layout` for versions)::

    OUT/segments/s000012-1a2b3c4d/index.faiss, ids.parquet, lexical/, store/
    OUT/versions/v000031-5e6f7a8b/manifest.json, query_shift.npy, deleted-0.npy, ...

A full build writes its files into its version directory, which is then that version's one
segment (``segments`` absent from its manifest). A writer's commit (:mod:`tpsearch.writer`)
adds a segment holding only the new documents and marks replaced or deleted documents of older
segments in a bit file of the new version; the new version's manifest lists the segments it is
made of (``versions/...`` for a build's files, ``segments/...`` for the others) with each one's
files, sizes and SHA-256. Segments are written once, under a temporary name, flushed and
renamed; a version refers to them and never changes them. Merges (:mod:`tpsearch.merging`)
fold several into one, dropping deleted documents.

Searching spans the segments: dense search runs on each segment with its deletions (and any
filter) as an ``IDSelector`` and keeps the best hits overall (with Flat segments, exactly one
Flat index's answer); BM25 scores with the statistics of all live documents together
(:class:`tpsearch.lexical.LexicalSegments`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np
import pyarrow as pa

from .errors import ConfigMismatch, IndexDamaged, InputError
from .idmap import IdMap
from .index import (ONDISK_FILE, SEARCH_PARAMS, chain_key, check_search_params,
                    prepare_queries, read_index_file, search as faiss_search, transform_chain)
from .integrity import file_digests, inside, inside_name, verify_entries
from .ondisk import MappedLists
from .layout import SEGMENT_DIR, SEGMENTS, IndexLocation, fsync_dir, fsync_tree, next_name
from .typed import short

if TYPE_CHECKING:
    from .manifest import Manifest, SegmentInfo

#: What a version may name as a segment: a build's version directory, or a segment.
SEGMENT_PATH = re.compile(r"^(versions/v\d{6,9}-[0-9a-f]{8}|segments/s\d{6,9}-[0-9a-f]{8})$")
DELETIONS = re.compile(r"^deleted-\d{1,6}\.npy$")


def new_segment_name(root: Path) -> str:
    """A fresh segment name: one more than any segment there, and a random tag."""
    return next_name(root / SEGMENTS, SEGMENT_DIR, "s")


def check_segment_info(seg: "SegmentInfo", manifest: "Manifest", where: str) -> None:
    """Rules a version's segment entry must keep (its files are checked when opened)."""
    if not SEGMENT_PATH.match(seg.path):
        raise IndexDamaged(f"{where}.path {short(seg.path)} is not a segment of this directory")
    if seg.vectors < seg.documents or seg.deleted > seg.documents:
        raise IndexDamaged(f"{where}: {seg.vectors} vectors, {seg.documents} documents, "
                           f"{seg.deleted} deleted")
    if (seg.deleted > 0) != (seg.deletions is not None):
        raise IndexDamaged(f"{where}: deleted {seg.deleted} but deletions {short(seg.deletions)}")
    if seg.deletions is not None and not DELETIONS.match(seg.deletions):
        raise IndexDamaged(f"{where}.deletions {short(seg.deletions)} is not a deletions file")
    if seg.deletions is not None and seg.deletions not in manifest.files:
        raise IndexDamaged(f"{where}.deletions {seg.deletions} is not among the files it lists")
    for name in seg.files:
        inside_name(name, where)
    try:
        check_search_params(seg.index.factory, seg.index.search_params)
    except InputError as exc:  # a bad entry, not bad input
        raise IndexDamaged(f"{where}.index.search_params: {exc}") from None
    if (seg.lexical is None) != (manifest.lexical is None):
        raise IndexDamaged(f"{where}: lexical data must be in every segment or in none")


def segments_of(location: IndexLocation, manifest: "Manifest") -> list["SegmentInfo"]:
    """The segments a version is made of; a version without a list is its own one segment."""
    from .manifest import SegmentInfo

    if manifest.segments is not None:
        return list(manifest.segments)
    own = location.path.relative_to(location.root).as_posix()  # "." for a flat directory
    return [SegmentInfo(path=own, documents=manifest.documents, vectors=manifest.vectors,
                        index=manifest.index, lexical=manifest.lexical,
                        files={n: e for n, e in manifest.files.items()})]


def seal_segment(tmp: Path, folder: Path, name: str, info: "SegmentInfo") -> "SegmentInfo":
    """A finished segment written in ``tmp``: its files listed in its entry (sizes, SHA-256),
    flushed, and renamed to ``folder/name`` in one step (a segment that exists is complete)."""
    from .manifest import ID_MAP_FILE, STORE_DIR

    names = [info.index.file, ID_MAP_FILE, STORE_DIR]
    names += [info.lexical.dir] if info.lexical is not None else []
    names += [info.index.data_file] if info.index.data_file else []
    files = file_digests(tmp, names)
    fsync_tree(tmp)
    os.replace(tmp, folder / name)
    fsync_dir(folder)
    return replace(info, path=f"{SEGMENTS}/{name}", files=files)


def segment_dir(root: Path, path: str) -> Path:
    """The directory of a segment, refused unless it is a real directory inside ``root``."""
    if path == ".":
        return root
    return inside(root, path + "/")


def segment_files(info: "SegmentInfo", manifest: "Manifest") -> list[str]:
    """The files and folders a reader opens in a segment."""
    names = [info.index.file, manifest.id_map]
    if info.index.data_file:
        names.append(info.index.data_file)
    if info.lexical is not None:
        names.append(info.lexical.dir)
    return names


def read_deletions(version_dir: Path, info: "SegmentInfo") -> np.ndarray | None:
    """A segment's deleted documents in this version (a boolean mask), or None."""
    if info.deletions is None:
        return None
    path = inside(version_dir, info.deletions)
    try:
        bits = np.load(path, allow_pickle=False)
        mask = np.unpackbits(bits.astype(np.uint8), count=info.documents,
                             bitorder="little").astype(bool)
    except (OSError, ValueError, TypeError) as exc:
        raise IndexDamaged(f"{path}: cannot be read ({str(exc)[:120]})") from None
    if bits.ndim != 1 or len(bits) != (info.documents + 7) // 8 or int(mask.sum()) != info.deleted:
        raise IndexDamaged(f"{path}: does not mark {info.deleted} of {info.documents} documents")
    return mask


def write_deletions(version_dir: Path, number: int, mask: np.ndarray) -> str:
    """Write a segment's deleted documents as packed bits; returns the file's name."""
    name = f"deleted-{number}.npy"
    np.save(version_dir / name, np.packbits(mask.astype(bool), bitorder="little"))
    return name


@dataclass
class OpenSegment:
    """One segment opened for searching: its FAISS index, id map and BM25 postings (shared by
    the versions that keep it: they are immutable), and this version's deletions."""

    info: "SegmentInfo"
    directory: Path
    index: faiss.Index
    idmap: IdMap
    lexical: object | None  # TermPostings (or, tpsearch <= 0.4, a bm25s LexicalIndex)
    deleted: np.ndarray | None = None  # documents deleted in this version

    @property
    def live_rows(self) -> np.ndarray | None:
        """Passage rows of live documents (a mask), or None where nothing is deleted."""
        if self.deleted is None:
            return None
        return ~self.deleted[self.idmap.doc_of_row]

    def with_deletions(self, info: "SegmentInfo", deleted: np.ndarray | None) -> "OpenSegment":
        return replace(self, info=info, deleted=deleted)


def open_segment(root: Path, info: "SegmentInfo", manifest: "Manifest",
                 checksums: bool = True) -> OpenSegment:
    """Open a segment's files (checked against the version's listing of them)."""
    d = segment_dir(root, info.path)
    verify_entries(d, info.files, segment_files(info, manifest), checksums)
    path = inside(d, info.index.file)
    try:
        if info.index.data_file:  # inverted lists on disk, memory-mapped from beside the index
            if info.index.data_file != ONDISK_FILE:
                raise IndexDamaged(f"{d}: index.data_file {info.index.data_file!r} is not "
                                   f"{ONDISK_FILE!r}")
            inside(d, info.index.data_file)
        index = read_index_file(path, bool(info.index.data_file))
    except RuntimeError as exc:
        raise IndexDamaged(f"{d}: {info.index.file} cannot be read "
                           f"({str(exc).splitlines()[0][:200]})") from None
    idmap = IdMap.read(inside(d, manifest.id_map), manifest.store_text, manifest.id_type)
    lexical = None
    if info.lexical is not None:
        from .lexical import TF_LIBRARY, LexicalIndex, TermPostings

        where = inside(d, info.lexical.dir + "/")
        lexical = (TermPostings(where, info.lexical) if info.lexical.library == TF_LIBRARY
                   else LexicalIndex(where, info.lexical))
    documents = int(idmap.doc_of_row.max()) + 1 if len(idmap.ids) else 0
    if index.d != manifest.dim:
        raise ConfigMismatch(f"{d}: index dimension {index.d} differs from the manifest's "
                             f"{manifest.dim}")
    if index.ntotal != len(idmap.ids) or index.ntotal != info.vectors:
        raise ConfigMismatch(f"{d}: index holds {index.ntotal} vectors, the id map "
                           f"{len(idmap.ids)} rows and the manifest {info.vectors}")
    if documents != info.documents:
        raise IndexDamaged(f"{d}: the id map holds {documents} documents, the manifest "
                           f"{info.documents}")
    if lexical is not None:
        unit = info.lexical.unit
        want = documents if unit == "document" else len(idmap.ids)
        if lexical.size != want:
            raise IndexDamaged(f"{d}: the lexical index holds {lexical.size} rows, the index "
                               f"{want} {unit}s")
    return OpenSegment(info, d, index, idmap, lexical)


def concat_idmaps(maps: list[IdMap]) -> IdMap:
    """One id map over several segments' (rows and document ordinals follow on)."""
    if len(maps) == 1:
        return maps[0]
    offsets = np.cumsum([0] + [int(m.doc_of_row.max()) + 1 if len(m.ids) else 0 for m in maps])
    opt = lambda xs: None if any(x is None for x in xs) else np.concatenate(xs)
    texts = None if any(m.texts is None for m in maps) else [t for m in maps for t in m.texts]
    metas = [m.metadata for m in maps]
    return IdMap(ids=[i for m in maps for i in m.ids],
                 passages=np.concatenate([m.passages for m in maps]),
                 starts=opt([m.starts for m in maps]), ends=opt([m.ends for m in maps]),
                 texts=texts,
                 doc_of_row=np.concatenate([m.doc_of_row + o for m, o in zip(maps, offsets)]),
                 metadata=None if any(t is None for t in metas) else pa.concat_tables(metas))


class DenseSegments:
    """Vector search over a version's segments: each searched over its live rows (and the
    allowed ones), the best hits of all kept. Rows are global: a segment's rows follow the
    previous segment's."""

    def __init__(self, segments: list[OpenSegment]):
        self.segments = segments
        self.indexes = [s.index for s in segments]
        self.offsets = np.cumsum([0] + [s.index.ntotal for s in segments])
        self.live = [s.live_rows for s in segments]
        # each segment's live rows as a bitmap, made once and reused by every search
        self.live_bits = [None if m is None else (np.packbits(m, bitorder="little"), int(m.sum()))
                          for m in self.live]
        self.ntotal = sum(s.index.ntotal if b is None else b[1]
                          for s, b in zip(segments, self.live_bits))
        self.d = segments[0].index.d if segments else 0
        self.params = [dict(s.info.index.search_params) for s in segments]
        self.factories = [s.info.index.factory for s in segments]
        # segments whose lists are on disk: their mapped pages are released now and then
        self.mapped = [MappedLists.of(s.index) if s.info.index.data_file else None
                       for s in segments]
        # segments share the version's transform (unless built apart and refitted): queries
        # go through each distinct chain once per search, not once per segment
        self.chains = [transform_chain(s.index) for s in segments]
        distinct: dict[bytes, int] = {}
        self.chain_of = [distinct.setdefault(chain_key(c), len(distinct)) for c in self.chains]

    def _searched(self, i: int, queries: int, params: dict) -> None:
        if self.mapped[i] is not None:
            nprobe = int(params.get("nprobe", faiss.extract_index_ivf(self.indexes[i]).nprobe))
            self.mapped[i].searched(queries, nprobe)

    def check_params(self, params: dict) -> None:
        """Refuse a parameter that applies to none of the segments' indexes."""
        errors = []
        for factory in dict.fromkeys(self.factories):
            try:
                check_search_params(factory, params)
                return
            except InputError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def _params_for(self, i: int, params: dict) -> dict:
        """The segment's tuned parameters with those of the call (checked already, by
        :meth:`check_params`) that apply to its kind of index."""
        kind = self.factories[i]
        return {**self.params[i],
                **{k: v for k, v in params.items() if SEARCH_PARAMS.get(k, "\0") in kind}}

    def search(self, x: np.ndarray, k: int, params: dict,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, global rows) of the ``k`` best live (and ``allowed``: sorted global rows)
        rows for each query; rows are -1 past the last match."""
        if len(self.indexes) == 1 and self.live_bits[0] is None:
            p = self._params_for(0, params)
            found = faiss_search(self.indexes[0], x, k, p, allowed)
            self._searched(0, len(x), p)
            return found
        scores, rows = [], []
        through: dict[int, np.ndarray] = {}  # the queries through each distinct chain
        for i, index in enumerate(self.indexes):
            lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
            local, bits = None, self.live_bits[i]
            if allowed is not None:
                a, b = np.searchsorted(allowed, [lo, hi])
                local = allowed[a:b] - lo
                if self.live[i] is not None:
                    local = local[self.live[i][local]]
                bits = None
                available = len(local)
            else:
                available = hi - lo if bits is None else bits[1]
            if not available:
                continue
            p = self._params_for(i, params)
            c = self.chain_of[i]
            if c not in through:
                through[c] = prepare_queries(self.chains[i], x)
            s, r = faiss_search(index, through[c], min(k, available), p, local, bits,
                                transformed=True)
            self._searched(i, len(x), p)
            scores.append(s)
            rows.append(np.where(r >= 0, r + lo, -1))
        if not scores:
            return (np.full((len(x), k), -np.inf, np.float32), np.full((len(x), k), -1, np.int64))
        s, r = np.concatenate(scores, 1), np.concatenate(rows, 1)
        s = np.where(r >= 0, s, -np.inf)
        order = np.lexsort((r, -s), axis=1)[:, :k] if s.shape[1] else np.zeros((len(x), 0), int)
        s, r = np.take_along_axis(s, order, 1), np.take_along_axis(r, order, 1)
        if s.shape[1] < k:
            pad = k - s.shape[1]
            s = np.pad(s, ((0, 0), (0, pad)), constant_values=-np.inf)
            r = np.pad(r, ((0, 0), (0, pad)), constant_values=-1)
        return s.astype(np.float32), r

"""Incremental builds: the passages and vectors of the version an index directory serves now.

Each version keeps its shards (``store/``: per passage the document id, the SHA-256 of the
document's title and text, the passage's span, text, title, token count, truncation flag and
raw vector, before any fitted transform), so a build of a changed corpus into the same
directory encodes only new and changed documents: one whose id and content hash are unchanged
takes its passages and vectors from the store instead of the encoder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..digest import sha256_file
from ..errors import IndexDamaged
from ..integrity import inside
from ..manifest import STORE_DIR, Manifest
from .reader import hash_values

COLUMNS = ["id", "passage", "start", "end", "text", "title", "vector", "doc_sha256",
           "truncated", "tokens"]


def doc_hash(title: str | None, text: str | None) -> str:
    """SHA-256 of a document's content as the index embeds it (title and text)."""
    h = hashlib.sha256()
    hash_values(h, (title, text))
    return h.hexdigest()


@dataclass
class Reused:
    """The stored passages of one document."""

    numbers: list[int]
    spans: list[tuple[int, int]]
    texts: list[str] | None  # None: not stored (--no-store-text)
    titles: list[str | None]
    vectors: np.ndarray
    truncated: list[bool]
    tokens: list[int]
    digest: str  # the document's content hash


class BaseStore:
    """The store of an index's current version, verified and held in memory."""

    def __init__(self, version_dir: Path, manifest: Manifest, dim: int | None = None,
                 root: Path | None = None):
        """``dim``: the encoder's output size, which every stored vector must have; ``root``:
        the index directory (where a segmented version's segments lie)."""
        from ..layout import IndexLocation
        from ..segments import read_deletions, segment_dir, segments_of

        if not manifest.store:
            raise IndexDamaged(f"{version_dir}: this index keeps no passages and vectors for "
                               "updates (built before tpsearch 0.3); rebuild it with --overwrite")
        root = root or version_dir.parent.parent
        location = IndexLocation(root, version_dir, version_dir.name)
        tables = []
        for info in segments_of(location, manifest):
            table, _ = live_store(segment_dir(root, info.path), info,
                                  read_deletions(version_dir, info), dim)
            tables.append(table.drop_columns(["row"]))
        try:
            self.table = pa.concat_tables(tables, promote_options="permissive")
        except (pa.ArrowException, ValueError) as exc:
            raise IndexDamaged(f"{version_dir}: the store's shards do not agree "
                               f"({str(exc)[:120]}); rebuild the index with --overwrite") from None
        t = self.table
        col = t.column("vector").combine_chunks()
        self.vectors = col.values.to_numpy(zero_copy_only=False).reshape(-1, col.type.list_size)
        ids = t.column("id").to_pylist()
        hashes = t.column("doc_sha256").to_pylist()
        self._docs: dict = {}
        for r, (i, h) in enumerate(zip(ids, hashes)):
            entry = self._docs.get(i)
            if entry is None:
                self._docs[i] = (h, [r])
            else:
                entry[1].append(r)
        self._numbers = t.column("passage").to_pylist()
        self._starts = t.column("start").to_pylist()
        self._ends = t.column("end").to_pylist()
        # None where the index was built with --no-store-text (the texts come from the corpus)
        self._texts = t.column("text").to_pylist() if "text" in t.column_names else None
        self._titles = t.column("title").to_pylist()
        self._truncated = t.column("truncated").to_pylist()
        self._tokens = t.column("tokens").to_pylist()

    @property
    def documents(self) -> int:
        return len(self._docs)

    def known(self, doc_id) -> bool:
        return doc_id in self._docs

    def ids(self) -> list:
        """The stored documents' ids, in the index's order."""
        return list(self._docs)

    def match(self, doc_id, digest: str | None) -> Reused | None:
        """The stored passages of ``doc_id`` if its content hash is still ``digest`` (None:
        whatever it is)."""
        entry = self._docs.get(doc_id)
        if entry is None or (digest is not None and entry[0] != digest):
            return None
        rows = entry[1]
        return Reused([self._numbers[r] for r in rows],
                      [(self._starts[r], self._ends[r]) for r in rows],
                      [self._texts[r] for r in rows] if self._texts is not None else None,
                      [self._titles[r] for r in rows],
                      self.vectors[rows], [self._truncated[r] for r in rows],
                      [self._tokens[r] for r in rows], entry[0])


def live_store(directory: Path, info, deleted: np.ndarray | None,
               dim: int | None = None) -> tuple[pa.Table, np.ndarray | None]:
    """The store of the segment ``info`` in ``directory`` without its ``deleted`` documents
    (a mask over them; None: none deleted), and which stored passages were kept (None: all)."""
    table = read_store(directory, store_files(directory, info), dim)
    if deleted is None:
        return table, None
    doc = np.unique(table.column("row").to_numpy(), return_inverse=True)[1]
    kept = ~deleted[doc]
    return table.filter(pa.array(kept)), kept


def store_files(directory: Path, info) -> dict:
    """The store shards the manifest lists for segment ``info`` (name -> FileEntry)."""
    files = {n: e for n, e in info.files.items() if n.startswith(STORE_DIR + "/")}
    if not files:
        raise IndexDamaged(f"{directory}: this index keeps no passages and vectors for "
                           "updates (built before tpsearch 0.3); rebuild it with --overwrite")
    return files


def read_store_shard(directory: Path, name: str, want, dim: int | None = None,
                     columns: list[str] | None = None) -> pa.Table:
    """One store shard of a segment, checked against its size and SHA-256 and its columns
    against a store's (``columns``: read only these)."""
    path = inside(directory, name)
    if path.stat().st_size != want.bytes or sha256_file(path) != want.sha256:
        raise IndexDamaged(f"{directory}: {name} does not match the manifest")
    try:
        schema = pq.read_schema(path)
        table = pq.read_table(path, columns=columns)  # the metadata columns too (merges keep them)
    except (pa.ArrowException, OSError) as exc:
        raise IndexDamaged(f"{path}: cannot be read ({str(exc)[:120]})") from None
    names = schema.names
    vtype = schema.field("vector").type if "vector" in names else None
    missing = [c for c in ["row"] + COLUMNS if c not in names and c != "text"]
    if missing or not pa.types.is_fixed_size_list(vtype) or not pa.types.is_float32(
            vtype.value_type) or dim is not None and vtype.list_size != dim:
        raise IndexDamaged(
            f"{path}: not a store shard of this index ("
            + (f"no column {missing[0]!r}" if missing else
               f"vectors of type {vtype}, the encoder gives {dim} float32 values")
            + "); rebuild the index with --overwrite")
    return table


def read_store(directory: Path, files: dict, dim: int | None = None) -> pa.Table:
    """The store shards listed in ``files`` (name -> FileEntry) of one segment, checked
    against their sizes and SHA-256, as one table (with each passage's document ``row``)."""
    tables = [read_store_shard(directory, name, files[name], dim) for name in sorted(files)]
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowException, ValueError) as exc:
        raise IndexDamaged(f"{directory}: the store's shards do not agree "
                           f"({str(exc)[:120]}); rebuild the index with --overwrite") from None


def fill_store(shards: list[Path], store: Path, store_text: bool, keep: bool) -> None:
    """Make ``shards`` the ``store`` folder of a segment: moved in, or (``keep``: the shards
    stay where they are) hard-linked, copied where a link is refused; without ``store_text``
    their texts are left out, as from the id map."""
    store.mkdir()
    for shard in shards:
        target = store / shard.name
        if not store_text:
            pq.write_table(pq.read_table(shard).drop_columns(["text"]), target)
        elif not keep:
            os.replace(shard, target)
        else:
            try:
                os.link(shard, target)  # the same bytes, no copy (a shard is never rewritten)
            except OSError:
                shutil.copy2(shard, target)

"""Writer: one Parquet shard per window of corpus rows, one row per passage.

A shard holds, per passage: the corpus row, the document id, the passage number, its character
span in the document, its text and title, and its vector; counts go in the file's metadata.
It is written under a temporary name and renamed, so a shard file that exists is complete.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..metadata import PREFIX


@dataclass
class Shard:
    """One window's output: passages of the documents it kept."""

    start: int  # first corpus row of the window
    rows: list[int]  # corpus row of each passage
    ids: list  # document id of each passage
    passages: list[int]  # passage number within its document
    spans: list[tuple[int, int]]  # character span of each passage in its document's text
    texts: list[str]  # passage text (= document text[start:end])
    titles: list[str | None] | None
    vectors: np.ndarray  # (passages, dim) float32
    window_rows: int
    documents: int  # documents kept
    skipped: int
    truncated: int
    tokens: int
    source_sha256: str = ""  # reader.window_digest of the window it was made from
    metadata: dict[str, list] = field(default_factory=dict)  # column -> value per passage
    doc_hashes: list[str] = field(default_factory=list)  # content hash of each passage's document
    passage_truncated: list[bool] = field(default_factory=list)
    passage_tokens: list[int] = field(default_factory=list)
    encoded_documents: int = 0  # of ``documents``, encoded now (the rest reused)
    encoded_tokens: int = 0
    reused: int = 0
    changed: int = 0
    added: int = 0


def write_shard(path: Path, shard: Shard, id_kind: str,
                metadata_types: dict[str, tuple[str, pa.DataType]] | None = None) -> Path:
    """Write atomically to ``path``; metadata columns ``c`` as ``meta.c`` of their stored type."""
    dim = shard.vectors.shape[1] if shard.vectors.ndim == 2 else 0
    flat = pa.array(shard.vectors.reshape(-1), type=pa.float32())
    columns = {
        "row": pa.array(shard.rows, type=pa.int64()),
        "id": pa.array(shard.ids, type=pa.int64() if id_kind == "int" else pa.large_string()),
        "passage": pa.array(shard.passages, type=pa.int32()),
        "start": pa.array([a for a, _ in shard.spans], type=pa.int64()),
        "end": pa.array([b for _, b in shard.spans], type=pa.int64()),
        "text": pa.array(shard.texts, type=pa.large_string()),
        "title": pa.array(shard.titles if shard.titles is not None else [None] * len(shard.rows),
                          type=pa.large_string()),
        "vector": pa.FixedSizeListArray.from_arrays(flat, dim) if dim else pa.array(
            [], type=pa.list_(pa.float32(), 1)),
        "doc_sha256": pa.array(shard.doc_hashes, type=pa.large_string()),
        "truncated": pa.array(shard.passage_truncated, type=pa.bool_()),
        "tokens": pa.array(shard.passage_tokens, type=pa.int32()),
    }
    for c, (_, t) in (metadata_types or {}).items():
        columns[PREFIX + c] = pa.array(shard.metadata.get(c, []), type=t)
    meta = {"window_rows": shard.window_rows, "documents": shard.documents,
            "skipped": shard.skipped, "truncated": shard.truncated, "tokens": shard.tokens,
            "dim": dim, "source_sha256": shard.source_sha256, "reused": shard.reused,
            "changed": shard.changed, "added": shard.added}
    table = pa.table(columns).replace_schema_metadata({"tpsearch": json.dumps(meta)})
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def shard_meta(path: Path) -> dict:
    return json.loads(pq.read_schema(path).metadata[b"tpsearch"])


def shard_rows(path: Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows


def read_vectors(path: Path) -> np.ndarray:
    table = pq.read_table(path, columns=["vector"])
    col = table.column("vector").combine_chunks()
    dim = col.type.list_size
    return col.values.to_numpy(zero_copy_only=False).reshape(-1, dim)


def iter_vectors(paths: list[Path]) -> Iterator[np.ndarray]:
    for p in paths:
        yield read_vectors(p)


def read_table(path: Path, columns: list[str]) -> pa.Table:
    return pq.read_table(path, columns=columns)

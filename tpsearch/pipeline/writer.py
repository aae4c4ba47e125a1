"""Writer: embedding shards in a work directory, one Parquet file per window of corpus rows.

A shard holds the corpus row numbers, ids, optional texts and the vectors of the rows it kept,
plus counts in its metadata. It is written under a temporary name and renamed, so a shard file
that exists is complete: a killed build resumes from the shards present.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SHARD_GLOB = "shard-*.parquet"


@dataclass
class Shard:
    """One window's output."""

    start: int  # first corpus row of the window
    rows: list[int]  # corpus rows kept
    ids: list
    texts: list[str] | None
    vectors: np.ndarray  # (len(rows), dim) float32
    window_rows: int
    skipped: int
    truncated: int
    tokens: int


def shard_path(directory: Path, start: int) -> Path:
    return directory / f"shard-{start:012d}.parquet"


def write_shard(directory: Path, shard: Shard, id_kind: str) -> Path:
    """Write atomically; returns the final path."""
    dim = shard.vectors.shape[1] if shard.vectors.ndim == 2 else 0
    flat = pa.array(shard.vectors.reshape(-1), type=pa.float32())
    columns = {
        "row": pa.array(shard.rows, type=pa.int64()),
        "id": pa.array(shard.ids, type=pa.int64() if id_kind == "int" else pa.large_string()),
        "vector": pa.FixedSizeListArray.from_arrays(flat, dim) if dim else pa.array(
            [], type=pa.list_(pa.float32(), 1)),
    }
    if shard.texts is not None:
        columns["text"] = pa.array(shard.texts, type=pa.large_string())
    meta = {"window_rows": shard.window_rows, "skipped": shard.skipped,
            "truncated": shard.truncated, "tokens": shard.tokens, "dim": dim}
    table = pa.table(columns).replace_schema_metadata({"tpsearch": json.dumps(meta)})
    final = shard_path(directory, shard.start)
    tmp = final.with_suffix(f".tmp{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, final)
    return final


def shard_meta(path: Path) -> dict:
    return json.loads(pq.read_schema(path).metadata[b"tpsearch"])


def complete_shards(directory: Path) -> list[Path]:
    """Finished shards in corpus order (leftover temporary files are ignored)."""
    return sorted(directory.glob(SHARD_GLOB))


def read_vectors(path: Path) -> np.ndarray:
    table = pq.read_table(path, columns=["vector"])
    col = table.column("vector").combine_chunks()
    dim = col.type.list_size
    return col.values.to_numpy(zero_copy_only=False).reshape(-1, dim)


def iter_vectors(paths: list[Path]) -> Iterator[np.ndarray]:
    for p in paths:
        yield read_vectors(p)


def read_table(path: Path, with_text: bool) -> pa.Table:
    cols = ["row", "id"] + (["text"] if with_text else [])
    return pq.read_table(path, columns=cols)

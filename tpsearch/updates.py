"""Add, replace and delete documents of an index by id, for apps that ingest as they go:

    import tpsearch
    tpsearch.update("idx", upsert=[{"id": "a1", "text": "..."}], delete=["old-7"])

The result is the directory's next version, made by the incremental build: every document of
the index that is neither deleted nor replaced is taken from the index's store as it is (never
encoded again), the upserted rows are encoded (a row whose id is in the index replaces that
document in place; new ids are added at the end), the fitted transform is kept (``refit``
fits anew), and the new version is published atomically under the build's lock.
"""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from .config import BuildConfig, ModelConfig, build_config_from
from .errors import InputError
from .manifest import inside, open_manifest
from .metadata import PREFIX
from .pipeline import BuildResult, build_index
from .searcher import IdMap

KEEP_COLUMN = "__tpsearch_keep"


def update(directory: str | Path, upsert: Any = None, delete: Iterable = (), refit: bool = False,
           show_progress: bool = False) -> BuildResult:
    """Publish a new version of the index at ``directory`` with ``upsert`` (a Parquet path, a
    pyarrow Table or a list of dicts with the index's id, text, title and metadata columns)
    added or replacing documents by id, and the ids in ``delete`` removed."""
    root = Path(directory)
    location, manifest = open_manifest(root)
    c = manifest.corpus
    idmap = IdMap.read(inside(location.path, manifest.id_map), False, manifest.id_type)
    firsts = [int(rows[0]) for rows in idmap.doc_rows]
    base_ids = [idmap.ids[r] for r in firsts]
    columns = [c.id_column, c.text_column] + ([c.title_column] if c.title_column else []) + list(
        manifest.metadata)
    rows = _rows(upsert, columns, root)
    up_ids = rows.column(c.id_column).to_pylist() if rows.num_rows else []
    if len(set(up_ids)) < len(up_ids):
        raise InputError("upsert: the same id appears twice")
    gone = {_typed_id(i, manifest.id_type) for i in delete}
    clash = gone & set(up_ids)
    if clash:
        raise InputError(f"id {sorted(clash, key=str)[0]!r} is both upserted and deleted")
    position = {i: n for n, i in enumerate(up_ids)}
    order: list[tuple[str, int]] = []  # ("base", doc ordinal) or ("new", upsert row)
    for d, doc_id in enumerate(base_ids):
        if doc_id in gone:
            continue
        order.append(("new", position.pop(doc_id)) if doc_id in position else ("base", d))
    order += [("new", n) for n in sorted(position.values())]
    table = _corpus(order, rows, columns, idmap, firsts, manifest)
    tmp = root.parent / f".{root.name}.update-{os.getpid()}.parquet"
    pq.write_table(table, tmp)
    try:
        options = {k: v for k, v in manifest.build.config.items() if k != "model"}
        options.update({k: v for k, v in manifest.build.config.get("model", {}).items()
                        if k in {f.name for f in fields(ModelConfig)}})
        options.update(corpus=str(tmp), out=str(root), refit=refit, fresh=False)
        config = build_config_from({k: v for k, v in options.items()
                                    if k in {f.name for f in fields(BuildConfig)} | {
                                        f.name for f in fields(ModelConfig)}})
        return build_index(config, show_progress=show_progress, keep_column=KEEP_COLUMN)
    finally:
        tmp.unlink(missing_ok=True)


def _typed_id(value: Any, id_type: str):
    if id_type == "int":
        try:
            return int(value)
        except (TypeError, ValueError):
            raise InputError(f"delete: this index has integer ids, got {str(value)[:40]!r}") from None
    return str(value)


def _rows(upsert: Any, columns: list[str], root: Path) -> pa.Table:
    """The upserted rows as a table of ``columns`` (refusing missing ones, naming them)."""
    if upsert is None:
        return pa.table({c: pa.array([], pa.null()) for c in columns})
    if isinstance(upsert, (str, Path)):
        try:
            table = pq.read_table(upsert)
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"{upsert}: not a readable Parquet file ({str(exc)[:120]})") from None
        where = str(upsert)
    elif isinstance(upsert, pa.Table):
        table, where = upsert, "upsert"
    else:
        try:
            table = pa.Table.from_pylist(list(upsert))
        except (pa.ArrowException, TypeError) as exc:
            raise InputError(f"upsert: cannot read the records ({str(exc)[:120]})") from None
        where = "upsert"
    missing = [c for c in columns if c not in table.column_names]
    if missing and table.num_rows:
        raise InputError(f"{where}: no column {missing[0]!r} (the index {root} was built with "
                         f"columns {', '.join(columns)})")
    return table.select(columns) if table.num_rows else pa.table({c: pa.array([], pa.null())
                                                                  for c in columns})


def _corpus(order, rows: pa.Table, columns: list[str], idmap: IdMap, firsts: list[int],
            manifest) -> pa.Table:
    """The corpus the incremental build reads: kept documents as id (and metadata) with the
    keep mark, upserted ones as given, in the new order."""
    c = manifest.corpus
    up = {col: rows.column(col).to_pylist() for col in columns} if rows.num_rows else {}
    meta = idmap.metadata
    out: dict[str, list] = {col: [] for col in columns}
    keep = []
    for kind, n in order:
        if kind == "new":
            for col in columns:
                out[col].append(up[col][n])
            keep.append(False)
            continue
        out[c.id_column].append(idmap.ids[firsts[n]])
        out[c.text_column].append(None)
        if c.title_column:
            out[c.title_column].append(None)
        for name in manifest.metadata:
            out[name].append(meta.column(PREFIX + name)[n].as_py())
        keep.append(True)
    types = {c.id_column: pa.int64() if manifest.id_type == "int" else pa.large_string(),
             c.text_column: pa.large_string()}
    if c.title_column:
        types[c.title_column] = pa.large_string()
    for name in manifest.metadata:
        types[name] = meta.schema.field(PREFIX + name).type
    try:
        arrays = {col: pa.array(out[col], type=types[col]) for col in columns}
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise InputError(f"upsert: a value does not fit the index's column types ({str(exc)[:160]})") from None
    return pa.table({**arrays, KEEP_COLUMN: pa.array(keep, pa.bool_())})

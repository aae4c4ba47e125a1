"""Add, replace and delete documents of an index by id, for apps that ingest as they go:

    import tpsearch
    tpsearch.update("idx", upsert=[{"id": "a1", "text": "..."}], delete=["old-7"])

The result is the directory's next version, made by the incremental build: every document of
the index that is neither deleted nor replaced is taken from the index's store as it is (never
encoded again), the upserted rows are encoded (a row whose id is in the index replaces that
document in place; new ids are added at the end), the fitted transform is kept (``refit``
fits anew), and the new version is published atomically.

Writers take turns: an update takes the index's lock (waiting up to ``wait`` seconds for
another build or update to finish) *before* it reads the version it starts from, so every
acknowledged upsert or delete is in every later version, and a refused one changed nothing.
The work of an update that was killed or ran out of disk is resumed by the same update run
again, and discarded by any other.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .config import build_config_recorded
from .errors import DiskError, InputError
from .integrity import inside
from .manifest import open_manifest
from .metadata import PREFIX
from .pipeline import BuildResult, build_index
from .idmap import IdMap

KEEP_COLUMN = "__tpsearch_keep"
#: How long an update waits for another build or update of the same index (seconds).
LOCK_WAIT = 600.0
#: An integer id as text (the CLI's ids): ASCII digits only, an optional minus.
INT_TEXT = re.compile(r"^-?[0-9]{1,19}$")
#: Bytes an ids file may hold (about ten million ids).
MAX_IDS_FILE_BYTES = 256 << 20


def update(directory: str | Path, upsert: Any = None, delete: Iterable = (), refit: bool = False,
           show_progress: bool = False, wait: float = LOCK_WAIT) -> BuildResult:
    """Publish a new version of the index at ``directory`` with ``upsert`` (a Parquet path, a
    pyarrow Table or a list of dicts with the index's id, text, title and metadata columns)
    added or replacing documents by id, and the ids in ``delete`` removed: one commit of an
    :class:`~tpsearch.IndexWriter` (only the upserted rows are encoded, into a new segment).

    Ids must have the index's id type exactly (int: Python or NumPy integers, never bool or
    float; str: strings); anything else is refused in one line naming the id. An upserted
    document needs a non-empty text; an id both upserted and deleted is refused. ``refit``:
    fit the transform anew (the whole index is rebuilt from its stored vectors). ``wait``:
    seconds to wait for another writer's lock. Apps that change an index often should keep one
    IndexWriter open (the model stays loaded between commits)."""
    from .index_writer import IndexWriter

    root = Path(directory).resolve()
    gone_given = id_list(delete, "delete")
    given = _records(upsert)
    with IndexWriter(root, wait=wait, show_progress=show_progress) as writer:
        if refit or writer.legacy:
            tmp_dir = root.parent / f".{root.name}.update"
            try:
                return _update_locked(root, given, gone_given, refit, show_progress, tmp_dir)
            finally:
                shutil.rmtree(tmp_dir, ignore_errors=True)
        if given is not None:
            writer.upsert(given)
        upserted = writer.upserted
        writer.delete(gone_given)
        clash = upserted - writer.upserted
        if clash:
            raise InputError(f"id {sorted(clash, key=str)[0]!r} is both upserted and deleted")
        result = writer.commit()
        if result is None:  # nothing given: the current version, unchanged
            location, manifest = open_manifest(root)
            result = BuildResult(root, manifest, 0, 0)
        return result


def _update_locked(root: Path, given, gone_given: list, refit: bool, show_progress: bool,
                   tmp_dir: Path) -> BuildResult:
    """The update, with the lock held: the base version is read here, not before."""
    location, manifest = open_manifest(root)
    c = manifest.corpus
    idmap = IdMap.read(inside(location.path, manifest.id_map), False, manifest.id_type)
    firsts = [int(r) for r in idmap.first_rows]
    base_ids = idmap.document_ids()
    columns = [c.id_column, c.text_column] + ([c.title_column] if c.title_column else []) + list(
        manifest.metadata)
    rows = _rows(given, columns, root)
    up_ids = _upsert_ids(rows, c.id_column, c.text_column, manifest.id_type)
    gone = {typed_id(i, manifest.id_type, "delete") for i in gone_given}
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
    tmp = tmp_dir / f"corpus-{os.getpid()}-{secrets.token_hex(4)}.parquet"
    try:
        tmp_dir.mkdir(exist_ok=True)
        pq.write_table(table, tmp)
    except OSError as exc:
        raise DiskError(f"{tmp_dir}: {exc.strerror or exc} while writing the update's rows; "
                        "nothing was changed") from None
    config = build_config_recorded(manifest.build.config, corpus=str(tmp), out=str(root),
                                   refit=refit, fresh=False)
    return build_index(config, show_progress=show_progress, keep_column=KEEP_COLUMN, locked=True)


def id_list(ids: Any, what: str) -> list:
    """``ids`` as a list, refusing a lone string or number and mappings (one line)."""
    if isinstance(ids, (str, bytes, Mapping)) or not isinstance(ids, Iterable):
        raise InputError(f"{what} must be a list of ids, got {type(ids).__name__} "
                         f"{str(ids)[:40]!r}; wrap a single id in a list")
    return list(ids)


def typed_id(value: Any, id_type: str, what: str):
    """``value`` if it has the index's id type exactly (int: a Python or NumPy integer, not a
    bool; str: a string); else a one-line refusal naming it."""
    if id_type == "int":
        if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
            return int(value)
        kind = "an integer"
    else:
        if isinstance(value, str):
            return value
        kind = "a string"
    raise InputError(f"{what}: id {short_id(value)} ({type(value).__name__}) is not {kind}: "
                     f"this index has {id_type} ids")


def ids_from_text(texts: Iterable[str], id_type: str, what: str) -> list:
    """Ids typed on a command line or read from a file, as the index's id type: for an
    integer index each must be ASCII digits with an optional minus (no '1_0', no other
    scripts' digits)."""
    out = []
    for t in texts:
        if id_type == "int":
            if not INT_TEXT.match(t):
                raise InputError(f"{what}: id {short_id(t)} is not an integer: this index has "
                                 "int ids (ASCII digits only)")
            out.append(int(t))
        else:
            out.append(t)
    return out


def read_ids_file(path: str | Path) -> list[str]:
    """The ids of a text file, one a line (blank lines skipped); refused in one line if it is
    not a regular UTF-8 text file of at most :data:`MAX_IDS_FILE_BYTES`."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            if not os.path.isfile(p):
                raise InputError(f"{p}: not a regular file; give a text file of ids")
            raw = f.read(MAX_IDS_FILE_BYTES + 1)
    except OSError as exc:
        raise InputError(f"{p}: cannot read it ({exc.strerror})") from None
    if len(raw) > MAX_IDS_FILE_BYTES:
        raise InputError(f"{p}: more than {MAX_IDS_FILE_BYTES >> 20} MiB; split the ids over "
                         "several deletes")
    try:
        text = raw.decode("utf8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{p}: not UTF-8 text (byte {exc.start}); give one id a line") from None
    if "\x00" in text:
        raise InputError(f"{p}: holds NUL bytes; give a text file of ids, one a line")
    return [line.strip() for line in text.splitlines() if line.strip()]


def short_id(value: Any) -> str:
    return repr(value)[:60]


def _records(upsert: Any) -> Any:
    """The upsert argument checked for shape (before any lock is taken): None, a path, a
    Table, or a list of mappings."""
    if upsert is None or isinstance(upsert, (str, Path, pa.Table)):
        return upsert
    if isinstance(upsert, Mapping):
        raise InputError("upsert must be a list of records (dicts), a pyarrow Table or a "
                         "Parquet path; got one dict: wrap it in a list")
    if not isinstance(upsert, Iterable) or isinstance(upsert, bytes):
        raise InputError(f"upsert must be a list of records, got {type(upsert).__name__}")
    records = list(upsert)
    for n, r in enumerate(records):
        if not isinstance(r, Mapping):
            raise InputError(f"upsert: record {n} is a {type(r).__name__}, not a mapping of "
                             "column to value")
    return records


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
            table = pa.Table.from_pylist([dict(r) for r in upsert])
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            raise InputError(f"upsert: cannot read the records ({str(exc)[:120]})") from None
        where = "upsert"
    missing = [c for c in columns if c not in table.column_names]
    if missing and table.num_rows:
        raise InputError(f"{where}: no column {missing[0]!r} (the index {root} was built with "
                         f"columns {', '.join(columns)})")
    return table.select(columns) if table.num_rows else pa.table({c: pa.array([], pa.null())
                                                                  for c in columns})


def _upsert_ids(rows: pa.Table, id_column: str, text_column: str, id_type: str) -> list:
    """The upserted ids, checked: the index's id type (no float or bool column for an integer
    index), none null or repeated, and every document with a non-empty text."""
    if not rows.num_rows:
        return []
    col = rows.column(id_column)
    want = pa.types.is_integer if id_type == "int" else (
        lambda t: pa.types.is_string(t) or pa.types.is_large_string(t))
    if not want(col.type):  # e.g. a float or bool column for an integer index: name the row
        for n, v in enumerate(col.to_pylist()):
            typed_id(v, id_type, f"upsert: row {n} (id column of type {col.type})")
        raise InputError(f"upsert: the id column has type {col.type}; this index has "
                         f"{id_type} ids")
    ids = col.to_pylist()
    for n, (i, text) in enumerate(zip(ids, rows.column(text_column).to_pylist())):
        if i is None:
            raise InputError(f"upsert: row {n} has no id")
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"upsert: document {short_id(i)} (row {n}) has no text; to remove "
                             "a document, delete it by id")
    if len(set(ids)) < len(ids):
        seen: set = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise InputError(f"upsert: id {short_id(dup)} appears twice")
    return ids


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
    except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
        raise InputError(f"upsert: a value does not fit the index's column types ({str(exc)[:160]})") from None
    return pa.table({**arrays, KEEP_COLUMN: pa.array(keep, pa.bool_())})



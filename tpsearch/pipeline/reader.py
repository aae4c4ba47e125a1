"""Reader: a Parquet corpus (file, directory or glob) streamed in record batches.

Only the id, text and optional title columns are read. The corpus is checked up front (files
readable, columns present and typed, ids unique, rows present) so a build fails before any
model work, with a message that names the file, column or rows at fault.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import InputError
from ..metadata import unify


@dataclass(frozen=True)
class CorpusSpec:
    """Which files and columns make up the corpus."""

    path: str
    text_column: str = "text"
    id_column: str = "id"
    title_column: str | None = None
    metadata_columns: tuple[str, ...] = ()  # kept, typed, for filters at search time
    keep_column: str | None = None  # (updates) true: take the document from the index as it is


@dataclass
class Chunk:
    """A window of consecutive corpus rows: ``start`` is the corpus row of the first one."""

    start: int
    ids: list
    texts: list[str | None]
    titles: list[str | None] | None = None  # where a title column is given
    metadata: dict[str, list] = field(default_factory=dict)  # column -> values
    keep: list[bool] | None = None  # rows to take from the index unchanged (updates)


def resolve_files(path: str) -> list[Path]:
    """A file, every ``*.parquet`` under a directory, or a glob; sorted for a stable order."""
    p = Path(path).expanduser()
    if any(ch in path for ch in "*?["):
        files = sorted(Path(f) for f in globlib.glob(str(p), recursive=True) if Path(f).is_file())
        if not files:
            raise InputError(f"{path}: the pattern matches no files")
    elif p.is_dir():
        files = sorted(f for f in p.rglob("*.parquet") if f.is_file())
        if not files:
            raise InputError(f"{path}: the directory holds no .parquet files")
    elif p.is_file():
        files = [p]
    else:
        raise InputError(f"{path}: no such file or directory")
    return files


class CorpusReader:
    """Validates a corpus and streams it in chunks of consecutive rows."""

    def __init__(self, spec: CorpusSpec):
        self.spec = spec
        self.files = resolve_files(spec.path)
        self._parquet: list[pq.ParquetFile] = []
        for f in self.files:
            try:
                self._parquet.append(pq.ParquetFile(f))
            except (pa.ArrowInvalid, OSError) as exc:
                raise InputError(f"{f}: not a readable Parquet file ({exc})") from exc
        self.file_rows = [pf.metadata.num_rows for pf in self._parquet]
        self.num_rows = sum(self.file_rows)
        self._check_schema()
        if self.num_rows == 0:
            raise InputError(f"{spec.path}: the corpus has zero rows")

    @property
    def columns(self) -> list[str]:
        cols = [self.spec.id_column, self.spec.text_column]
        cols += [self.spec.title_column] if self.spec.title_column else []
        cols += list(self.spec.metadata_columns)
        return cols + ([self.spec.keep_column] if self.spec.keep_column else [])

    def _check_schema(self) -> None:
        first_id_type = None
        for f, pf in zip(self.files, self._parquet):
            schema = pf.schema_arrow
            for col in self.columns:
                if schema.get_field_index(col) < 0:
                    raise InputError(
                        f"{f}: no column {col!r} (columns: {', '.join(schema.names)})"
                    )
            for col in [self.spec.text_column] + ([self.spec.title_column] if self.spec.title_column else []):
                t = schema.field(col).type
                if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
                    raise InputError(f"{f}: column {col!r} must hold strings, not {t}")
            id_type = schema.field(self.spec.id_column).type
            if not (pa.types.is_integer(id_type) or pa.types.is_string(id_type)
                    or pa.types.is_large_string(id_type)):
                raise InputError(
                    f"{f}: id column {self.spec.id_column!r} must hold strings or integers, "
                    f"not {id_type}"
                )
            kind = "int" if pa.types.is_integer(id_type) else "str"
            if first_id_type is not None and kind != first_id_type:
                raise InputError(f"{f}: id column type differs from the other files ({id_type})")
            first_id_type = kind
        self.id_kind = first_id_type
        #: metadata column -> (kind, the Arrow type it is stored as)
        self.metadata_types = {
            c: unify(c, [(f, pf.schema_arrow.field(c).type) for f, pf in zip(self.files, self._parquet)])
            for c in self.spec.metadata_columns}

    def read_ids(self) -> pa.ChunkedArray:
        """The whole id column (the one column held in memory, for checks and fingerprints),
        as int64 or large strings whatever width each file stores."""
        target = pa.int64() if self.id_kind == "int" else pa.large_string()
        arrays = []
        for f, pf in zip(self.files, self._parquet):
            try:
                column = pf.read(columns=[self.spec.id_column]).column(0)
                self._check_utf8(f, self.spec.id_column, column.chunks, 0)
                arrays.extend(column.cast(target).chunks)
            except (pa.ArrowInvalid, OSError) as exc:
                raise InputError(f"{f}: column {self.spec.id_column!r} cannot be read as "
                                 f"{target} ({str(exc)[:160]})") from None
        return pa.chunked_array(arrays, type=target)

    @staticmethod
    def _check_utf8(f: Path, column: str, chunks, first_row: int) -> None:
        """Refuse a string column holding bytes that are not UTF-8, naming the corpus row."""
        offset = first_row
        for chunk in chunks:
            if pa.types.is_string(chunk.type) or pa.types.is_large_string(chunk.type):
                try:
                    chunk.validate(full=True)
                except pa.ArrowInvalid as exc:
                    found = re.search(r"string index (\d+)", str(exc))
                    where = f"corpus row {offset + int(found.group(1))}" if found else "a row"
                    raise InputError(f"{f}: column {column!r}, {where}: the text is not valid "
                                     "UTF-8; fix or drop that row") from None
            offset += len(chunk)

    def check_ids(self) -> pa.ChunkedArray:
        """Refuse null or duplicate ids, naming a few."""
        ids = self.read_ids()
        if ids.null_count:
            first = pc.index(pc.is_null(ids), True).as_py()
            raise InputError(
                f"{self.spec.path}: column {self.spec.id_column!r} has {ids.null_count} null "
                f"id(s), first at corpus row {first}"
            )
        counts = pc.value_counts(ids)
        dup = counts.filter(pc.greater(counts.field("counts"), 1))
        if len(dup):
            shown = ", ".join(repr(v) for v in dup.field("values")[:5].to_pylist())
            raise InputError(
                f"{self.spec.path}: column {self.spec.id_column!r} has {len(dup)} duplicate "
                f"id(s), e.g. {shown}"
            )
        return ids

    def fingerprint(self, ids: pa.ChunkedArray) -> str:
        """Identifies the corpus content: file names, sizes, row counts and all ids."""
        h = hashlib.sha256()
        for f, n in zip(self.files, self.file_rows):
            h.update(f"{f.name}:{f.stat().st_size}:{n}\n".encode())
        for chunk in ids.chunks:
            for buf in chunk.buffers():
                if buf is not None:
                    h.update(buf)
        return h.hexdigest()

    def chunks(self, size: int, start_row: int = 0, stop_row: int | None = None,
               batch_rows: int = 8192) -> Iterator[Chunk]:
        """Consecutive windows of ``size`` corpus rows (aligned to multiples of ``size``),
        covering rows ``start_row`` to ``stop_row``; reads only those row groups."""
        stop_row = self.num_rows if stop_row is None else stop_row
        spec = self.spec
        pending_ids: list = []
        pending_texts: list = []
        pending_titles: list = []
        meta_cols = list(spec.metadata_columns)
        first_meta = 3 if spec.title_column else 2
        pending_meta: dict[str, list] = {c: [] for c in meta_cols}
        pending_keep: list = []
        keep_at = first_meta + len(meta_cols)
        window_start = start_row
        row = 0
        for f, pf, n in zip(self.files, self._parquet, self.file_rows):
            if row + n <= start_row:
                row += n
                continue
            if row >= stop_row:
                break
            groups, first_row = [], row
            g_row = row
            for g in range(pf.metadata.num_row_groups):
                g_n = pf.metadata.row_group(g).num_rows
                if g_row + g_n > start_row and g_row < stop_row:
                    if not groups:
                        first_row = g_row
                    groups.append(g)
                g_row += g_n
            row += n
            cur = first_row
            for batch in pf.iter_batches(batch_size=batch_rows, row_groups=groups,
                                         columns=self.columns):
                for i, col in enumerate(self.columns[1:], start=1):
                    self._check_utf8(f, col, [batch.column(i)], cur)
                lo = max(0, start_row - cur)
                hi = min(batch.num_rows, stop_row - cur)
                if hi > lo:
                    b = batch.slice(lo, hi - lo)
                    pending_ids.extend(b.column(0).to_pylist())
                    pending_texts.extend(b.column(1).to_pylist())
                    if spec.title_column:
                        pending_titles.extend(b.column(2).to_pylist())
                    for j, c in enumerate(meta_cols):
                        target = self.metadata_types[c][1]
                        pending_meta[c].extend(b.column(first_meta + j).cast(target).to_pylist())
                    if spec.keep_column:
                        pending_keep.extend(b.column(keep_at).to_pylist())
                cur += batch.num_rows
                while len(pending_ids) >= size:
                    yield Chunk(window_start, pending_ids[:size], pending_texts[:size],
                                pending_titles[:size] if spec.title_column else None,
                                {c: v[:size] for c, v in pending_meta.items()},
                                pending_keep[:size] if spec.keep_column else None)
                    window_start += size
                    pending_ids, pending_texts = pending_ids[size:], pending_texts[size:]
                    pending_titles = pending_titles[size:]
                    pending_meta = {c: v[size:] for c, v in pending_meta.items()}
                    pending_keep = pending_keep[size:]
                if cur >= stop_row:
                    break
        if pending_ids:
            yield Chunk(window_start, pending_ids, pending_texts,
                        pending_titles if spec.title_column else None, pending_meta,
                        pending_keep if spec.keep_column else None)


def hash_values(h, values) -> None:
    """Feed ``values`` to the hash ``h`` unambiguously: each length-prefixed, a null told
    apart from an empty string (the one encoding of window and document digests)."""
    for value in values:
        data = b"\x00" if value is None else b"\x01" + str(value).encode("utf8", errors="surrogatepass")
        h.update(len(data).to_bytes(8, "little") + data)


def window_digest(chunk: Chunk) -> str:
    """SHA-256 of a window's content (ids, texts, titles): what a shard was made from,
    checked again before a resumed build reuses it."""
    h = hashlib.sha256()
    for column in (chunk.ids, chunk.texts, chunk.titles or []):
        h.update(b"|column|")
        hash_values(h, column)
    return h.hexdigest()


def join_title(title: str | None, text: str | None) -> str | None:
    """The text as embedded: the title, a full stop if it has no final punctuation, the text."""
    if not title:
        return text
    if not text:
        return title
    return f"{title}. {text}" if title[-1] not in ".:!?" else f"{title} {text}"

"""The id map of an index version (``ids.parquet``): per vector its document id, passage
number, span and text, and each document's metadata; and :class:`Hit`, what a search returns.
Read by the searcher and by updates (which take kept documents from it)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import IndexDamaged
from .metadata import PREFIX


def first_rows(doc_of_row: np.ndarray) -> np.ndarray:
    """Where each document's passages start, given each passage's document ordinal (its
    passages consecutive)."""
    if not len(doc_of_row):
        return np.zeros(0, np.int64)
    return np.flatnonzero(np.r_[True, np.diff(doc_of_row) != 0])


@dataclass(frozen=True)
class Hit:
    """One result: a document (scored by its best passage) or, with ``passages=True``, a passage.

    ``text`` is the passage's text (when the index stores text) and ``start``/``end`` its
    character span in the document, so ``document_text[start:end] == text``."""

    id: Any
    score: float
    rank: int
    text: str | None = None
    passage: int = 0
    start: int | None = None
    end: int | None = None

    def to_dict(self) -> dict:
        return {"rank": self.rank, "score": self.score, "id": self.id, "passage": self.passage,
                "start": self.start, "end": self.end, "text": self.text}


@dataclass
class IdMap:
    """Per vector: document id, passage number, span, text; and its document's ordinal."""

    ids: list
    passages: np.ndarray
    starts: np.ndarray | None
    ends: np.ndarray | None
    texts: list | None
    doc_of_row: np.ndarray
    metadata: pa.Table | None = None  # one row per document: its meta.NAME columns

    @classmethod
    def read(cls, path: Path, with_text: bool, id_type: str = "str") -> "IdMap":
        """Read and check an id map: typed columns, passages of a document consecutive."""
        want = {"id": pa.types.is_integer if id_type == "int" else
                (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)),
                "passage": pa.types.is_integer, "start": pa.types.is_integer,
                "end": pa.types.is_integer, "corpus_row": pa.types.is_integer,
                "text": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)}
        try:
            schema = pq.read_schema(path)
            cols = [c for c in ("id", "passage", "start", "end", "corpus_row") if c in schema.names]
            cols += ["text"] if with_text and "text" in schema.names else []
            meta = [c for c in schema.names if c.startswith(PREFIX)]
            for c in cols:
                if not want[c](schema.field(c).type):
                    raise IndexDamaged(f"{path}: column {c!r} has type {schema.field(c).type}")
            if "id" not in cols:
                raise IndexDamaged(f"{path}: the id map has no 'id' column")
            t = pq.read_table(path, columns=cols + meta)
            ids = t.column("id").to_pylist()
            texts = t.column("text").to_pylist() if "text" in cols else None
        except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
            raise IndexDamaged(f"{path}: the id map cannot be read ({str(exc)[:160]})") from None
        n = t.num_rows
        get = (lambda c: t.column(c).fill_null(0).to_numpy() if c in cols else None)
        rows = get("corpus_row")
        if rows is not None and len(rows) > 1 and (np.diff(rows) < 0).any():
            raise IndexDamaged(f"{path}: rows are not in corpus order")
        doc = np.unique(rows, return_inverse=True)[1] if rows is not None else np.arange(n)
        first = first_rows(doc)
        return cls(ids=ids,
                   passages=get("passage") if "passage" in cols else np.zeros(n, np.int32),
                   starts=get("start"), ends=get("end"), texts=texts,
                   doc_of_row=doc.astype(np.int64),
                   metadata=t.select(meta).take(first) if meta else None)

    @cached_property
    def first_rows(self) -> np.ndarray:
        """The first passage row of each document, by document ordinal."""
        return first_rows(self.doc_of_row)

    def document_ids(self) -> list:
        """Each document's id, by document ordinal."""
        return [self.ids[r] for r in self.first_rows]

    @cached_property
    def doc_rows(self) -> list[np.ndarray]:
        """Passage rows of each document, by document ordinal (computed on first use)."""
        bounds = np.flatnonzero(np.diff(self.doc_of_row)) + 1
        return np.split(np.arange(len(self.ids)), bounds)

    def hit(self, row: int, score: float, rank: int) -> Hit:
        return Hit(self.ids[row], float(score), rank,
                   self.texts[row] if self.texts is not None else None, int(self.passages[row]),
                   int(self.starts[row]) if self.starts is not None else None,
                   int(self.ends[row]) if self.ends is not None else None)

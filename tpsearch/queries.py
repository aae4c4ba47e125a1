"""Queries as a search takes them: a list (never a lone string read as its characters), each
cleaned once (:func:`clean_text`), and a whole search checked once (:class:`SearchRequest`,
made by :meth:`tpsearch.Searcher.prepare`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class SearchRequest:
    """A search checked once against its index (:meth:`Searcher.prepare`), run by
    :meth:`Searcher.run` without checking again: queries cleaned, mode and depths resolved,
    search parameters range-checked, the filter evaluated to the documents it allows."""

    queries: list[str]
    k: int
    mode: str
    passages: bool = False
    rerank: int = 0
    params: dict = field(default_factory=dict)
    allowed: np.ndarray | None = None  # None: every document


def query_list(queries: Any, what: str) -> list:
    """``queries`` as a list, refusing a lone string (which would search its characters)."""
    if isinstance(queries, (str, bytes)):
        raise InputError(f"{what} must be a list of strings, got one string; use "
                         "search(query) for a single query")
    if isinstance(queries, np.ndarray):
        return queries.tolist()
    try:
        return list(queries)
    except TypeError:
        raise InputError(f"{what} must be a list of strings, got {type(queries).__name__}") from None


def clean_text(text: Any) -> str:
    """A query as the tokenizer can take it: bytes decoded as UTF-8 (bad bytes become U+FFFD)
    and lone surrogates replaced with '?', so one bad query never fails a batch."""
    if isinstance(text, bytes):
        return text.decode("utf8", errors="replace")
    if not isinstance(text, str):
        raise InputError(f"a query must be a string, got {type(text).__name__}")
    return text.encode("utf8", errors="replace").decode("utf8")

"""A BM25 index over the documents (or the passages) of the vector index (bm25s).

By default one BM25 row is a whole document, rebuilt from its passages: BM25 normalises for
length itself, and on the long-document dev set whole documents beat their best passage by
1.2 nDCG@10 alone and 1.5 fused with the dense ranking (README, "Retrieval on documents").

Why bm25s: it is a small, pure-Python, well-kept package on numpy/scipy (already dependencies),
indexes about as fast as the corpus can be tokenised, saves to a folder of ``.npy`` files that
it memory-maps at search time (so a searcher's memory does not grow with the corpus), and scores
with Lucene's BM25. tantivy is a fine engine too, but it would bring a Rust extension, its own
query language to escape, and a segment store, for no gain at the sizes a single machine encodes.

Texts are lower-cased, split into words, English stop words dropped and words stemmed
(Snowball, PyStemmer), by one function for passages and queries alike. The vocabulary is grown
shard by shard while building (each passage kept as a small int32 array); a query's words are
looked up in the stored vocabulary (unknown words are dropped).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from .errors import IndexDamaged

if TYPE_CHECKING:
    from .manifest import LexicalInfo

LEXICAL_DIR = "lexical"
_PARAMS = {"k1": 1.2, "b": 0.75, "method": "lucene"}
_STEMMER = None


def words(texts: Sequence[str]) -> list[list[str]]:
    """Stemmed, lower-cased words of each text, English stop words left out."""
    global _STEMMER
    import bm25s
    import Stemmer

    if _STEMMER is None:
        _STEMMER = Stemmer.Stemmer("english")
    return bm25s.tokenize(list(texts), lower=True, stopwords="en", stemmer=_STEMMER.stemWords,
                          return_ids=False, show_progress=False)


class LexicalBuilder:
    """Collects passages shard by shard, then writes the BM25 index."""

    def __init__(self) -> None:
        self._vocab: dict[str, int] = {"": 0}  # the empty token scores passages without words
        self._ids: list[np.ndarray] = []

    def add(self, texts: Sequence[str]) -> None:
        vocab = self._vocab
        for row in words(texts) if texts else []:
            ids = [vocab.setdefault(w, len(vocab)) for w in row] or [0]
            self._ids.append(np.asarray(ids, dtype=np.int32))

    def __len__(self) -> int:
        return len(self._ids)

    def save(self, directory: Path, unit: str = "passage") -> "LexicalInfo":
        """Write the index under ``directory/lexical``; returns the manifest part. ``unit``
        says what one row is: a passage, or a whole document."""
        import bm25s

        from .manifest import LexicalInfo

        retriever = bm25s.BM25(**_PARAMS)
        retriever.index(([r.tolist() for r in self._ids], self._vocab), create_empty_token=False,
                        show_progress=False)
        out = directory / LEXICAL_DIR
        retriever.save(out, show_progress=False)
        return LexicalInfo(dir=LEXICAL_DIR, unit=unit, rows=len(self._ids),
                           vocabulary=len(self._vocab), **_PARAMS)


class LexicalIndex:
    """A saved BM25 index, memory-mapped (the mapping keeps the files' contents reachable for
    this reader even after a later publish removes its version)."""

    def __init__(self, path: Path, info: "LexicalInfo | None" = None):
        import bm25s

        try:
            self._bm25 = bm25s.BM25.load(path, mmap=True, show_progress=False)
            self._vocab: dict[str, int] = self._bm25.vocab_dict
            self.size = int(self._bm25.scores["num_docs"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise IndexDamaged(f"{path}: the lexical index cannot be read "
                               f"({type(exc).__name__}: {str(exc)[:120]})") from None
        if info is not None and (self.size != info.rows or self._bm25.method != info.method
                                 or len(self._vocab) != info.vocabulary):
            raise IndexDamaged(f"{path}: the lexical index does not match the manifest "
                               f"({self.size} rows, method {self._bm25.method!r}, "
                               f"{len(self._vocab)} words)")

    def query_ids(self, queries: Iterable[str]) -> list[list[int]]:
        """Vocabulary ids of each query's known words (repeats kept, as BM25 sums them)."""
        return [[self._vocab[w] for w in row if w in self._vocab and w]
                for row in words(list(queries))]

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every passage for one query (zeros where no word matches)."""
        ids = self.query_ids([query])[0]
        if not ids:
            return np.zeros(self.size, dtype=np.float32)
        return np.asarray(self._bm25.get_scores(ids), dtype=np.float32)

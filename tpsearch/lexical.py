"""BM25 over the documents (or the passages) of the vector index, one segment at a time.

By default one BM25 row (a *unit*) is a whole document, rebuilt from its passages: BM25
normalises for length itself, and on the long-document dev set whole documents beat their best
passage by 1.2 nDCG@10 alone and 1.5 fused with the dense ranking (docs/retrieval-quality.md).

Each segment of an index keeps its term frequencies, not scores (``lexical/``: the words, a
CSC posting matrix of term frequencies and each unit's length), and a search scores with the
statistics of all live units of all segments together (their number, mean length and each
term's document frequency): so the scores of a version made of many segments with deletions
equal those of one BM25 index built over its live documents, and adding or deleting documents
never rewrites another segment's lexical data. The formula is Lucene's BM25 as bm25s computes
it (the library tpsearch <= 0.4 stored its score matrix with; its indexes are still read,
:class:`LexicalIndex`). Why not tantivy: it is a fine engine with the same segment model, but
its own tokenizer and stemmer would change every score (the dev sets' nDCG was measured with
these), it brings a Rust extension and a query language to escape, and the statistics here are
a few lines of numpy over memory-mapped arrays.

Texts are lower-cased, split into words, English stop words dropped and words stemmed
(Snowball, PyStemmer), by one function for passages and queries alike (bm25s's tokenizer).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import sparse

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


#: The files of one segment's term frequencies, under ``lexical/``.
WORDS_FILE, INDPTR_FILE, UNITS_FILE, TF_FILE, LENGTHS_FILE = (
    "words.parquet", "indptr.npy", "units.npy", "tf.npy", "lengths.npy")
TF_FILES = (WORDS_FILE, INDPTR_FILE, UNITS_FILE, TF_FILE, LENGTHS_FILE)
#: ``LexicalInfo.library`` of the term-frequency format (tpsearch <= 0.4: "bm25s").
TF_LIBRARY = "tpsearch-tf"


class LexicalBuilder:
    """Collects units (documents or passages) shard by shard, then writes their term
    frequencies (:func:`write_postings`)."""

    def __init__(self) -> None:
        self._vocab: dict[str, int] = {"": 0}  # the empty token: a unit without words has length 1
        self._ids: list[np.ndarray] = []

    def add(self, texts: Sequence[str]) -> None:
        vocab = self._vocab
        for row in words(texts) if texts else []:
            ids = [vocab.setdefault(w, len(vocab)) for w in row] or [0]
            self._ids.append(np.asarray(ids, dtype=np.int32))

    def __len__(self) -> int:
        return len(self._ids)

    def save(self, directory: Path, unit: str = "passage") -> "LexicalInfo":
        """Write ``directory/lexical``; returns the manifest part. ``unit`` says what one row
        is: a passage, or a whole document."""
        lengths = np.array([len(r) for r in self._ids], dtype=np.int32)
        unit_of = np.repeat(np.arange(len(self._ids), dtype=np.int32), lengths)
        terms = np.concatenate(self._ids) if self._ids else np.zeros(0, np.int32)
        words_list = list(self._vocab)
        return write_postings(directory, words_list, terms, unit_of, None, lengths, unit)


def write_postings(directory: Path, words_list: list[str], terms: np.ndarray, units: np.ndarray,
                   counts: np.ndarray | None, lengths: np.ndarray, unit: str) -> "LexicalInfo":
    """Write the term-frequency matrix of (term, unit[, count]) entries under
    ``directory/lexical``: per term, its units in ascending order with their frequency."""
    from .manifest import LexicalInfo

    matrix = sparse.csc_matrix(
        (np.ones(len(terms), np.int32) if counts is None else counts.astype(np.int32),
         (units.astype(np.int64), terms.astype(np.int64))),
        shape=(len(lengths), len(words_list)), dtype=np.int32)
    matrix.sum_duplicates()  # repeated words of a unit become one entry with their count
    matrix.sort_indices()
    out = directory / LEXICAL_DIR
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"word": pa.array(words_list, pa.large_string())}), out / WORDS_FILE)
    np.save(out / INDPTR_FILE, matrix.indptr.astype(np.int64))
    np.save(out / UNITS_FILE, matrix.indices.astype(np.int32))
    np.save(out / TF_FILE, matrix.data.astype(np.int32))
    np.save(out / LENGTHS_FILE, np.asarray(lengths, dtype=np.int32))
    mean = round(float(np.mean(lengths)), 3) if len(lengths) else 0.0
    return LexicalInfo(dir=LEXICAL_DIR, unit=unit, rows=len(lengths), vocabulary=len(words_list),
                       library=TF_LIBRARY, mean_length=mean, **_PARAMS)


class TermPostings:
    """One segment's term frequencies, memory-mapped (the mapping keeps the files' contents
    reachable for this reader even after a later publish removes them)."""

    def __init__(self, path: Path, info: "LexicalInfo | None" = None):
        try:
            table = pq.read_table(path / WORDS_FILE)
            if not (pa.types.is_string(table.schema.field("word").type)
                    or pa.types.is_large_string(table.schema.field("word").type)):
                raise ValueError("the word column is not text")
            self.words: list[str] = table.column("word").to_pylist()
            self.vocab = {w: i for i, w in enumerate(self.words)}
            load = lambda name: np.load(path / name, mmap_mode="r", allow_pickle=False)
            self.indptr, self.units, self.tf, self.lengths = (
                load(INDPTR_FILE), load(UNITS_FILE), load(TF_FILE), load(LENGTHS_FILE))
        except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
            raise IndexDamaged(f"{path}: the lexical index cannot be read "
                               f"({type(exc).__name__}: {str(exc)[:120]})") from None
        self.size = len(self.lengths)
        nnz = len(self.units)
        ok = (self.indptr.ndim == 1 and len(self.indptr) == len(self.words) + 1
              and len(self.tf) == nnz and (nnz == 0 or int(self.indptr[-1]) == nnz)
              and int(self.indptr[0]) == 0 and bool((np.diff(self.indptr) >= 0).all())
              and (nnz == 0 or 0 <= int(self.units.min()) and int(self.units.max()) < self.size))
        if not ok or (info is not None and (self.size != info.rows
                                            or len(self.words) != info.vocabulary)):
            raise IndexDamaged(f"{path}: the lexical index is inconsistent or does not match "
                               f"the manifest ({self.size} units, {len(self.words)} words)")

    def postings(self, word: str) -> tuple[np.ndarray, np.ndarray]:
        """(units, term frequencies) of ``word`` in this segment (empty if it has none)."""
        t = self.vocab.get(word)
        if t is None:
            return _EMPTY_I, _EMPTY_I
        a, b = int(self.indptr[t]), int(self.indptr[t + 1])
        return np.asarray(self.units[a:b]), np.asarray(self.tf[a:b])


_EMPTY_I = np.zeros(0, np.int32)


class LexicalSegments:
    """BM25 over the live units of several segments, scored with their joint statistics:
    the same scores as one index built over those units alone (Lucene's formula, as bm25s)."""

    def __init__(self, parts: list[tuple[TermPostings, np.ndarray | None]],
                 k1: float = _PARAMS["k1"], b: float = _PARAMS["b"]):
        """``parts``: each segment's postings and its live units (a boolean mask; None: all)."""
        self.parts = parts
        self.k1, self.b = k1, b
        self.offsets = np.cumsum([0] + [p.size for p, _ in parts])
        self.size = int(self.offsets[-1])
        live = sum(p.size if m is None else int(m.sum()) for p, m in parts)
        total = sum(float(p.lengths.sum()) if m is None else float(p.lengths[m].sum())
                    for p, m in parts)
        self.live_units = live
        self.mean_length = total / live if live else 1.0
        # each unit's length normalisation, k1 * (1 - b + b * length / mean length), once
        self.norms = [(k1 * ((1 - b) + b * np.asarray(p.lengths, np.float32)
                             / np.float32(self.mean_length))).astype(np.float32)
                      for p, _ in parts]

    def query_ids(self, queries: Iterable[str]) -> list[list[str]]:
        """The words of each query that some segment knows (repeats kept: BM25 sums them)."""
        return [[w for w in row if w and any(w in p.vocab for p, _ in self.parts)]
                for row in words(list(queries))]

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every unit for one query (zeros where no word matches, and for
        deleted units)."""
        out = np.zeros(self.size, dtype=np.float64)
        row = self.query_ids([query])[0]
        if not row or not self.live_units:
            return out.astype(np.float32)
        n = self.live_units
        for word, count in sorted(Counter(row).items()):
            found = []
            df = 0
            for i, (p, live) in enumerate(self.parts):
                units, tf = p.postings(word)
                if live is not None and len(units):
                    keep = live[units]
                    units, tf = units[keep], tf[keep]
                if len(units):
                    found.append((i, units, tf))
                    df += len(units)
            if not df:
                continue
            idf = np.float32(math.log(1 + (n - df + 0.5) / (df + 0.5)))
            for i, units, tf in found:
                tf = tf.astype(np.float32)
                out[self.offsets[i] + units] += count * (idf * (tf / (self.norms[i][units] + tf)))
        return out.astype(np.float32)


def merge_postings(directory: Path, parts: list[tuple[TermPostings, np.ndarray | None]],
                   unit: str) -> "LexicalInfo":
    """Write the postings of ``parts``' live units, in order, as one segment's (no text is
    tokenised again: a merge reads term frequencies only)."""
    vocab: dict[str, int] = {"": 0}
    terms, units, counts, lengths = [], [], [], []
    base = 0
    for p, live in parts:
        remap = np.array([vocab.setdefault(w, len(vocab)) for w in p.words], dtype=np.int64)
        keep = np.ones(p.size, bool) if live is None else live
        new_unit = np.cumsum(keep) - 1 + base
        term_of = np.repeat(np.arange(len(p.words)), np.diff(np.asarray(p.indptr)))
        u = np.asarray(p.units)
        sel = keep[u]
        terms.append(remap[term_of[sel]])
        units.append(new_unit[u[sel]])
        counts.append(np.asarray(p.tf)[sel])
        lengths.append(np.asarray(p.lengths)[keep])
        base += int(keep.sum())
    cat = lambda xs, t: np.concatenate(xs).astype(t) if xs else np.zeros(0, t)
    return write_postings(directory, list(vocab), cat(terms, np.int64), cat(units, np.int64),
                          cat(counts, np.int32), cat(lengths, np.int32), unit)


class LexicalIndex:
    """A BM25 index saved by tpsearch <= 0.4 (bm25s's score matrix), memory-mapped (the mapping keeps the files' contents reachable for
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

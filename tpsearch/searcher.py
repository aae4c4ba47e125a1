"""Searcher: query an index directory with queries encoded exactly as its documents were.

    from tpsearch import Searcher
    s = Searcher.open("demo-index")          # manifest, id map and index; model loads on first use
    for h in s.search("parse a JSON string", k=5):       # documents, each with its best passage
        print(h.rank, h.score, h.id, h.passage, h.text)

The encoder is rebuilt from the manifest alone and the model's weights are checked against the
hash recorded at build time. Modes: ``dense`` (vectors), ``lexical`` (BM25 over the same
passages) and ``hybrid`` (the two fused); the index's manifest names the default. A Searcher may
be shared between threads.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .encoder import TPEncoder
from .errors import ConfigMismatch, IndexDamaged, InputError
from .fusion import MODES, best_per_document, fuse
from .index import apply_search_params, check_search_params
from .loading import resolve_source
from .manifest import Manifest, inside, read_manifest, verify_files

#: Documents each side contributes before fusion (hybrid), at least.
FUSION_DEPTH = 100


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


def check_encoder(manifest: Manifest, encoder: TPEncoder) -> None:
    """Refuse an encoder whose settings or weights differ from the index's."""
    diffs = [f"index vs encoder {d}" for d in manifest.encoder.differences(encoder.settings)]
    if encoder.dim != manifest.dim:
        diffs.append(f"dim: index {manifest.dim}, encoder {encoder.dim}")
    recorded = manifest.model.weights_sha256
    actual = encoder.source.weights_sha256 if encoder.source else None
    if recorded and actual and recorded != actual:
        diffs.append(f"weights sha256: index {recorded[:12]}..., encoder {actual[:12]}...")
    if diffs:
        raise ConfigMismatch("the encoder does not match the index: " + "; ".join(diffs))


@dataclass
class IdMap:
    """Per vector: document id, passage number, span, text; and its document's ordinal."""

    ids: list
    passages: np.ndarray
    starts: np.ndarray | None
    ends: np.ndarray | None
    texts: list | None
    doc_of_row: np.ndarray

    @classmethod
    def read(cls, path: Path, with_text: bool) -> "IdMap":
        try:
            names = pq.read_schema(path).names
            cols = [c for c in ("id", "passage", "start", "end", "corpus_row") if c in names]
            cols += ["text"] if with_text and "text" in names else []
            t = pq.read_table(path, columns=cols)
        except (pa.ArrowException, OSError) as exc:
            raise IndexDamaged(f"{path}: the id map cannot be read ({exc})") from None
        n = t.num_rows
        get = (lambda c: t.column(c).to_numpy() if c in cols else None)
        rows = get("corpus_row")
        doc = np.unique(rows, return_inverse=True)[1] if rows is not None else np.arange(n)
        return cls(ids=t.column("id").to_pylist(),
                   passages=get("passage") if "passage" in cols else np.zeros(n, np.int32),
                   starts=get("start"), ends=get("end"),
                   texts=t.column("text").to_pylist() if "text" in cols else None,
                   doc_of_row=doc.astype(np.int64))

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


class Searcher:
    """An opened index directory."""

    def __init__(self, directory: Path, manifest: Manifest, index: faiss.Index, idmap: IdMap,
                 encoder: TPEncoder | None = None, device: str = "auto", model: str | None = None,
                 trust_remote_code: bool = False, dtype: str | None = None):
        self.directory = directory
        self.manifest = manifest
        self.index = index
        self.idmap = idmap
        self.device = device
        self.trust_remote_code = trust_remote_code
        # Queries are encoded in the dtype the documents were (recorded at build), unless told.
        self.dtype = dtype
        self._model_override = model
        self._encoder = encoder
        self._query_encoder: TPEncoder | None = None
        self._lexical = None
        self._lock = threading.Lock()
        self._search_lock = threading.Lock()
        self.default_params = dict(manifest.index.search_params)
        self.documents = int(idmap.doc_of_row.max()) + 1 if len(idmap.ids) else 0
        shift = manifest.transform.query_shift_file
        self.query_shift = np.load(inside(directory, shift)) if shift else None
        if index.d != manifest.dim:
            raise ConfigMismatch(f"{directory}: index dimension {index.d} differs from the "
                                 f"manifest's {manifest.dim}")
        if index.ntotal != len(idmap.ids):
            raise ConfigMismatch(f"{directory}: index holds {index.ntotal} vectors but the id map "
                                 f"{len(idmap.ids)} rows")
        if self.query_shift is not None and self.query_shift.shape != (manifest.dim,):
            raise IndexDamaged(f"{directory}: {shift} does not hold a {manifest.dim}-vector")
        if encoder is not None:
            check_encoder(manifest, encoder)

    @classmethod
    def open(cls, directory: str | Path, device: str = "auto", encoder: TPEncoder | None = None,
             model: str | None = None, trust_remote_code: bool = False,
             verify: bool = True, dtype: str | None = None) -> "Searcher":
        """Open an index directory. ``model`` points to the weights if they moved (they are
        still checked against the recorded hash); ``encoder`` supplies a loaded one.
        ``verify`` checks every file against the sizes and checksums in the manifest."""
        d = Path(directory)
        manifest = read_manifest(d)
        verify_files(d, manifest, checksums=verify)
        try:
            index = faiss.read_index(str(inside(d, manifest.index.file)))
        except RuntimeError as exc:
            raise IndexDamaged(f"{d}: {manifest.index.file} cannot be read "
                               f"({str(exc).splitlines()[0][:200]})") from None
        idmap = IdMap.read(inside(d, manifest.id_map), manifest.store_text)
        return cls(d, manifest, index, idmap, encoder=encoder, device=device, model=model,
                   trust_remote_code=trust_remote_code, dtype=dtype)

    # ------------------------------------------------------------------ encoders
    def _load_encoder(self) -> TPEncoder:
        m = self.manifest.model
        if self._model_override:
            spec = self._model_override
        elif m.kind in ("gguf", "directory"):
            spec = m.path or m.spec
        else:
            spec = m.spec
        if not m.weights_sha256:
            raise ConfigMismatch(f"{self.directory}: the manifest records no weights hash for "
                                 f"model {m.spec!r}; refusing to load a model it cannot verify")
        try:
            source = resolve_source(spec)
        except InputError as exc:
            raise InputError(f"{self.directory}: the index was built with model {m.spec!r} at "
                             f"{spec!r}, which cannot be used here ({exc}); if the weights moved, "
                             "pass their new place (--model / Searcher.open(model=...)): they are "
                             "checked against the recorded hash") from None
        if m.weights_sha256 and source.weights_sha256 and source.weights_sha256 != m.weights_sha256:
            raise ConfigMismatch(
                f"{self.directory}: the index was built with model {m.spec!r} (weights sha256 "
                f"{m.weights_sha256[:12]}...), but {spec!r} now has weights "
                f"{source.weights_sha256[:12]}...; rebuild the index or pass the original model")
        e = self.manifest.encoder
        enc = TPEncoder.from_pretrained(
            spec, device=self.device, prompt=e.prompt, tp_layers=e.tp_layers,
            output_layer=e.output_layer, max_length=e.max_length,
            normalize_sentences=e.normalize_sentences, placeholder_seed=e.placeholder_seed,
            placeholder_init=e.placeholder_init, pooling=e.pooling, quantize=e.quantize,
            dtype=self.dtype or self.manifest.build.get("dtype"),
            trust_remote_code=self.trust_remote_code,
            # Queries come a few at a time: no graph capture or compile latency.
            batching="sorted", compile_layers=False)
        check_encoder(self.manifest, enc)
        return enc

    @property
    def encoder(self) -> TPEncoder:
        """The document encoder, loaded on first use and verified against the manifest."""
        with self._lock:
            if self._encoder is None:
                self._encoder = self._load_encoder()
            return self._encoder

    @property
    def query_encoder(self) -> TPEncoder:
        """The document encoder, or its variant with the index's query prompt."""
        enc = self.encoder
        with self._lock:
            if self._query_encoder is None:
                qp = self.manifest.query_prompt
                self._query_encoder = enc.variant(prompt=qp) if qp else enc
            return self._query_encoder

    @property
    def lexical(self):
        """The BM25 index, opened on first use; None where the index has none."""
        if not self.manifest.lexical:
            return None
        with self._lock:
            if self._lexical is None:
                from .lexical import LexicalIndex

                self._lexical = LexicalIndex(self.directory)
                want = self.documents if self.lexical_unit == "document" else len(self.idmap.ids)
                if self._lexical.size != want:
                    raise IndexDamaged(f"{self.directory}: the lexical index holds "
                                       f"{self._lexical.size} rows, the index {want} "
                                       f"{self.lexical_unit}s")
            return self._lexical

    def embed_documents(self, texts: Sequence[str], batch_size: int = 32) -> list[list[float]]:
        """Vectors for texts (the LangChain ``Embeddings`` method name)."""
        return self.encoder.encode([clean_text(t) for t in texts], batch_size=batch_size).tolist()

    def embed_query(self, text: str) -> list[float]:
        """The vector of one query (LangChain's name); uses the query prompt if the index has one."""
        return self.query_encoder.encode([clean_text(text)])[0].tolist()

    # ------------------------------------------------------------------ search
    def search_vectors(self, vectors: np.ndarray, k: int = 10, **params) -> tuple[np.ndarray, np.ndarray]:
        """Raw FAISS search of query vectors as the encoder gives them (the index's query shift
        is applied here): (scores, passage rows), each (len(vectors), k); rows are -1 past the end."""
        check_search_params(self.manifest.index.factory, params)
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.query_shift is not None:
            x = x + self.query_shift
        k = max(1, min(k, self.index.ntotal))
        with self._search_lock:
            apply_search_params(self.index, {**self.default_params, **params})
            return self.index.search(x, k)

    def search(self, query: str, k: int = 10, mode: str | None = None, passages: bool = False,
               **params) -> list[Hit]:
        """The ``k`` best documents for one query (``passages=True``: the ``k`` best passages).
        ``mode``: dense, lexical or hybrid (default: the index's); ``params``: nprobe/efSearch."""
        return self.search_batch([query], k=k, mode=mode, passages=passages, **params)[0]

    def search_batch(self, queries: Sequence[str], k: int = 10, mode: str | None = None,
                     passages: bool = False, batch_size: int = 32, **params) -> list[list[Hit]]:
        """One hit list per query; queries are encoded in batches."""
        mode = mode or self.manifest.default_mode
        if mode not in MODES:
            raise InputError(f"unknown search mode {mode!r}; use {', '.join(MODES)}")
        if mode != "dense" and self.lexical is None:
            raise InputError(f"{self.directory}: this index has no lexical index (built with "
                             f"--no-lexical or by tpsearch < 0.2); use mode 'dense'")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        if not queries:
            return []
        queries = [clean_text(q) for q in queries]
        limit = len(self.idmap.ids) if passages else self.documents
        k = min(k, limit)
        dense = None
        if mode != "lexical":
            vecs = self.query_encoder.encode(queries, batch_size=batch_size)
            depth = k if passages else max(k, FUSION_DEPTH if mode == "hybrid" else k)
            dense = [self.dense_ranking(v, depth, passages, params) for v in vecs]
        out = []
        for i, q in enumerate(queries):
            if mode == "dense":
                ranked = dense[i]
            else:
                lex = self.lexical_ranking(q, k if mode == "lexical" else max(k, FUSION_DEPTH),
                                            passages)
                ranked = lex if mode == "lexical" else fuse(
                    dense[i], lex, self.manifest.fusion.get("method", "minmax"),
                    float(self.manifest.fusion.get("lexical_weight", 0.5)))
            out.append([self.idmap.hit(r, s, rank)
                        for rank, (_, r, s) in enumerate(ranked[:k], start=1)])
        return out

    def dense_ranking(self, vec: np.ndarray, depth: int, passages: bool,
               params: dict) -> list[tuple[int, int, float]]:
        """(document, passage row, score), best first: ``depth`` passages or documents."""
        n = self.index.ntotal
        fetch = depth if passages else min(n, max(4 * depth, 64))
        while True:
            scores, rows = self.search_vectors(vec[None, :], fetch, **params)
            if passages:
                return [(int(self.idmap.doc_of_row[r]), int(r), float(s))
                        for s, r in zip(scores[0], rows[0]) if r >= 0]
            docs = best_per_document(scores[0], rows[0], self.idmap.doc_of_row, depth)
            if len(docs) >= min(depth, self.documents) or fetch >= n:
                return docs
            fetch = min(n, fetch * 4)

    @property
    def lexical_unit(self) -> str:
        return (self.manifest.lexical or {}).get("unit", "passage")

    def lexical_ranking(self, query: str, depth: int, passages: bool) -> list[tuple[int, int, float]]:
        """(document, passage row, score), best first. With whole-document BM25 rows, each
        document's passage is the one holding the most distinct query words."""
        scores = self.lexical.scores(query)
        order = np.argsort(-scores, kind="stable")
        order = order[scores[order] > 0]
        if self.lexical_unit == "passage":
            if passages:
                return [(int(self.idmap.doc_of_row[r]), int(r), float(scores[r]))
                        for r in order[:depth]]
            # all matching passages: the best `depth` documents may need more than `depth` rows
            return best_per_document(scores[order], order, self.idmap.doc_of_row, depth)
        return [(int(d), self._passage_for(int(d), query), float(scores[d])) for d in order[:depth]]

    def _passage_for(self, doc: int, query: str) -> int:
        """The row of the document's passage sharing the most distinct words with ``query``
        (its first passage where the index stores no text)."""
        rows = self.idmap.doc_rows[doc]
        if self.idmap.texts is None or len(rows) == 1:
            return int(rows[0])
        from .lexical import words

        want = set(words([query])[0])
        found = words([self.idmap.texts[r] for r in rows])
        return int(rows[max(range(len(rows)), key=lambda i: (len(want & set(found[i])), -i))])

    def __len__(self) -> int:
        return self.documents


def clean_text(text: Any) -> str:
    """A query as the tokenizer can take it: bytes decoded as UTF-8 (bad bytes become U+FFFD)
    and lone surrogates replaced with '?', so one bad query never fails a batch."""
    if isinstance(text, bytes):
        return text.decode("utf8", errors="replace")
    if not isinstance(text, str):
        raise InputError(f"a query must be a string, got {type(text).__name__}")
    return text.encode("utf8", errors="replace").decode("utf8")

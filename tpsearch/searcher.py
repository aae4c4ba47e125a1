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
from pathlib import Path
from typing import Sequence

import faiss
import numpy as np

from .encoder import TPEncoder
from .filters import compile_filter
from .errors import ConfigMismatch, IndexDamaged, InputError
from .idmap import Hit, IdMap
from .index_encoder import check_encoder, encoder_mismatches, load_index_encoder
from .queries import SearchRequest, clean_text, query_list
from .transform import read_vector
from .query_adapter import apply_query_map, read_query_map
from .fusion import MODES, best_per_document, fuse
from .segments import DenseSegments, OpenSegment, concat_idmaps, open_segment, read_deletions, segments_of
from .layout import IndexLocation, locate
from .integrity import inside, verify_files
from .manifest import Manifest, open_manifest
from .rerank import MAX_DEPTH, QueryLikelihoodScorer, RerankSettings, rerank_order

#: Documents each side contributes before fusion (hybrid), at least.
FUSION_DEPTH = 100


class Searcher:
    """One version of an index directory, opened whole.

    Everything the searcher reads (manifest, FAISS index, id map, query shift and map, BM25 index) is
    opened by :meth:`open` from the version the directory's pointer names at that moment, so a
    republish of the directory never changes what this searcher answers from: see
    :attr:`version`, :meth:`is_current` and :meth:`reopen`. The model loads on first use."""

    def __init__(self, location: IndexLocation, manifest: Manifest, segments: list[OpenSegment],
                 query_shift: np.ndarray | None = None, encoder: TPEncoder | None = None,
                 device: str = "auto", model: str | None = None,
                 trust_remote_code: bool = False, query_map: np.ndarray | None = None):
        self.location = location
        self.directory = location.root
        self.manifest = manifest
        self.segments = segments
        self.dense = DenseSegments(segments)
        #: The FAISS index of a one-segment version (None for several: see :attr:`dense`).
        self.index = segments[0].index if len(segments) == 1 else None
        self.idmap = concat_idmaps([s.idmap for s in segments])
        deleted = [s.deleted if s.deleted is not None else
                   np.zeros(s.info.documents, bool) for s in segments]
        #: Live documents by ordinal (None: nothing deleted).
        self.live = (None if all(s.deleted is None for s in segments)
                     else ~np.concatenate(deleted))
        self.lexical = self._lexical(segments)
        self.query_shift = query_shift
        #: The query adapter's map (:mod:`tpsearch.query_adapter`), applied after the shift.
        self.query_map = query_map
        self.device = device
        self.trust_remote_code = trust_remote_code
        self._model_override = model
        self._encoder = encoder
        self._query_encoder: TPEncoder | None = None
        self._reranker: QueryLikelihoodScorer | None = None
        #: How ``rerank=N`` re-scores (template, the reranker's share); see :mod:`tpsearch.rerank`.
        self.rerank_settings = RerankSettings()
        self._lock = threading.Lock()
        ordinals = int(self.idmap.doc_of_row.max()) + 1 if len(self.idmap.ids) else 0
        #: Live documents (searchable); the live passages are ``self.dense.ntotal``.
        self.documents = ordinals if self.live is None else int(self.live.sum())
        where = location.path
        if self.dense.d != manifest.dim:
            raise ConfigMismatch(f"{where}: index dimension {self.dense.d} differs from the "
                                 f"manifest's {manifest.dim}")
        for seg in segments:
            if seg.index.metric_type != faiss.METRIC_INNER_PRODUCT:
                raise IndexDamaged(f"{seg.directory}: {seg.info.index.file} does not rank by "
                                   f"inner product (metric type {seg.index.metric_type}); "
                                   "tpsearch indexes do")
        if self.dense.ntotal != manifest.vectors:
            raise ConfigMismatch(f"{where}: the index holds {self.dense.ntotal} live vectors, "
                                 f"the manifest {manifest.vectors}")
        if self.documents != manifest.documents:
            raise IndexDamaged(f"{where}: the id map holds {self.documents} documents, the "
                               f"manifest {manifest.documents}")
        if encoder is not None:
            check_encoder(manifest, encoder)

    def _lexical(self, segments: list[OpenSegment]):
        """One BM25 over the segments' live units (or an index of tpsearch <= 0.4 as it is)."""
        if self.manifest.lexical is None:
            return None
        from .lexical import LexicalSegments, TermPostings

        if len(segments) == 1 and not isinstance(segments[0].lexical, TermPostings):
            return segments[0].lexical  # bm25s (tpsearch <= 0.4): one segment, no deletions
        if not all(isinstance(s.lexical, TermPostings) for s in segments):
            raise IndexDamaged(f"{self.location.path}: a segment holds BM25 data of tpsearch "
                               "<= 0.4; such an index has one segment")
        unit = self.manifest.lexical.unit
        parts = [(s.lexical, None if s.deleted is None else
                  (~s.deleted if unit == "document" else live)) for s, live in
                 zip(segments, self.dense.live)]  # live passage rows, computed once
        info = self.manifest.lexical
        return LexicalSegments(parts, k1=info.k1, b=info.b)

    @classmethod
    def open(cls, directory: str | Path, device: str = "auto", encoder: TPEncoder | None = None,
             model: str | None = None, trust_remote_code: bool = False,
             verify: bool = True) -> "Searcher":
        """Open the current version of an index directory. ``model`` points to the weights if
        they moved (they are still checked against the recorded hash); ``encoder`` supplies a
        loaded one. ``verify`` checks every file's SHA-256 as well as its size and kind."""
        for attempt in range(3):
            location, manifest = open_manifest(directory)
            try:
                return cls._open_version(location, manifest, device, encoder, model,
                                         trust_remote_code, verify)
            except IndexDamaged:
                # A publish may have pruned this version between reading the pointer and
                # opening its files: read the pointer again; a real fault fails again.
                if attempt == 2 or locate(directory).path == location.path:
                    raise
        raise AssertionError("unreachable")

    @classmethod
    def _open_version(cls, location: IndexLocation, manifest: Manifest, device, encoder, model,
                      trust_remote_code, verify,
                      opened: dict[str, OpenSegment] | None = None) -> "Searcher":
        """Open one version; ``opened``: segments an earlier version of the directory opened
        already (immutable: reused as they are, with this version's deletions)."""
        d = location.path
        verify_files(d, manifest, checksums=verify)
        segments = []
        for info in segments_of(location, manifest):
            seg = (opened or {}).get(info.path)
            if seg is None or seg.info.files != info.files:
                seg = open_segment(location.root, info, manifest, checksums=verify)
            segments.append(seg.with_deletions(info, read_deletions(d, info)))
        shift, qmap = manifest.transform.query_shift_file, manifest.transform.query_map_file
        query_shift = read_vector(inside(d, shift), manifest.dim) if shift else None
        query_map = read_query_map(inside(d, qmap), manifest.dim) if qmap else None
        return cls(location, manifest, segments, query_shift, encoder=encoder,
                   device=device, model=model, trust_remote_code=trust_remote_code,
                   query_map=query_map)

    # ------------------------------------------------------------------ versions
    @property
    def version(self) -> str | None:
        """The version of the index directory this searcher answers from (None for a flat
        directory of tpsearch 0.2)."""
        return self.location.version

    def is_current(self) -> bool:
        """Whether the directory still points at this searcher's version."""
        try:
            return locate(self.directory).path == self.location.path
        except (InputError, IndexDamaged):
            return False

    def reopen(self) -> "Searcher":
        """A searcher on the directory's current version; the loaded model is kept when the
        new version was encoded with the same settings and weights (else it loads anew)."""
        location, manifest = open_manifest(self.directory)
        encoder = self._encoder
        if encoder is not None:
            try:
                check_encoder(manifest, encoder)
            except ConfigMismatch:
                encoder = None
        return self._open_version(location, manifest, self.device, encoder,
                                  self._model_override, self.trust_remote_code, True,
                                  {s.info.path: s for s in self.segments})

    # ------------------------------------------------------------------ encoders
    def _load_encoder(self) -> TPEncoder:
        # Queries come a few at a time: no graph capture or compile latency.
        return load_index_encoder(self.directory, self.manifest, self.device,
                                  self._model_override, self.trust_remote_code,
                                  batching="sorted", compile_layers=False)

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

    def embed_documents(self, texts: Sequence[str], batch_size: int = 32) -> list[list[float]]:
        """Vectors for texts (the LangChain ``Embeddings`` method name)."""
        return self.encoder.encode([clean_text(t) for t in query_list(texts, "texts")],
                                   batch_size=batch_size).tolist()

    def embed_query(self, text: str) -> list[float]:
        """The vector of one query (LangChain's name); uses the query prompt if the index has one."""
        return self.encode_queries([text])[0].tolist()

    # ------------------------------------------------------------------ search
    def search_vectors(self, vectors: np.ndarray, k: int = 10,
                       allowed_rows: np.ndarray | None = None, **params) -> tuple[np.ndarray, np.ndarray]:
        """Raw FAISS search of query vectors as the encoder gives them (the index's query shift
        is applied here): (scores, passage rows), each (len(vectors), k); rows are -1 past the
        end. ``params`` (nprobe / efSearch) apply to this call only; ``allowed_rows`` (sorted
        passage rows) restricts the search to them."""
        self.dense.check_params(params)
        return self._search_vectors(vectors, k, allowed_rows, params)

    def _search_vectors(self, vectors: np.ndarray, k: int, allowed_rows: np.ndarray | None,
                        params: dict) -> tuple[np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.query_shift is not None:
            x = x + self.query_shift
        if self.query_map is not None:
            x = apply_query_map(x, self.query_map)
        k = max(1, min(k, self.dense.ntotal))
        return self.dense.search(x, k, params, allowed_rows)

    def search(self, query: str, k: int = 10, mode: str | None = None, passages: bool = False,
               filter: dict | str | None = None, rerank: int = 0, **params) -> list[Hit]:
        """The ``k`` best documents for one query (``passages=True``: the ``k`` best passages).
        ``mode``: dense, lexical or hybrid (default: the index's); ``filter``: a metadata
        filter (see :mod:`tpsearch.filters`); ``rerank``: re-score the best ``rerank``
        documents with the decoder (see :meth:`search_batch`); ``params``: nprobe/efSearch."""
        if not isinstance(query, (str, bytes)):
            raise InputError(f"search takes one query string, got {type(query).__name__}; "
                             "use search_batch for a list")
        return self.search_batch([query], k=k, mode=mode, passages=passages, filter=filter,
                                 rerank=rerank, **params)[0]

    def allowed_documents(self, filter: dict | str) -> np.ndarray:
        """The documents (by ordinal) a metadata filter allows, as a boolean mask; the filter
        is checked against this index's columns first (one-line InputError)."""
        node = compile_filter(filter, self.manifest.metadata)
        if self.idmap.metadata is None:
            raise InputError(f"{self.directory}: this index keeps no metadata columns "
                             "(build it with --metadata-columns)")
        return node(self.idmap.metadata)

    def encode_queries(self, queries: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Query vectors as dense search uses them (the query prompt, L2-normalised; the
        index's query shift is added at search time). What ``search_batch`` encodes, for a
        caller that batches queries of several requests into one forward pass (the server).
        A query's vector does not depend on the others encoded with it."""
        cleaned = [clean_text(q) for q in query_list(queries, "queries")]
        return self.encode_prepared(cleaned, batch_size)

    def encode_prepared(self, cleaned: list[str], batch_size: int = 32) -> np.ndarray:
        """:meth:`encode_queries` of queries cleaned already (a :class:`SearchRequest`'s)."""
        return self.query_encoder.encode(cleaned, batch_size=batch_size)

    def check_request(self, mode: str | None, k: int, params: dict) -> str:
        """Refuse a search this index cannot answer (before any encoding); returns the mode."""
        mode = mode or self.manifest.default_mode
        if mode not in MODES:
            raise InputError(f"unknown search mode {str(mode)[:40]!r}; use {', '.join(MODES)}",
                             param="mode")
        if mode != "dense" and self.lexical is None:
            raise InputError(f"{self.directory}: this index has no lexical index (built with "
                             f"--no-lexical or by tpsearch < 0.2); use mode 'dense'", param="mode")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"k must be a positive integer, got {str(k)[:40]}", param="k")
        try:
            self.dense.check_params(params)
        except InputError as exc:
            raise InputError(str(exc), param="params") from None
        return mode

    def prepare(self, queries: Sequence[str], k: int = 10, mode: str | None = None,
                passages: bool = False, filter: dict | str | None = None, rerank: int = 0,
                **params) -> SearchRequest:
        """Check a search once, before any encoding (one-line :class:`InputError` naming the
        field in ``param``); :meth:`run` then answers it. The server checks a request here,
        encodes its queries with other requests' and runs it."""
        cleaned = [clean_text(q) for q in query_list(queries, "queries")]
        mode = self.check_request(mode, k, params)
        rerank = self.check_rerank(rerank)
        allowed = None
        if filter is not None:
            try:
                allowed = self.allowed_documents(filter)
            except InputError as exc:
                raise InputError(str(exc), param="filter") from None
            if self.live is not None:
                allowed = allowed & self.live
        return SearchRequest(cleaned, int(k), mode, bool(passages), rerank, dict(params), allowed)

    def search_batch(self, queries: Sequence[str], k: int = 10, mode: str | None = None,
                     passages: bool = False, batch_size: int = 32,
                     query_vectors: np.ndarray | None = None, filter: dict | str | None = None,
                     rerank: int = 0, **params) -> list[list[Hit]]:
        """One hit list per query; queries are encoded in batches and searched in one FAISS
        call. ``query_vectors``: the queries' vectors from :meth:`encode_queries`, already
        computed (dense and hybrid modes then skip encoding). ``filter``: only documents whose
        metadata match it are searched (pre-filtering: dense and hybrid return ``k`` hits
        whenever ``k`` documents match; lexical returns those of them with a query word).
        ``rerank``: the best ``rerank`` documents (or passages) of the ranking are re-scored by
        the index's decoder (query likelihood given each one's passage, mixed with the first
        stage's score: :mod:`tpsearch.rerank`); hits past them keep the first stage's order.
        Opt-in: it costs one decoder pass over each re-scored passage."""
        return self.run(self.prepare(queries, k, mode, passages, filter, rerank, **params),
                        query_vectors, batch_size)

    def run(self, request: SearchRequest, query_vectors: np.ndarray | None = None,
            batch_size: int = 32) -> list[list[Hit]]:
        """Answer a :meth:`prepare`-d request (``query_vectors``: its queries' vectors from
        :meth:`encode_queries`, if already computed)."""
        r = request
        queries = r.queries
        if query_vectors is not None and np.shape(query_vectors) != (len(queries), self.manifest.dim):
            raise InputError(f"query_vectors must have shape ({len(queries)}, "
                             f"{self.manifest.dim}), got {np.shape(query_vectors)}")
        if not queries:
            return []
        limit = self.dense.ntotal if r.passages else self.documents
        want = r.k
        k = min(max(r.k, r.rerank), limit)
        if r.allowed is not None and not r.allowed.any():
            return [[] for _ in queries]
        dense = None
        if r.mode != "lexical":
            vecs = (query_vectors if query_vectors is not None
                    else self.encode_prepared(queries, batch_size))
            depth = k if r.passages else max(k, FUSION_DEPTH if r.mode == "hybrid" else k)
            dense = self._dense_rankings(vecs, depth, r.passages, r.params, r.allowed)
        fusion = self.manifest.fusion
        out = []
        for i, q in enumerate(queries):
            if r.mode == "dense":
                ranked = dense[i]
            else:
                lex = self.lexical_ranking(q, k if r.mode == "lexical" else max(k, FUSION_DEPTH),
                                           r.passages, r.allowed, pick_passages=False)
                ranked = lex if r.mode == "lexical" else fuse(
                    dense[i], lex, fusion.method, fusion.lexical_weight)
            # a document's passage is chosen (by its words) for the hits shown or reranked only
            ranked = self._with_passages(ranked[:max(want, r.rerank)], q)
            if r.rerank:
                ranked = self.reranked(q, ranked, r.rerank)
            out.append([self.idmap.hit(row, s, rank)
                        for rank, (_, row, s) in enumerate(ranked[:want], start=1)])
        return out

    def check_rerank(self, rerank: int) -> int:
        """``rerank`` as a depth (0: off), refused in one line unless usable on this index."""
        if isinstance(rerank, bool) or not isinstance(rerank, (int, np.integer)):
            raise InputError(f"rerank must be a whole number of documents, got {rerank!r}")
        if not 0 <= rerank <= MAX_DEPTH:
            raise InputError(f"rerank must lie in 0..{MAX_DEPTH}, got {rerank}")
        if rerank and self.idmap.texts is None:
            raise InputError(f"{self.directory}: this index keeps no passage texts (built with "
                             "--no-store-text), which reranking reads")
        return int(rerank)

    @property
    def reranker(self) -> QueryLikelihoodScorer:
        """The query-likelihood scorer over the index's own (verified) decoder."""
        enc = self.encoder
        with self._lock:
            if self._reranker is None or self._reranker.settings != self.rerank_settings:
                exclude = [enc.placeholder_id] if enc.placeholder_id is not None else []
                self._reranker = QueryLikelihoodScorer(enc.model, enc.tokenizer,
                                                       self.rerank_settings, exclude)
            return self._reranker

    def reranked(self, query: str, ranked: list[tuple[int, int, float]],
                 depth: int) -> list[tuple[int, int, float]]:
        """``ranked`` with its first ``depth`` entries re-scored by the decoder; the entries
        after them follow, scored on the same scale (below every re-scored one)."""
        top = ranked[:depth]
        if len(top) < 2:
            return ranked
        first = np.array([s for _, _, s in top], dtype=np.float64)
        likelihood = self.reranker.score(query, [self.idmap.texts[r] for _, r, _ in top])
        w = self.rerank_settings.weight
        order, mixed = rerank_order(first, likelihood, w)
        lo, hi = first.min(), first.max()
        span = hi - lo if hi > lo else 1.0
        rest = [(d, r, (1.0 - w) * (s - lo) / span) for d, r, s in ranked[depth:]]
        return [(top[j][0], top[j][1], float(m)) for j, m in zip(order, mixed)] + rest

    def dense_rankings(self, vecs: np.ndarray, depth: int, passages: bool, params: dict,
                       allowed: np.ndarray | None = None) -> list[list[tuple[int, int, float]]]:
        """Per query vector: (document, passage row, score), best first, ``depth`` passages or
        documents (only ``allowed`` documents, if given). One FAISS call for the batch;
        queries whose documents need more passages than were fetched (many passages of one
        document on top) are searched again deeper."""
        self.dense.check_params(params)
        return self._dense_rankings(vecs, depth, passages, params, allowed)

    def _dense_rankings(self, vecs: np.ndarray, depth: int, passages: bool, params: dict,
                        allowed: np.ndarray | None) -> list[list[tuple[int, int, float]]]:
        """:meth:`dense_rankings` with ``params`` checked already."""
        rows = None
        n = self.dense.ntotal
        if allowed is not None:
            rows = np.flatnonzero(allowed[self.idmap.doc_of_row])
            n = len(rows)
            depth = min(depth, n if passages else int(allowed.sum()))
        fetch = depth if passages else min(n, max(4 * depth, 64))
        out: list = [None] * len(vecs)
        todo = list(range(len(vecs)))
        while todo:
            scores, found = self._search_vectors(vecs[todo], fetch, rows, params)
            again = []
            for j, i in enumerate(todo):
                if passages:
                    out[i] = [(int(self.idmap.doc_of_row[r]), int(r), float(s))
                              for s, r in zip(scores[j], found[j]) if r >= 0]
                    continue
                docs = best_per_document(scores[j], found[j], self.idmap.doc_of_row, depth)
                out[i] = docs
                if len(docs) < min(depth, self.documents) and fetch < n:
                    again.append(i)
            todo, fetch = again, min(n, fetch * 4)
        return out

    def dense_ranking(self, vec: np.ndarray, depth: int, passages: bool,
                      params: dict) -> list[tuple[int, int, float]]:
        """:meth:`dense_rankings` of one query vector."""
        return self.dense_rankings(vec[None, :], depth, passages, params)[0]

    @property
    def lexical_unit(self) -> str:
        return self.manifest.lexical.unit if self.manifest.lexical else "passage"

    def lexical_ranking(self, query: str, depth: int, passages: bool,
                        allowed: np.ndarray | None = None,
                        pick_passages: bool = True) -> list[tuple[int, int, float]]:
        """(document, passage row, score), best first, of the documents with a query word
        (only ``allowed`` ones, if given). With whole-document BM25 rows, each document's
        passage is the one holding the most distinct query words (``pick_passages=False``:
        row -1, chosen later by :meth:`_with_passages` for the hits that are kept)."""
        scores = self.lexical.scores(query)
        if allowed is not None:
            keep = allowed if self.lexical_unit == "document" else allowed[self.idmap.doc_of_row]
            scores = np.where(keep, scores, 0.0).astype(scores.dtype)
        order = np.argsort(-scores, kind="stable")
        order = order[scores[order] > 0]
        if self.lexical_unit == "passage":
            if passages:
                return [(int(self.idmap.doc_of_row[r]), int(r), float(scores[r]))
                        for r in order[:depth]]
            # all matching passages: the best `depth` documents may need more than `depth` rows
            return best_per_document(scores[order], order, self.idmap.doc_of_row, depth)
        ranked = [(int(d), -1, float(scores[d])) for d in order[:depth]]
        return self._with_passages(ranked, query) if pick_passages else ranked

    def _with_passages(self, ranked: list[tuple[int, int, float]],
                       query: str) -> list[tuple[int, int, float]]:
        """``ranked`` with each unchosen passage (row -1) chosen for its document."""
        return [(d, self._passage_for(d, query) if r < 0 else r, s) for d, r, s in ranked]

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

    def document_ids(self) -> list:
        """The ids of the documents this version holds (deleted ones left out), in index order."""
        ids = self.idmap.document_ids()
        return ids if self.live is None else [i for i, alive in zip(ids, self.live) if alive]


#: Re-exported from their own modules (tpsearch 0.4 kept them here).
__all__ = ["Searcher", "SearchRequest", "Hit", "IdMap", "check_encoder", "encoder_mismatches",
           "clean_text", "query_list", "read_vector", "FUSION_DEPTH"]

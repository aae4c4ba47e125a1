"""What each endpoint does, apart from HTTP: choosing the index, checking limits, batching
queries into the encoder, searching, embedding, writing and reloading. Raises
:class:`~tpsearch.serve.schemas.ApiError` for answers other than 200."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field

import numpy as np
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..errors import InputError, TPSearchError
from ..queries import clean_text
from .batcher import Overloaded
from .config import ServeConfig
from .metrics import Metrics
from .registry import Registry, Served
from .schemas import ApiError, EmbeddingsBody, SearchBody


@dataclass
class Handlers:
    """The server's state (the served indexes, limits, metrics, whether the models loaded)
    and the work behind each endpoint."""

    registry: Registry
    config: ServeConfig
    metrics: Metrics
    load_error: str | None = None
    write_locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def served(self, name: str | None) -> Served:
        if not self.registry.ready:
            raise ApiError(503, "the models are still loading" if not self.load_error
                           else f"the models failed to load: {self.load_error}",
                           "unavailable", headers={"Retry-After": "5"})
        if name is None:
            s = self.registry.default()
            if s is None:
                raise ApiError(422, f"name the index: one of {', '.join(self.registry.names())}",
                               param="index")
            return s
        s = self.registry.get(name)
        if s is None:
            raise ApiError(404, f"no index named {name[:64]!r}; serving "
                           f"{', '.join(self.registry.names())}", "not_found_error", param="index")
        return s

    def texts_of(self, value: str | list[str], field: str) -> list[str]:
        # clean_text: a JSON-escaped lone surrogate becomes '?' here, before the tokenizer,
        # the response or the log sees it
        items = [clean_text(v) for v in ([value] if isinstance(value, str) else list(value))]
        if not items:
            raise ApiError(422, f"{field}: give at least one text", param=field)
        if len(items) > self.config.max_queries:
            raise ApiError(422, f"{field}: {len(items)} texts, at most {self.config.max_queries} "
                           "a request", param=field)
        for i, t in enumerate(items):
            if len(t) > self.config.max_query_chars:
                where = field if isinstance(value, str) else f"{field}.{i}"
                raise ApiError(422, f"{where}: {len(t)} characters, at most "
                               f"{self.config.max_query_chars}", param=where)
        return items

    async def encode(self, s: Served, texts: list[str]) -> np.ndarray:
        try:
            return await s.batcher.submit(texts)
        except Overloaded as exc:
            self.metrics.overloaded(s.name)
            raise ApiError(503, f"overloaded ({exc}); retry shortly", "overloaded",
                           headers={"Retry-After": "1"}) from None

    async def search(self, s: Served, body: SearchBody, info: dict) -> dict:
        queries = self.texts_of(body.query, "query")
        if not 1 <= body.k <= self.config.max_k:
            raise ApiError(422, f"k: must lie in 1..{self.config.max_k}, got {body.k}", param="k")
        if not 0 <= body.rerank <= self.config.max_rerank:
            raise ApiError(422, f"rerank: must lie in 0..{self.config.max_rerank} (the server's "
                           "--max-rerank)", param="rerank")
        if body.rerank and s.searcher.idmap.texts is None:
            raise ApiError(422, "rerank: this index keeps no passage texts", param="rerank")
        params = {k: v for k, v in (body.params.model_dump() if body.params else {}).items()
                  if v is not None}
        info.update(index=s.name, version=s.version, queries=len(queries))
        info["queries_text"] = queries
        try:  # checked once, before encoding: mode, k, parameters, rerank, the filter
            req = s.searcher.prepare(queries, k=body.k, mode=body.mode, passages=body.passages,
                                     filter=body.filter, rerank=body.rerank, **params)
        except InputError as exc:
            raise ApiError(422, str(exc), param=exc.param) from None
        vectors = await self.encode(s, req.queries) if req.mode != "lexical" else None
        try:
            hits = await run_in_threadpool(s.searcher.run, req, vectors)
        except InputError as exc:
            raise ApiError(422, str(exc), param=exc.param) from None
        results = [{"query": q, "hits": [h.to_dict() for h in hs]} for q, hs in zip(queries, hits)]
        out = {"index": s.name, "version": s.version, "mode": req.mode, "results": results}
        if isinstance(body.query, str):
            out["hits"] = results[0]["hits"]
        return out

    async def embeddings(self, body: EmbeddingsBody, info: dict) -> dict:
        """OpenAI's embeddings answer: the index's query vectors."""
        s = self.served(body.model)
        texts = self.texts_of(body.input, "input")
        if body.dimensions is not None and body.dimensions != s.searcher.manifest.dim:
            raise ApiError(422, f"dimensions: this index's vectors have "
                           f"{s.searcher.manifest.dim}", param="dimensions")
        info.update(index=s.name, version=s.version, queries=len(texts))
        vectors = await self.encode(s, texts)
        tokens = sum(s.searcher.query_encoder.count_tokens(texts))
        data = []
        for i, v in enumerate(vectors):
            v = np.ascontiguousarray(v, dtype="<f4")
            emb = (base64.b64encode(v.tobytes()).decode("ascii")
                   if body.encoding_format == "base64" else v.tolist())
            data.append({"object": "embedding", "index": i, "embedding": emb})
        return {"object": "list", "data": data, "model": s.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


    async def write(self, name: str, change) -> dict:
        """Commit ``change(writer)`` to the index ``name`` (one write at a time per index, the
        served model reused), then serve the new version before answering."""
        if not self.config.allow_writes:
            raise ApiError(403, "this server does not accept writes (start it with "
                           "--allow-writes and an API key)", "permission_error")
        s = self.served(name)
        lock = self.write_locks.setdefault(s.name, asyncio.Lock())
        async with lock:
            def commit():
                from ..index_writer import IndexWriter

                with IndexWriter(s.searcher.directory, encoder=s.searcher.encoder,
                                 wait=self.config.timeout_s) as writer:
                    change(writer)
                    return writer.commit()

            try:
                result = await run_in_threadpool(commit)
            except TPSearchError as exc:
                raise ApiError(400, str(exc), param=getattr(exc, "param", None)) from None
            if result is not None:
                await self.registry.reload(s.name)
        m = result.manifest if result is not None else self.registry.get(s.name).searcher.manifest
        u = m.update if result is not None else None
        return {"index": s.name, "version": self.registry.get(s.name).version,
                "documents": m.documents,
                "added": u.added if u else 0, "changed": u.changed if u else 0,
                "removed": u.removed if u else 0}

    async def reload(self, index: str | None) -> JSONResponse:
        """Swap the named index (or all) to its current version; 409 if one is refused."""
        names = [self.served(index).name] if index else self.registry.names()
        results, refused = [], False
        for name in names:
            swapped, was_refused, message = await self.registry.reload(name)
            refused |= was_refused
            results.append({"index": name, "swapped": swapped, "message": message,
                            "version": self.registry.get(name).version})
        return JSONResponse({"results": results}, 409 if refused else 200)

"""The HTTP API: a thin layer over :class:`~tpsearch.Searcher` (FastAPI on uvicorn).

Endpoints: ``POST /search`` and ``/indexes/{name}/search``; ``POST /v1/embeddings`` and
``GET /v1/models`` (OpenAI-compatible); ``GET /healthz``, ``/readyz``, ``/indexes``,
``/metrics``; ``POST /admin/reload``. Queries of concurrent requests are encoded together
(:mod:`tpsearch.serve.batcher`); the search itself runs on a worker thread, outside the
encoder. Errors are JSON in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import signal
import time
from contextlib import asynccontextmanager
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.concurrency import run_in_threadpool

from ..version import __version__
from ..errors import InputError, TPSearchError
from ..fusion import MODES
from ..queries import clean_text
from .batcher import Overloaded
from .config import ServeConfig
from .limits import BodyLimit
from .metrics import Metrics
from .registry import Registry, Served

access = logging.getLogger("tpsearch.serve.access")


class ApiError(Exception):
    """An error answered as JSON with ``status``."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param
        self.headers = headers or {}


def error_body(message: str, kind: str, param: str | None = None, code: Any = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchParams(_Strict):
    efSearch: StrictInt | None = None
    nprobe: StrictInt | None = None


class SearchBody(_Strict):
    """A search request: one query or a list, answered with one hit list each."""

    query: str | list[str]
    k: StrictInt = 10  # strict: true is not 1
    mode: Literal[MODES] | None = None  # type: ignore[valid-type]  # fusion.MODES
    passages: StrictBool = False
    params: SearchParams | None = None
    filter: dict[str, Any] | None = None  # on metadata columns (tpsearch.filters)
    rerank: StrictInt = 0  # re-score the best N with the decoder (at most --max-rerank)
    index: str | None = None  # POST /search only: which index (default: the only one)


class EmbeddingsBody(BaseModel):
    """OpenAI's embeddings request (``user`` and unknown fields are accepted and ignored)."""

    model_config = ConfigDict(extra="allow")
    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = None


class UpsertBody(_Strict):
    """Documents to add or replace by id: each a mapping with the index's id, text, title and
    metadata columns."""

    documents: list[dict[str, Any]]


class DeleteBody(_Strict):
    """Ids of documents to delete."""

    ids: list[StrictInt | str]


def create_app(registry: Registry, config: ServeConfig) -> FastAPI:
    """The application serving ``registry``'s indexes (opened already; their models load in
    the background after start-up, and /readyz answers 200 once they have)."""
    config.check()
    metrics = Metrics()
    registry.on_batch = metrics.observe_batch
    state: dict[str, Any] = {"load_error": None}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async def load() -> None:
            try:
                await run_in_threadpool(registry.load_models)
            except Exception as exc:  # reported by /readyz and the log, the process stays up
                state["load_error"] = f"{type(exc).__name__}: {exc}"
                logging.getLogger("tpsearch.serve").error("loading the models failed: %s", exc)

        loader = asyncio.get_running_loop().create_task(load())
        watcher = (asyncio.get_running_loop().create_task(registry.watch())
                   if config.watch_seconds > 0 else None)
        try:
            yield
        finally:
            for task in (loader, watcher):
                if task is not None:
                    task.cancel()
            await registry.close()

    app = FastAPI(title="tpsearch", version=__version__, lifespan=lifespan,
                  docs_url="/docs", redoc_url=None)

    # ------------------------------------------------------------------ errors
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse(error_body(exc.message, exc.kind, exc.param), exc.status, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        # Starlette's own answers (404 for an unknown path, 405, a body it cannot parse) in
        # the same shape as every other error.
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), kind), exc.status_code,
                            getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
        param = ".".join(loc) or None
        return JSONResponse(error_body(f"{param or 'body'}: {first.get('msg')}",
                                       "invalid_request_error", param), 422)

    # ------------------------------------------------------------------ middleware
    @app.middleware("http")
    async def log_and_guard(request: Request, call_next):
        started = time.perf_counter()
        info: dict = {}
        request.scope["tpsearch"] = info
        path = request.url.path
        if config.api_key and path != "/healthz" and not _authorised(request, config.api_key):
            response = JSONResponse(error_body("missing or wrong API key (Authorization: "
                                               "Bearer KEY)", "authentication_error"), 401,
                                    {"WWW-Authenticate": "Bearer"})
        else:
            try:
                response = await asyncio.wait_for(call_next(request), config.timeout_s)
            except asyncio.TimeoutError:
                response = JSONResponse(error_body(f"the request took longer than "
                                                   f"{config.timeout_s:g} s", "timeout"), 504)
            except Exception as exc:  # a bug: logged with its traceback, counted, answered 500
                logging.getLogger("tpsearch.serve").exception(
                    "%s %s failed: %s: %s", request.method, path, type(exc).__name__, exc)
                response = JSONResponse(error_body(f"internal error ({type(exc).__name__}); "
                                                   "the server log has the cause", "server_error"),
                                        500)
        seconds = time.perf_counter() - started
        route = request.scope.get("route")
        endpoint = getattr(route, "path", None) or "other"
        metrics.observe_request(endpoint, response.status_code, seconds)
        line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "method": request.method,
                "path": path, "status": response.status_code, "ms": round(seconds * 1000, 2),
                **{k: v for k, v in info.items() if k != "queries_text"}}
        if config.log_queries and "queries_text" in info:
            line["queries_text"] = info["queries_text"]
        access.info(json.dumps(line, ensure_ascii=False))
        return response

    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    if config.cors_origin:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origin),
                           allow_methods=["GET", "POST"], allow_headers=["*"])

    # ------------------------------------------------------------------ helpers
    def served(name: str | None) -> Served:
        if not registry.ready:
            raise ApiError(503, "the models are still loading" if not state["load_error"]
                           else f"the models failed to load: {state['load_error']}",
                           "unavailable", headers={"Retry-After": "5"})
        if name is None:
            s = registry.default()
            if s is None:
                raise ApiError(422, f"name the index: one of {', '.join(registry.names())}",
                               param="index")
            return s
        s = registry.get(name)
        if s is None:
            raise ApiError(404, f"no index named {name[:64]!r}; serving "
                           f"{', '.join(registry.names())}", "not_found_error", param="index")
        return s

    def texts_of(value: str | list[str], field: str) -> list[str]:
        # clean_text: a JSON-escaped lone surrogate becomes '?' here, before the tokenizer,
        # the response or the log sees it
        items = [clean_text(v) for v in ([value] if isinstance(value, str) else list(value))]
        if not items:
            raise ApiError(422, f"{field}: give at least one text", param=field)
        if len(items) > config.max_queries:
            raise ApiError(422, f"{field}: {len(items)} texts, at most {config.max_queries} "
                           "a request", param=field)
        for i, t in enumerate(items):
            if len(t) > config.max_query_chars:
                where = field if isinstance(value, str) else f"{field}.{i}"
                raise ApiError(422, f"{where}: {len(t)} characters, at most "
                               f"{config.max_query_chars}", param=where)
        return items

    async def encode(s: Served, texts: list[str]) -> np.ndarray:
        try:
            return await s.batcher.submit(texts)
        except Overloaded as exc:
            metrics.overloaded(s.name)
            raise ApiError(503, f"overloaded ({exc}); retry shortly", "overloaded",
                           headers={"Retry-After": "1"}) from None

    async def search(s: Served, body: SearchBody, request: Request) -> dict:
        queries = texts_of(body.query, "query")
        if not 1 <= body.k <= config.max_k:
            raise ApiError(422, f"k: must lie in 1..{config.max_k}, got {body.k}", param="k")
        if not 0 <= body.rerank <= config.max_rerank:
            raise ApiError(422, f"rerank: must lie in 0..{config.max_rerank} (the server's "
                           "--max-rerank)", param="rerank")
        if body.rerank and s.searcher.idmap.texts is None:
            raise ApiError(422, "rerank: this index keeps no passage texts", param="rerank")
        params = {k: v for k, v in (body.params.model_dump() if body.params else {}).items()
                  if v is not None}
        info = request.scope["tpsearch"]
        info.update(index=s.name, version=s.version, queries=len(queries))
        info["queries_text"] = queries
        try:  # checked once, before encoding: mode, k, parameters, rerank, the filter
            req = s.searcher.prepare(queries, k=body.k, mode=body.mode, passages=body.passages,
                                     filter=body.filter, rerank=body.rerank, **params)
        except InputError as exc:
            raise ApiError(422, str(exc), param=exc.param) from None
        vectors = await encode(s, req.queries) if req.mode != "lexical" else None
        try:
            hits = await run_in_threadpool(s.searcher.run, req, vectors)
        except InputError as exc:
            raise ApiError(422, str(exc), param=exc.param) from None
        results = [{"query": q, "hits": [h.to_dict() for h in hs]} for q, hs in zip(queries, hits)]
        out = {"index": s.name, "version": s.version, "mode": req.mode, "results": results}
        if isinstance(body.query, str):
            out["hits"] = results[0]["hits"]
        return out

    # ------------------------------------------------------------------ routes
    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        if registry.ready:
            return {"status": "ready", "indexes": {s.name: s.version for s in registry.all()}}
        body = {"status": "failed" if state["load_error"] else "loading",
                "error": state["load_error"]}
        return JSONResponse(body, 503, {"Retry-After": "5"})

    @app.get("/indexes")
    async def indexes():
        return {"indexes": [s.summary() for s in registry.all()]}

    @app.post("/search")
    async def search_default(body: SearchBody, request: Request):
        return await search(served(body.index), body, request)

    @app.post("/indexes/{name}/search")
    async def search_named(name: str, body: SearchBody, request: Request):
        if body.index is not None and body.index != name:
            raise ApiError(422, "index: the URL names the index already", param="index")
        return await search(served(name), body, request)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [
            {"id": s.name, "object": "model", "created": 0, "owned_by": "tpsearch"}
            for s in registry.all()]}

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingsBody, request: Request):
        s = served(body.model)
        texts = texts_of(body.input, "input")
        if body.dimensions is not None and body.dimensions != s.searcher.manifest.dim:
            raise ApiError(422, f"dimensions: this index's vectors have "
                           f"{s.searcher.manifest.dim}", param="dimensions")
        request.scope["tpsearch"].update(index=s.name, version=s.version, queries=len(texts))
        vectors = await encode(s, texts)
        tokens = sum(s.searcher.query_encoder.count_tokens(texts))
        data = []
        for i, v in enumerate(vectors):
            v = np.ascontiguousarray(v, dtype="<f4")
            emb = (base64.b64encode(v.tobytes()).decode("ascii")
                   if body.encoding_format == "base64" else v.tolist())
            data.append({"object": "embedding", "index": i, "embedding": emb})
        return {"object": "list", "data": data, "model": s.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    write_locks: dict[str, asyncio.Lock] = {}

    async def write(name: str, change) -> dict:
        """Commit ``change(writer)`` to the index ``name`` (one write at a time per index, the
        served model reused), then serve the new version before answering."""
        if not config.allow_writes:
            raise ApiError(403, "this server does not accept writes (start it with "
                           "--allow-writes and an API key)", "permission_error")
        s = served(name)
        lock = write_locks.setdefault(s.name, asyncio.Lock())
        async with lock:
            def commit():
                from ..index_writer import IndexWriter

                with IndexWriter(s.searcher.directory, encoder=s.searcher.encoder,
                                 wait=config.timeout_s) as writer:
                    change(writer)
                    return writer.commit()

            try:
                result = await run_in_threadpool(commit)
            except TPSearchError as exc:
                raise ApiError(400, str(exc), param=getattr(exc, "param", None)) from None
            if result is not None:
                await registry.reload(s.name)
        m = result.manifest if result is not None else registry.get(s.name).searcher.manifest
        u = m.update if result is not None else None
        return {"index": s.name, "version": registry.get(s.name).version,
                "documents": m.documents,
                "added": u.added if u else 0, "changed": u.changed if u else 0,
                "removed": u.removed if u else 0}

    @app.post("/indexes/{name}/documents")
    async def upsert_documents(name: str, body: UpsertBody):
        return await write(name, lambda w: w.upsert(body.documents))

    @app.post("/indexes/{name}/documents/delete")
    async def delete_documents(name: str, body: DeleteBody):
        return await write(name, lambda w: w.delete(body.ids))

    @app.post("/admin/reload")
    async def reload(index: str | None = None):
        names = [served(index).name] if index else registry.names()
        results, refused = [], False
        for name in names:
            swapped, was_refused, message = await registry.reload(name)
            refused |= was_refused
            results.append({"index": name, "swapped": swapped, "message": message,
                            "version": registry.get(name).version})
        return JSONResponse({"results": results}, 409 if refused else 200)

    @app.get("/metrics")
    async def prometheus():
        for s in registry.all():
            metrics.queue_depth(s.name, s.batcher.depth)
        return PlainTextResponse(metrics.render(), media_type=metrics.content_type)

    return app


def _authorised(request: Request, key: str) -> bool:
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(), key.encode())


def run(directories: list[str], config: ServeConfig) -> None:
    """Open the indexes (a bad directory fails here, before listening), then serve until
    SIGTERM/SIGINT: stop accepting, finish what is in flight, exit 0."""
    import uvicorn

    class GracefulServer(uvicorn.Server):
        """uvicorn's server, but a SIGTERM/SIGINT that ends in a graceful shutdown exits 0
        (uvicorn re-raises the signal after shutting down, which exits 143)."""

        def handle_exit(self, sig, frame) -> None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True  # a second Ctrl-C: stop now
            else:
                self.should_exit = True

    config.check()
    registry = Registry(config)
    registry.open_all(directories)
    app = create_app(registry, config)
    GracefulServer(uvicorn.Config(app, host=config.host, port=config.port, log_config=None,
                                  access_log=False, lifespan="on",
                                  timeout_graceful_shutdown=int(config.timeout_s) + 1)).run()


__all__ = ["create_app", "run", "ApiError", "TPSearchError"]

"""The HTTP API: a thin layer over :class:`~tpsearch.Searcher` (FastAPI on uvicorn).

Endpoints: ``POST /search`` and ``/indexes/{name}/search``; ``POST /v1/embeddings`` and
``GET /v1/models`` (OpenAI-compatible); ``GET /healthz``, ``/readyz``, ``/indexes``,
``/metrics``; ``POST /admin/reload``; with ``--allow-writes``, ``POST
/indexes/{name}/documents`` and ``/indexes/{name}/documents/delete``. Queries of concurrent
requests are encoded together (:mod:`tpsearch.serve.batcher`); the search itself runs on a
worker thread, outside the encoder. Errors are JSON in OpenAI's shape, ``{"error":
{"message", "type", "param", "code"}}``. What each endpoint does lives in
:mod:`tpsearch.serve.handlers`; this module wires HTTP to it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import signal
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.concurrency import run_in_threadpool

from ..version import __version__
from ..errors import TPSearchError
from .config import ServeConfig
from .handlers import Handlers
from .limits import BodyLimit
from .metrics import Metrics
from .registry import Registry
from .schemas import (ApiError, DeleteBody, EmbeddingsBody, SearchBody, UpsertBody,
                      error_body)

access = logging.getLogger("tpsearch.serve.access")


def create_app(registry: Registry, config: ServeConfig) -> FastAPI:
    """The application serving ``registry``'s indexes (opened already; their models load in
    the background after start-up, and /readyz answers 200 once they have)."""
    config.check()
    metrics = Metrics()
    registry.on_batch = metrics.observe_batch
    h = Handlers(registry, config, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async def load() -> None:
            try:
                await run_in_threadpool(registry.load_models)
            except Exception as exc:  # reported by /readyz and the log, the process stays up
                h.load_error = f"{type(exc).__name__}: {exc}"
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
    _install_error_handlers(app)
    _install_middleware(app, config, metrics)
    _add_routes(app, h)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    """Every error, FastAPI's and Starlette's own included, in one JSON shape."""

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


def _install_middleware(app: FastAPI, config: ServeConfig, metrics: Metrics) -> None:
    """The API key, the time limit, the 500 boundary, the request log and metrics; the body
    limit; CORS where asked."""

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


def _add_routes(app: FastAPI, h: Handlers) -> None:
    registry = h.registry

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        if registry.ready:
            return {"status": "ready", "indexes": {s.name: s.version for s in registry.all()}}
        body = {"status": "failed" if h.load_error else "loading", "error": h.load_error}
        return JSONResponse(body, 503, {"Retry-After": "5"})

    @app.get("/indexes")
    async def indexes():
        return {"indexes": [s.summary() for s in registry.all()]}

    @app.post("/search")
    async def search_default(body: SearchBody, request: Request):
        return await h.search(h.served(body.index), body, request.scope["tpsearch"])

    @app.post("/indexes/{name}/search")
    async def search_named(name: str, body: SearchBody, request: Request):
        if body.index is not None and body.index != name:
            raise ApiError(422, "index: the URL names the index already", param="index")
        return await h.search(h.served(name), body, request.scope["tpsearch"])

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [
            {"id": s.name, "object": "model", "created": 0, "owned_by": "tpsearch"}
            for s in registry.all()]}

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingsBody, request: Request):
        return await h.embeddings(body, request.scope["tpsearch"])

    @app.post("/indexes/{name}/documents")
    async def upsert_documents(name: str, body: UpsertBody):
        return await h.write(name, lambda w: w.upsert(body.documents))

    @app.post("/indexes/{name}/documents/delete")
    async def delete_documents(name: str, body: DeleteBody):
        return await h.write(name, lambda w: w.delete(body.ids))

    @app.post("/admin/reload")
    async def reload(index: str | None = None):
        return await h.reload(index)

    @app.get("/metrics")
    async def prometheus():
        for s in registry.all():
            h.metrics.queue_depth(s.name, s.batcher.depth)
        return PlainTextResponse(h.metrics.render(), media_type=h.metrics.content_type)


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

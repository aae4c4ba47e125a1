"""The server's settings, with their defaults and help (the CLI options are generated here)."""

from __future__ import annotations

from dataclasses import dataclass

from ..settings import option


@dataclass
class ServeConfig:
    """How ``tpsearch serve`` listens, batches, limits and logs."""

    host: str = option("127.0.0.1", "Address to bind (the default answers this machine only; "
                       "0.0.0.0 answers every interface: put --api-key on it). Default: {default}.")
    port: int = option(8000, "Port to listen on. Default: {default}.", type=int)
    api_key: str | None = option(None, "Require 'Authorization: Bearer KEY' on every endpoint "
                                 "but /healthz (or set TPSEARCH_API_KEY).",
                                 envvar="TPSEARCH_API_KEY", show_envvar=True)
    device: str = option("auto", "Where the query encoders run. Default: {default}.")
    max_batch: int = option(32, "Most queries encoded in one forward pass (queries of "
                            "concurrent requests are batched together). Default: {default}.",
                            type=int)
    max_wait_ms: float = option(5.0, "How long the first query of a batch waits for others, in "
                                "milliseconds (0: no wait). Default: {default}.", type=float)
    queue_size: int = option(1024, "Most queries waiting for the encoder; beyond it requests "
                             "get 503 with Retry-After. Default: {default}.", type=int)
    timeout_s: float = option(30.0, "Per-request time limit in seconds (504 after it). "
                              "Default: {default}.", type=float)
    max_body_bytes: int = option(1 << 20, "Largest request body (413 beyond). Default: "
                                 "{default}.", type=int)
    max_queries: int = option(64, "Most queries (or embedding inputs) in one request. "
                              "Default: {default}.", type=int)
    max_query_chars: int = option(8192, "Longest query or embedding input, in characters. "
                                  "Default: {default}.", type=int)
    max_k: int = option(1000, "Largest k a request may ask for. Default: {default}.", type=int)
    max_rerank: int = option(0, "Largest rerank depth a request may ask for (the decoder scores "
                             "each reranked passage: about 0.5 s each on 2 CPU cores, and it "
                             "holds the model meanwhile). Default: {default} (reranking off).",
                             type=int)
    watch_seconds: float = option(2.0, "How often to check the index directories for a new "
                                  "version (0: never; POST /admin/reload still works). "
                                  "Default: {default}.", type=float)
    cors_origin: tuple[str, ...] = option((), "Allow browser requests from this origin "
                                          "(repeatable; off by default).", multiple=True)
    allow_writes: bool = option(False, "Accept writes: POST /indexes/NAME/documents (upsert) "
                                "and POST /indexes/NAME/documents/delete, each a commit of a "
                                "new version that the server then serves. Needs --api-key. "
                                "Off by default.")
    log_queries: bool = option(False, "Put the query text in the request log lines (off by "
                               "default: queries can be private).")

    def check(self) -> None:
        from ..errors import InputError

        for name in ("max_batch", "queue_size", "max_body_bytes", "max_queries",
                     "max_query_chars", "max_k"):
            if getattr(self, name) < 1:
                raise InputError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.api_key is not None and not self.api_key.strip():
            raise InputError("the API key (--api-key or TPSEARCH_API_KEY) is set but empty: "
                             "give a key, or unset it to serve without one")
        if self.allow_writes and not self.api_key:
            raise InputError("--allow-writes needs an API key (--api-key or TPSEARCH_API_KEY): "
                             "an open server would let anyone change the index")
        if not 0 <= self.port <= 65535:
            raise InputError(f"port must lie in 0..65535, got {self.port}")
        if not 0 <= self.max_rerank <= 1000:
            raise InputError(f"max-rerank must lie in 0..1000, got {self.max_rerank}")
        if self.timeout_s <= 0 or self.max_wait_ms < 0 or self.watch_seconds < 0:
            raise InputError("timeout-s must be positive; max-wait-ms and watch-seconds >= 0")

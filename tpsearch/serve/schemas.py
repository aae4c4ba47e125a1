"""The HTTP API's request bodies and its error type (OpenAI's error shape)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt

from ..fusion import MODES


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

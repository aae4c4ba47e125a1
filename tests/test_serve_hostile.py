"""The server under hostile requests and failing republishes (findings of the hostile run
against 0.4): every error in the documented ``{"error": {...}}`` shape with the right status,
a 500 logged with its cause and counted, a reload failure that stops nothing else, and no
open server from an empty API key."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time

import pytest

httpx = pytest.importorskip("httpx", reason="the serve tests need httpx (pip install -e '.[test]')")
pytest.importorskip("fastapi", reason="tpsearch serve needs the serve extra")

from helpers import config, write_corpus  # noqa: E402
from test_serve import Server  # noqa: E402
from tpsearch import Searcher  # noqa: E402
from tpsearch.pipeline import build_index  # noqa: E402

SHAPE = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def index(built_index):
    return built_index("llama", 20, lexical=True, mode="hybrid")[0]


@pytest.fixture(scope="module")
def server(index):
    s = Server([index], "--max-body-bytes", "4096")
    s.wait_ready()
    yield s
    assert s.stop() == 0


def error_of(r, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == SHAPE, body
    return body["error"]


def test_hostile_requests_are_answered_in_the_error_shape(server):
    url = server.url + "/search"
    assert error_of(httpx.post(url, json={"query": "x", "k": True}), 422)["param"] == "k"
    assert error_of(httpx.post(url, json={"query": "x", "rerank": False}), 422)["param"] == "rerank"
    assert error_of(httpx.post(url, json={"query": "x", "passages": 1}), 422)["param"] == "passages"
    error_of(httpx.get(server.url + "/no/such/path"), 404)
    error_of(httpx.get(url), 405)
    nested = b'{"query": "x", "filter": ' + b"[" * 10000 + b"]" * 10000 + b"}"
    with httpx.Client() as c:  # over the body limit: 413 before anything parses it
        error_of(c.post(url, content=nested, headers={"content-type": "application/json"}), 413)
    deep = b'{"query": "x", "filter": {"a": ' + b"[" * 1500 + b"]" * 1500 + b"}}"
    assert len(deep) < 4096
    err = error_of(httpx.post(url, content=deep, headers={"content-type": "application/json"}), 400)
    assert "parsing" in err["message"] or "nested" in err["message"]

    def chunks():  # a streamed (chunked) body past the limit
        for _ in range(4):
            yield b" " * 2048

    err = error_of(httpx.post(url, content=chunks(), headers={"content-type": "application/json"}), 413)
    assert err["code"] == "body_too_large"


def test_a_lone_surrogate_is_answered_not_a_500(server, index):
    body = b'{"query": "river \\ud800 stone", "k": 2}'
    r = httpx.post(server.url + "/search", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["query"] == "river ? stone"
    r = httpx.post(server.url + "/v1/embeddings", content=b'{"input": ["a \\udfff b"]}',
                   headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    want = Searcher.open(index).embed_query("a ? b")
    assert r.json()["data"][0]["embedding"] == pytest.approx(want, abs=0)


def test_an_empty_api_key_refuses_to_serve(index):
    r = subprocess.run([sys.executable, "-m", "tpsearch.cli", "serve", str(index), "--port", "0"],
                       capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "TPSEARCH_API_KEY": ""})
    assert r.returncode == 1 and "set but empty" in r.stderr, r.stderr


def test_a_500_is_logged_with_its_cause_counted_and_shaped(index, caplog):
    from fastapi.testclient import TestClient

    from tpsearch.serve.app import create_app
    from tpsearch.serve.config import ServeConfig
    from tpsearch.serve.registry import Registry

    config = ServeConfig(device="cpu", watch_seconds=0)
    registry = Registry(config)
    registry.open_all([str(index)])
    registry.load_models()
    searcher = registry.get("index").searcher

    def broken(*a, **k):
        raise RuntimeError("a bug deep inside")

    searcher.run = broken
    with TestClient(create_app(registry, config), raise_server_exceptions=False) as client:
        deadline = time.time() + 120
        while client.get("/readyz").status_code != 200:
            assert time.time() < deadline
            time.sleep(0.05)
        with caplog.at_level(logging.ERROR, logger="tpsearch.serve"):
            r = client.post("/search", json={"query": "river", "mode": "lexical"})
        err = error_of(r, 500)
        assert err["type"] == "server_error" and "RuntimeError" in err["message"]
        assert any("a bug deep inside" in rec.getMessage() and rec.exc_info for rec in caplog.records)
        metrics = client.get("/metrics").text
        assert any('status="500"' in line and line.startswith("tpsearch_requests_total")
                   for line in metrics.splitlines()), metrics


def test_a_version_whose_model_fails_to_load_stops_no_other_swap(tmp_path, tiny_model_dir):
    from tpsearch.serve.config import ServeConfig
    from tpsearch.serve.registry import Registry

    model = tiny_model_dir("llama")
    outs = []
    for name in ("a", "b"):
        cfg = config(tmp_path, model, write_corpus(tmp_path / f"{name}.parquet", 10))
        cfg.out = str(tmp_path / name)
        outs.append(build_index(cfg).out)
    registry = Registry(ServeConfig(device="cpu", watch_seconds=0.05))
    registry.open_all([str(o) for o in outs])
    registry.load_models()
    first = {n: registry.get(n).version for n in ("a", "b")}
    a = registry.get("a").searcher

    def fails(*_a, **_k):
        raise OSError("Unable to load weights from a half-copied file")

    a.reopen = fails
    for out in outs:  # both republished
        cfg = config(tmp_path, model, write_corpus(tmp_path / "n.parquet", 12))
        cfg.out = str(out)
        build_index(cfg, overwrite=True)

    async def scenario():
        swapped, was_refused, message = await registry.reload("a")
        assert not swapped and was_refused and "refused" in message
        watcher = asyncio.get_running_loop().create_task(registry.watch())
        deadline = time.time() + 600  # generous: a busy machine must not fail it
        while registry.get("b").version == first["b"]:
            assert time.time() < deadline and not watcher.done()
            await asyncio.sleep(0.05)
        assert not watcher.done()  # it carries on for every index
        watcher.cancel()
        await registry.close()

    asyncio.run(scenario())
    assert registry.get("a").version == first["a"]  # the old version keeps serving
    assert Searcher.open(outs[1]).version == registry.get("b").version
    assert json.dumps(registry.get("b").summary())

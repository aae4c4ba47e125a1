"""`tpsearch serve`: a real server process (uvicorn) on a free port, called with httpx and the
openai client, over indexes of a tiny model."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx", reason="the serve tests need httpx (pip install -e '.[test]')")
pytest.importorskip("fastapi", reason="tpsearch serve needs the serve extra")
pytest.importorskip("uvicorn", reason="tpsearch serve needs the serve extra")

from helpers import config, corpus_texts, version_dir, write_corpus  # noqa: E402
from tpsearch import Searcher  # noqa: E402
from tpsearch.pipeline import build_index  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``tpsearch serve`` in a child process; stopped with SIGTERM."""

    def __init__(self, dirs: list[Path], *args: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(dirs[0]).parent / f"serve-{self.port}.log"
        self._log = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tpsearch.cli", "serve", *map(str, dirs), "--port",
             str(self.port), "--device", "cpu", "--watch-seconds", "0.2", *args],
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        self.headers = {}

    def wait_ready(self, headers: dict | None = None, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited: {self.log.read_text()}")
            try:
                if httpx.get(self.url + "/readyz", headers=headers or {}, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"not ready in {timeout} s: {self.log.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self._log.close()
        return code


@pytest.fixture(scope="module")
def indexes(tmp_path_factory, tiny_model_dir, built_index):
    tmp = tmp_path_factory.mktemp("serve")
    model = tiny_model_dir("llama")
    texts = corpus_texts(40)
    main, corpus = built_index("llama", 40, lexical=True, mode="hybrid")
    (tmp / "docs").mkdir()
    docs = tmp / "docs" / "other"
    other = write_corpus(tmp / "o.parquet", 10, ids=[f"o{i}" for i in range(10)],
                         texts=[f"paint brush canvas {i}." for i in range(10)])
    cfg = config(tmp, model, other)
    cfg.out = str(docs)
    build_index(cfg)
    return main, docs, texts, model, corpus


@pytest.fixture(scope="module")
def server(indexes):
    main, docs, *_ = indexes
    s = Server([main, docs], "--max-queries", "8", "--max-k", "50", "--max-query-chars", "300",
               "--max-body-bytes", "4096")
    s.wait_ready()
    yield s
    assert s.stop() == 0


def test_search_answers_as_the_searcher_does(server, indexes):
    main, _, texts, *_ = indexes
    s = Searcher.open(main)
    r = httpx.post(server.url + "/indexes/index/search", json={"query": texts[7], "k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    want = s.search(texts[7], k=3)
    assert body["index"] == "index" and body["version"] == s.version
    assert [h["id"] for h in body["hits"]] == [h.id for h in want]
    assert [h["score"] for h in body["hits"]] == pytest.approx([h.score for h in want], abs=1e-5)
    assert body["hits"][0]["text"] == texts[7]
    batch = httpx.post(server.url + "/indexes/index/search",
                       json={"query": ["river", texts[3]], "k": 2, "mode": "lexical"}).json()
    assert [r["query"] for r in batch["results"]] == ["river", texts[3]]
    assert [[h["id"] for h in r["hits"]] for r in batch["results"]] == [
        [h.id for h in hs] for hs in s.search_batch(["river", texts[3]], k=2, mode="lexical")]


def test_two_indexes_by_name_and_errors_name_the_field(server):
    r = httpx.post(server.url + "/search", json={"query": "paint", "k": 2})
    assert r.status_code == 422 and r.json()["error"]["param"] == "index"
    r = httpx.post(server.url + "/search", json={"query": "paint", "k": 2, "index": "other"})
    assert r.status_code == 200 and r.json()["hits"][0]["id"].startswith("o")
    cases = [({"query": "x", "k": 0}, "k"), ({"query": "x", "k": 51}, "k"),
             ({"query": ["x"] * 9}, "query"), ({"query": ["ok", "y" * 301]}, "query.1"),
             ({"query": []}, "query"), ({"query": "x", "mode": "fuzzy"}, "mode"),
             ({"query": "x", "bogus": 1}, "bogus"), ({"k": 3}, "query"),
             ({"query": "x", "params": {"nprobe": 4}}, "params"),
             ({"query": "x", "filter": {"lang": "en"}}, "filter")]
    for body, field in cases:
        r = httpx.post(server.url + "/indexes/index/search", json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"]["param"] == field, (body, r.json())
    r = httpx.post(server.url + "/indexes/nope/search", json={"query": "x"})
    assert r.status_code == 404 and "nope" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/indexes/index/search", content=b"{" + b" " * 5000 + b"}",
                   headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = httpx.post(server.url + "/indexes/index/search", content=b"not json",
                   headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_openai_client_embeddings_equal_embed_query(server, indexes):
    openai = pytest.importorskip("openai", reason="the openai client is a test dependency")
    main, *_ = indexes
    s = Searcher.open(main)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    got = client.embeddings.create(model="index", input=["river stone", "a guitar"])  # base64
    assert [d.index for d in got.data] == [0, 1] and got.model == "index"
    for d, text in zip(got.data, ["river stone", "a guitar"]):
        np.testing.assert_allclose(d.embedding, s.embed_query(text), atol=1e-6)
    floats = client.embeddings.create(model="index", input="river stone", encoding_format="float")
    np.testing.assert_allclose(floats.data[0].embedding, s.embed_query("river stone"), atol=1e-6)
    assert floats.usage.prompt_tokens > 0
    raw = httpx.post(server.url + "/v1/embeddings", json={"model": "index", "input": "x",
                                                          "encoding_format": "base64"}).json()
    v = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(v, s.embed_query("x"), atol=1e-6)
    models = client.models.list()
    assert sorted(m.id for m in models.data) == ["index", "other"]
    r = httpx.post(server.url + "/v1/embeddings", json={"model": "index", "input": "x",
                                                        "dimensions": 3})
    assert r.status_code == 422 and r.json()["error"]["param"] == "dimensions"


def test_health_ready_indexes_and_metrics(server, indexes):
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(server.url + "/readyz").json()
    assert ready["status"] == "ready" and set(ready["indexes"]) == {"index", "other"}
    info = {i["name"]: i for i in httpx.get(server.url + "/indexes").json()["indexes"]}
    assert info["index"]["documents"] == 40 and info["other"]["documents"] == 10
    text = httpx.get(server.url + "/metrics").text
    assert 'tpsearch_requests_total{endpoint="/indexes/{name}/search",status="200"}' in text
    assert "tpsearch_batch_size_bucket" in text and "tpsearch_queue_depth" in text


def test_concurrent_requests_share_forward_passes_and_get_their_own_answers(server, indexes):
    main, _, texts, *_ = indexes
    s = Searcher.open(main)
    want = {q: [h.id for h in s.search(q, k=3, mode="dense")] for q in texts[:24]}
    before = _batches(server)
    got, errors = {}, []

    def client(qs):
        with httpx.Client(timeout=60) as c:
            for q in qs:
                r = c.post(server.url + "/indexes/index/search", json={"query": q, "k": 3,
                                                                      "mode": "dense"})
                if r.status_code != 200:
                    errors.append(r.text)
                    continue
                body = r.json()
                got[q] = (body["results"][0]["query"], [h["id"] for h in body["hits"]])

    threads = [threading.Thread(target=client, args=(texts[i:24:8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert {q: ids for q, (echo, ids) in got.items() if echo == q} == want
    count, total = _batches(server)[0] - before[0], _batches(server)[1] - before[1]
    assert total == 24 and count < 24  # some forward passes served several requests


def _batches(server) -> tuple[float, float]:
    text = httpx.get(server.url + "/metrics").text
    count = sum(float(line.split()[-1]) for line in text.splitlines()
                if line.startswith('tpsearch_batch_size_count{index="index"}'))
    total = sum(float(line.split()[-1]) for line in text.splitlines()
                if line.startswith('tpsearch_batch_size_sum{index="index"}'))
    return count, total


def test_api_key_is_required_when_set(indexes):
    main, *_ = indexes
    s = Server([main], env={"TPSEARCH_API_KEY": "sesame"})
    try:
        s.wait_ready(headers={"Authorization": "Bearer sesame"})
        assert httpx.get(s.url + "/healthz").status_code == 200  # liveness needs no key
        r = httpx.post(s.url + "/search", json={"query": "river"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = httpx.post(s.url + "/search", json={"query": "river"},
                       headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        r = httpx.post(s.url + "/search", json={"query": "river", "k": 2},
                       headers={"Authorization": "Bearer sesame"})
        assert r.status_code == 200 and len(r.json()["hits"]) == 2
    finally:
        assert s.stop() == 0
    log = [json.loads(line) for line in s.log.read_text().splitlines() if line.startswith("{")]
    requests = [x for x in log if "status" in x]
    assert requests and all("queries_text" not in x for x in requests)  # no query text logged
    assert any(x["path"] == "/search" and x["status"] == 200 and x["queries"] == 1 for x in requests)


def test_a_republished_index_is_swapped_in_and_a_damaged_one_refused(tmp_path, indexes):
    main, _, texts, model, corpus = indexes
    out = tmp_path / "live"
    cfg = config(tmp_path, model, corpus, lexical=True, mode="hybrid")
    cfg.out = str(out)
    first = build_index(cfg).manifest.version
    s = Server([out])
    try:
        s.wait_ready()
        assert httpx.post(s.url + "/search", json={"query": "river"}).json()["version"] == first
        new_corpus = write_corpus(tmp_path / "n.parquet", 12, ids=[f"n{i}" for i in range(12)],
                                  texts=[f"quartz crystal {i}." for i in range(12)])
        cfg.corpus = str(new_corpus)
        second = build_index(cfg, overwrite=True).manifest.version
        deadline = time.time() + 30  # the watcher polls every 0.2 s
        while httpx.post(s.url + "/search", json={"query": "x"}).json()["version"] != second:
            assert time.time() < deadline, s.log.read_text()
            time.sleep(0.1)
        hits = httpx.post(s.url + "/search", json={"query": "quartz", "k": 3,
                                                   "mode": "lexical"}).json()["hits"]
        assert [h["id"][0] for h in hits] == ["n"] * 3
        cfg.corpus = str(corpus)
        third = build_index(cfg, overwrite=True).manifest.version
        (version_dir(out) / "ids.parquet").write_bytes(b"damaged")
        r = httpx.post(s.url + "/admin/reload")
        assert r.status_code == 409, r.text
        assert "refused" in r.json()["results"][0]["message"] and third not in r.json()["results"][0]["version"]
        body = httpx.post(s.url + "/search", json={"query": "quartz", "k": 1}).json()
        assert body["version"] == second and body["hits"][0]["id"].startswith("n")
    finally:
        assert s.stop() == 0
    assert "refused" in s.log.read_text()


def test_a_bad_directory_fails_before_listening(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tpsearch.cli", "serve", str(tmp_path / "nope")],
                       capture_output=True, timeout=120)
    assert r.returncode == 1 and b"no such index directory" in r.stderr
    assert b"Traceback" not in r.stderr


def test_a_filter_restricts_served_searches(tmp_path, indexes):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, _, texts, model, _ = indexes
    corpus = tmp_path / "m.parquet"
    pq.write_table(pa.table({"id": [f"m{i}" for i in range(20)], "text": texts[:20],
                             "lang": ["en" if i % 2 else "de" for i in range(20)]}), corpus)
    cfg = config(tmp_path, model, corpus, lexical=True, mode="hybrid", metadata_columns="lang")
    cfg.out = str(tmp_path / "meta")
    out = build_index(cfg).out
    s = Server([out])
    try:
        s.wait_ready()
        r = httpx.post(s.url + "/search", json={"query": texts[3], "k": 5, "filter": {"lang": "de"}})
        assert r.status_code == 200, r.text
        hits = r.json()["hits"]
        assert len(hits) == 5 and all(int(h["id"][1:]) % 2 == 0 for h in hits)
        want = Searcher.open(out).search(texts[3], k=5, filter={"lang": "de"})
        assert [h["id"] for h in hits] == [h.id for h in want]
        r = httpx.post(s.url + "/search", json={"query": "x", "filter": {"lang": {"$gt": 1}}})
        assert r.status_code == 422 and r.json()["error"]["param"] == "filter"
    finally:
        assert s.stop() == 0


def test_rerank_is_off_unless_the_server_allows_it(tmp_path, indexes, tiny_model_dir):
    """Reranking is refused (naming the field) unless --max-rerank allows the depth; then the
    served answer is the Searcher's reranked one."""
    _, _, texts, _, corpus = indexes
    tied = tiny_model_dir("gpt2")  # tied embeddings: it can rerank
    cfg = config(tmp_path, tied, corpus, lexical=True, mode="hybrid")
    cfg.out = str(tmp_path / "tied")
    out = build_index(cfg).out
    s = Server([out], "--max-rerank", "8")
    try:
        s.wait_ready()
        r = httpx.post(s.url + "/search", json={"query": texts[5], "k": 4, "rerank": 6})
        assert r.status_code == 200, r.text
        want = Searcher.open(out).search(texts[5], k=4, rerank=6)
        assert [h["id"] for h in r.json()["hits"]] == [h.id for h in want]
        assert [h["score"] for h in r.json()["hits"]] == pytest.approx([h.score for h in want],
                                                                       abs=1e-5)
        r = httpx.post(s.url + "/search", json={"query": "x", "rerank": 9})
        assert r.status_code == 422 and r.json()["error"]["param"] == "rerank"
    finally:
        assert s.stop() == 0


def test_rerank_is_refused_by_default(server):
    r = httpx.post(server.url + "/indexes/index/search", json={"query": "x", "rerank": 3})
    assert r.status_code == 422 and "max-rerank" in r.json()["error"]["message"]


def test_writes_need_the_flag_and_the_key_and_are_served_at_once(tmp_path, indexes):
    import shutil

    main, *_ = indexes
    index = tmp_path / "writable"
    shutil.copytree(main, index)
    key = {"Authorization": "Bearer sesame"}
    doc = {"documents": [{"id": "w1", "text": "a written document about volcanoes and lava."}]}
    closed = Server([index], env={"TPSEARCH_API_KEY": "sesame"})  # a key, no --allow-writes
    try:
        closed.wait_ready(headers=key)
        r = httpx.post(closed.url + "/indexes/writable/documents", json=doc, headers=key)
        assert r.status_code == 403 and "allow-writes" in r.json()["error"]["message"]
    finally:
        assert closed.stop() == 0
    no_key = subprocess.run([sys.executable, "-m", "tpsearch.cli", "serve", str(index),
                             "--allow-writes"], capture_output=True, text=True, timeout=120)
    assert no_key.returncode != 0 and "needs an API key" in no_key.stderr
    s = Server([index], "--allow-writes", env={"TPSEARCH_API_KEY": "sesame"})
    try:
        s.wait_ready(headers=key)
        assert httpx.post(s.url + "/indexes/writable/documents", json=doc).status_code == 401
        r = httpx.post(s.url + "/indexes/writable/documents", json=doc, headers=key, timeout=120)
        assert r.status_code == 200 and r.json()["added"] == 1, r.text
        r = httpx.post(s.url + "/indexes/writable/documents/delete",
                       json={"ids": ["doc-3"]}, headers=key, timeout=120)
        assert r.status_code == 200 and r.json()["removed"] == 1
        bad = httpx.post(s.url + "/indexes/writable/documents", headers=key, timeout=60,
                         json={"documents": [{"id": "w2", "text": ""}]})
        assert bad.status_code == 400 and "w2" in bad.json()["error"]["message"]
        body = {"query": "volcanoes and lava", "k": 5, "mode": "hybrid"}
        served = httpx.post(s.url + "/indexes/writable/search", json=body, headers=key).json()
        local = Searcher.open(index).search("volcanoes and lava", k=5, mode="hybrid")
        assert [h["id"] for h in served["hits"]] == [h.id for h in local]
        assert served["hits"][0]["id"] == "w1"
        assert served["version"] == Searcher.open(index).version
    finally:
        assert s.stop() == 0

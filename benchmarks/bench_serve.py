"""Load on a real `tpsearch serve` process, with a real HTTP client (httpx), side by side:

* in-process ``Searcher.search``, one query at a time (the floor: no HTTP at all);
* the server with micro-batching (``--max-batch 32``) and without (``--max-batch 1``: one
  query per forward pass, one-at-a-time serving), at 1, 8 and 32 concurrent clients:
  queries/s, p50 and p99 latency;
* overload: 256 clients against a queue of 16 queries: 503s counted, and every 200 answer
  checked against its own query (echo and hits equal to in-process search);
* a reload under load: the index is republished (a new version) and swapped while 8 clients
  search; failed requests counted.

    python benchmarks/bench_serve.py --index demo-index          # the default model (minutes)
    python benchmarks/bench_serve.py --tiny                      # a tiny random model (seconds)

Figures are printed and written as JSON (``--output``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, index: Path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The request log goes to a file: a pipe nobody reads would fill and stall the server.
        self.log = tempfile.NamedTemporaryFile(prefix="tpsearch-serve-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tpsearch.cli", "serve", str(index), "--port", str(self.port),
             "--watch-seconds", "0", *args], stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.time() + 600
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited: {Path(self.log.name).read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit("the server did not get ready in 600 s")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=120)
        self.log.close()
        os.unlink(self.log.name)
        return code


def percentiles(latencies: list[float]) -> dict:
    ms = np.asarray(latencies) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1)}


async def load(url: str, queries: list[str], clients: int, per_client: int, k: int,
               check=None) -> dict:
    """``clients`` concurrent clients, each sending ``per_client`` queries one after another."""
    latencies, statuses, wrong = [], {}, 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        async def client(c: int) -> None:
            nonlocal wrong
            for i in range(per_client):
                q = queries[(c * per_client + i) % len(queries)]
                t0 = time.perf_counter()
                try:
                    r = await http.post(url + "/search", json={"query": q, "k": k})
                    status = r.status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                latencies.append(time.perf_counter() - t0)
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200 and check is not None and not check(q, r.json()):
                    wrong += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        seconds = time.perf_counter() - t0
    ok = statuses.get(200, 0)
    return {"clients": clients, "requests": clients * per_client, "seconds": round(seconds, 2),
            "queries_per_s": round(ok / seconds, 2), **percentiles(latencies),
            "status": {str(k): v for k, v in statuses.items()}, "wrong_answers": wrong}


def bench_queries(index: Path, n: int) -> list[str]:
    """Query-like texts: the demo's example queries, then titles or first words of the
    indexed documents (from the id map)."""
    from tpsearch.layout import locate

    out = []
    demo = ROOT / "data" / "demo" / "queries.jsonl"
    if demo.is_file():
        out = [json.loads(line)["query"] for line in demo.read_text().splitlines() if line.strip()]
    texts = pq.read_table(locate(index).path / "ids.parquet").column("text").to_pylist()
    out += [" ".join(str(t).split()[:8]) for t in texts[: n * 2]]
    return list(dict.fromkeys(out))[:n]


def tiny_index(tmp: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import CORPUS
    from helpers import config, write_corpus
    from tpsearch.pipeline import build_index
    from tpsearch.testing import save_tiny_model

    model = save_tiny_model(tmp / "model", "llama", CORPUS)
    corpus = write_corpus(tmp / "c.parquet", 2000)
    cfg = config(tmp, model, corpus, lexical=True, mode="hybrid")
    cfg.out = str(tmp / "tiny-index")
    return build_index(cfg).out


def republish(index: Path) -> str:
    """A new version of ``index`` with the same files (what a rebuild publishes, minus the
    encoding): copied beside, then swapped in with the pointer."""
    from tpsearch.layout import locate, new_version_name, publish

    current = locate(index).path
    staging = Path(tempfile.mkdtemp(dir=index.parent, prefix=".bench-"))
    staged = staging / "v"
    shutil.copytree(current, staged)
    name = new_version_name(index)
    publish(index, staged, name, staging)
    shutil.rmtree(staging, ignore_errors=True)
    return name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--index", default="demo-index", help="Index directory to serve (copied first).")
    p.add_argument("--tiny", action="store_true", help="Build and serve a tiny random-model index.")
    p.add_argument("--queries", type=int, default=64, help="Distinct queries sent.")
    p.add_argument("--per-client", type=int, default=8, help="Queries each client sends.")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--output", default="bench-serve.json")
    args = p.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from tpsearch import Searcher
    from tpsearch.devices import cpu_features

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        if args.tiny:
            index = tiny_index(tmp)
        else:
            index = tmp / Path(args.index).name
            shutil.copytree(args.index, index)
        queries = bench_queries(index, args.queries)
        result: dict = {"index": str(args.index if not args.tiny else "tiny"), "queries": len(queries),
                        "cpu": cpu_features(), "cores": os.cpu_count()}

        s = Searcher.open(index)
        reference = {q: [h.id for h in hs] for q, hs in
                     zip(queries, s.search_batch(queries, k=args.k))}
        s.search(queries[0], k=args.k)  # warm
        latencies = []
        t0 = time.perf_counter()
        for q in queries[: max(16, args.per_client * 4)]:
            t1 = time.perf_counter()
            s.search(q, k=args.k)
            latencies.append(time.perf_counter() - t1)
        n = len(latencies)
        result["in_process"] = {"queries_per_s": round(n / (time.perf_counter() - t0), 2),
                                **percentiles(latencies)}
        print(f"in-process Searcher.search, one at a time: {result['in_process']}", flush=True)
        del s

        def check(q: str, body: dict) -> bool:
            return body["results"][0]["query"] == q and [h["id"] for h in body["hits"]] == reference[q]

        for label, extra in (("batched", ["--max-batch", "32"]), ("one_at_a_time", ["--max-batch", "1"])):
            server = Server(index, *extra)
            try:
                asyncio.run(load(server.url, queries, 2, 2, args.k))  # warm up
                rows = []
                for clients in (1, 8, 32):
                    row = asyncio.run(load(server.url, queries, clients, args.per_client, args.k, check))
                    rows.append(row)
                    print(f"{label:>14} {clients:>3} clients: {row['queries_per_s']:8.2f} q/s  "
                          f"p50 {row['p50_ms']:8.1f} ms  p99 {row['p99_ms']:8.1f} ms  "
                          f"status {row['status']}  wrong {row['wrong_answers']}", flush=True)
                result[label] = rows
            finally:
                result[f"{label}_exit_code"] = server.stop()
        b32 = result["batched"][-1]["queries_per_s"]
        o32 = result["one_at_a_time"][-1]["queries_per_s"]
        result["batching_gain_at_32_clients"] = round(b32 / o32, 2) if o32 else None
        print(f"micro-batching at 32 clients: {result['batching_gain_at_32_clients']}x one-at-a-time serving")

        server = Server(index, "--max-batch", "32", "--queue-size", "16")
        try:
            row = asyncio.run(load(server.url, queries, 256, 2, args.k, check))
            alive = httpx.get(server.url + "/healthz").status_code == 200
        finally:
            code = server.stop()
        result["overload"] = {**row, "queue_size": 16, "alive_after": alive, "exit_code": code}
        print(f"overload, 256 clients, queue 16: status {row['status']}, wrong answers "
              f"{row['wrong_answers']}, alive after: {alive}, exit code {code}", flush=True)

        server = Server(index, "--max-batch", "32")
        try:
            async def under_load() -> tuple[dict, list]:
                swaps = []

                async def swapper() -> None:
                    async with httpx.AsyncClient(timeout=120) as http:
                        for _ in range(3):
                            await asyncio.sleep(1.0)
                            name = await asyncio.to_thread(republish, index)
                            r = await http.post(server.url + "/admin/reload")
                            swaps.append((name, r.status_code, r.json()["results"][0]["version"]))

                row, _ = await asyncio.gather(load(server.url, queries, 8, args.per_client * 4,
                                                   args.k, check), swapper())
                return row, swaps

            row, swaps = asyncio.run(under_load())
        finally:
            code = server.stop()
        failed = sum(v for k, v in row["status"].items() if k != "200")
        result["reload_under_load"] = {**row, "swaps": swaps, "failed": failed, "exit_code": code}
        print(f"reload under load: {len(swaps)} swaps {[s[1] for s in swaps]}, "
              f"{row['requests']} requests, failed {failed}, wrong {row['wrong_answers']}, "
              f"exit code {code}", flush=True)
    Path(args.output).write_text(json.dumps(result, indent=1))
    print(f"figures written to {args.output}")


if __name__ == "__main__":
    main()

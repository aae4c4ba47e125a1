"""What work on the other core costs the encoder, with no interpreter lock shared.

    python benchmarks/probe_core_contention.py [--docs 8192] [--repeats 2] [--graph 1000000]

Encodes the same prepared windows (2,048 corpus rows each, tiny random llama, one torch thread)
alternately alone and beside a second *process* (so no lock is shared) that runs non-stop:

- ``alu``: a pure Python counting loop (one core's integer units, almost no memory traffic);
- ``graph``: FAISS adding random vectors (the tiny model's 64 dimensions) to an HNSW32 graph
  already holding ``--graph`` of them, one thread (what the build's prefilled graph does
  beside the encoder: random reads all over a graph larger than the caches);
- ``stream``: numpy copying a 256 MB array back and forth (memory bandwidth only).

Where ``alu`` slows the encoder, the two vCPUs share a physical core (or the host throttles),
and any work beside the encoder costs it; where only ``graph``/``stream`` do, the cost is the
memory system, and shrinking that work (not moving it) is what helps.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_build import make_corpus  # noqa: E402


def _alu(ready) -> None:
    ready.set()
    x = 0
    while True:
        x = (x + 1) & 0xFFFF


def _graph(ready, n: int) -> None:
    import faiss
    import numpy as np
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    index = faiss.IndexHNSWFlat(64, 32)
    for _ in range(0, n, 100_000):
        index.add(rng.standard_normal((100_000, 64), dtype=np.float32))
    ready.set()
    while True:
        index.add(rng.standard_normal((2048, 64), dtype=np.float32))


def _stream(ready) -> None:
    import numpy as np
    a = np.ones(32 * 1024 * 1024)
    b = np.empty_like(a)
    ready.set()
    while True:
        np.copyto(b, a)
        np.copyto(a, b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--graph", type=int, default=1_000_000,
                    help="vectors in the graph before the timed adds begin")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from tpsearch import TPEncoder
    from tpsearch.passages import PassageSettings
    from tpsearch.pipeline.mapper import ChunkEmbedder, MapperOptions, StageTimes
    from tpsearch.pipeline.reader import CorpusReader, CorpusSpec
    from tpsearch.testing import save_tiny_model

    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = make_corpus(tmp / "c.parquet", 0, 1, args.docs)
        chunks = list(CorpusReader(CorpusSpec(str(corpus), title_column="title")).chunks(2048))
        model = save_tiny_model(tmp / "tiny", "llama", chunks[0].texts[:200])
        enc = TPEncoder.from_pretrained(str(model))
        embed = ChunkEmbedder(enc, MapperOptions(256, None, False, "id", "text", PassageSettings()))
        prepared = [embed.prepare(c) for c in chunks]
        enc.encode(["warm up"] * 256, batch_size=256)

        arms = {"alone": None, "beside alu": (_alu, ()), "beside graph": (_graph, (args.graph,)),
                "beside stream": (_stream, ())}
        best: dict[str, float] = {}
        for _ in range(args.repeats):
            for name, other in arms.items():
                proc = None
                if other is not None:
                    ready = ctx.Event()
                    proc = ctx.Process(target=other[0], args=(ready, *other[1]), daemon=True)
                    proc.start()
                    ready.wait()
                    time.sleep(1)
                t0 = time.perf_counter()
                for p in prepared:
                    embed.encode(p, StageTimes())
                wall = time.perf_counter() - t0
                if proc is not None:
                    proc.kill()
                    proc.join()
                print(f"  {name:14s} wall {wall:7.2f} s", flush=True)
                best[name] = min(best.get(name, wall), wall)
        print(f"{args.docs} documents, best of {args.repeats}:")
        for name, wall in best.items():
            print(f"  {name:14s} wall {wall:7.2f} s  ({wall / best['alone']:.2f}x alone)")


if __name__ == "__main__":
    main()

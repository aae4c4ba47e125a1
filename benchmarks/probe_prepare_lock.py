"""What preparing windows in a thread costs the encoding thread (the interpreter lock).

    python benchmarks/probe_prepare_lock.py [--docs 16384] [--repeats 3]

Encodes the same prepared windows (2,048 corpus rows each, tiny random llama, one torch thread)
alternately alone, beside a thread that prepares windows non-stop (reading is done before:
passages and tokenisation, ``ChunkEmbedder.prepare``), and beside a process doing the same
(``tpsearch.pipeline.preparer``). Prints wall seconds and the encoding thread's own CPU seconds
for each: where the wall time grows and the CPU time does not, the encoding thread waited for
the lock. A build's preparer runs only a share of the time (about a tenth here), so a build
loses a share of this, not all of it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_build import make_corpus  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=16384)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from tpsearch import TPEncoder
    from tpsearch.passages import PassageSettings
    from tpsearch.pipeline.mapper import ChunkEmbedder, MapperOptions, StageTimes
    from tpsearch.pipeline.preparer import PrepareJob, prepare_in_process
    from tpsearch.pipeline.reader import CorpusReader, CorpusSpec
    from tpsearch.testing import save_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = make_corpus(tmp / "c.parquet", 0, 1, args.docs)
        spec = CorpusSpec(str(corpus), title_column="title")
        chunks = list(CorpusReader(spec).chunks(2048))
        model = save_tiny_model(tmp / "tiny", "llama", chunks[0].texts[:200])
        enc = TPEncoder.from_pretrained(str(model))
        options = MapperOptions(256, None, False, "id", "text", PassageSettings())
        embed = ChunkEmbedder(enc, options)
        prepared = [embed.prepare(c) for c in chunks]
        enc.encode(["warm up"] * 256, batch_size=256)

        def beside_thread(stop: threading.Event) -> None:
            while not stop.is_set():
                for c in chunks:
                    if stop.is_set():
                        return
                    embed.prepare(c)

        def beside_process(stop: threading.Event) -> None:  # a thread only takes the windows
            job = PrepareJob(spec, ((0, args.docs),), 2048, enc.prompter, options)
            while not stop.is_set():
                for _ in prepare_in_process(job, StageTimes()):
                    if stop.is_set():
                        return

        arms = {"alone": None, "beside a preparing thread": beside_thread,
                "beside a preparing process": beside_process}
        best: dict[str, tuple[float, float]] = {}
        for _ in range(args.repeats):
            for name, other in arms.items():
                stop = threading.Event()
                th = threading.Thread(target=other, args=(stop,), daemon=True) if other else None
                if th is not None:
                    th.start()
                    time.sleep(3)  # the process has started and is preparing
                t0, c0 = time.perf_counter(), time.thread_time()
                for p in prepared:
                    embed.encode(p, StageTimes())
                wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
                stop.set()
                if th is not None:
                    th.join()
                print(f"  {name:28s} wall {wall:7.2f} s  encoding thread CPU {cpu:7.2f} s", flush=True)
                best[name] = min(best.get(name, (wall, cpu)), (wall, cpu))
        print(f"{args.docs} documents, best of {args.repeats}:")
        for name, (wall, cpu) in best.items():
            print(f"  {name:28s} wall {wall:7.2f} s  encoding thread CPU {cpu:7.2f} s  "
                  f"({wall / best['alone'][0]:.2f}x alone)")


if __name__ == "__main__":
    main()

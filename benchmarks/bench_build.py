"""Build-pipeline benchmark: whole build vs bare encoder, and peak RSS as the corpus grows.

    python benchmarks/bench_build.py                       # full demo corpus, x1 and x10
    python benchmarks/bench_build.py --docs 200 --repeat 10
    python benchmarks/bench_build.py --tiny --synthetic 200000 --repeat 2 --batch-size 256
    python benchmarks/bench_build.py --tiny --synthetic 100000 --batch-size 256 --skip-memory --update-share 0.01

1. Throughput: the bare encoder (``TPEncoder.encode`` on the same texts, same batch size) and
   the whole build (read, tokenise, encode, write shards, assemble the index) on the same
   corpus, in the same process, alternately, after one warm-up. Prints docs/s and tokens/s of
   each and the pipeline's share of the encoder's throughput (goal >= 90%). ``--arms`` runs
   some arms only: at 1,000,000 documents run each in a process of its own (the bare
   encoder's arm tokenises every text at once, a 13 GB heap the build then inherits) and
   compare the ``--json`` files with ``benchmarks/compare_build_arms.py``.
2. With ``--update-share``: an incremental build after changing that share of the documents,
   against the full build's time (goal <= 10% for 1%).
3. Memory: peak RSS of a build in a fresh subprocess for the corpus and for the corpus repeated
   ``--repeat`` times (fresh ids), and their ratio (goal < 1.3).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo" / "stdlib_docs.parquet"


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (all its threads) and of its children
    that have ended (the build's preparing process)."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def synthetic_table(n: int, seed: int = 0) -> pa.Table:
    """``n`` short documents (12-30 words from a 5,000-word vocabulary) with titles."""
    import numpy as np

    rng = np.random.default_rng(seed)
    vocab = [f"{a}{b}" for a in ("ka", "lo", "mi", "ne", "su", "ta", "ve", "ro", "pi", "da")
             for b in range(500)]
    texts = [" ".join(vocab[j] for j in rng.integers(0, len(vocab), rng.integers(12, 31))) + "."
             for _ in range(n)]
    return pa.table({"id": [str(i) for i in range(n)], "text": texts,
                     "title": [f"Doc {i}" for i in range(n)]})


def make_corpus(path: Path, docs: int, repeat: int, synthetic: int = 0) -> Path:
    table = synthetic_table(synthetic) if synthetic else pq.read_table(DEMO)
    if docs:
        table = table.slice(0, docs)
    parts = []
    for r in range(repeat):
        ids = pa.array([f"{i}#{r}" for i in table.column("id").to_pylist()])
        parts.append(table.set_column(0, "id", ids))
    pq.write_table(pa.concat_tables(parts), path, row_group_size=1000)
    return path


def measure_update(corpus: Path, out: Path, mc, enc, share: float, full_seconds: float) -> dict:
    """Change ``share`` of the documents (new text, same id), build into the index again
    (an incremental build) and compare its time with the full build's."""
    import numpy as np

    from tpsearch.config import BuildConfig
    from tpsearch.pipeline import build_index

    table = pq.read_table(corpus)
    n = table.num_rows
    rows = np.random.default_rng(1).choice(n, max(1, int(n * share)), replace=False)
    texts = table.column("text").to_pylist()
    for r in rows:
        texts[r] = "updated " + texts[r]
    changed = corpus.with_name("changed.parquet")
    pq.write_table(table.set_column(table.schema.get_field_index("text"), "text", pa.array(texts)),
                   changed, row_group_size=1000)
    t = time.perf_counter()
    res = build_index(BuildConfig(corpus=str(changed), out=str(out), title_column="title",
                                  model=mc), encoder=enc)
    seconds = time.perf_counter() - t
    u = res.manifest.update
    print(f"  update of {len(rows)} changed documents ({share:.0%}): {seconds:.1f} s = "
          f"{seconds / full_seconds * 100:.1f}% of the full build ({full_seconds:.1f} s; goal <= "
          f"10%); encoded {res.encoded_documents}, kept {u.kept}; stages (s): "
          + ", ".join(f"{k} {v:.1f}" for k, v in res.manifest.build.stage_seconds.items()))
    return {"changed": len(rows), "seconds": seconds, "share_of_full": seconds / full_seconds,
            "encoded": res.encoded_documents, "kept": u.kept,
            "stage_seconds": res.manifest.build.stage_seconds}


def peak_rss_of_build(corpus: Path, out: Path, model: str) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of ``tpsearch build`` in a fresh process."""
    code = (
        "import resource, sys, time\n"
        "from tpsearch.config import BuildConfig, ModelConfig\n"
        "from tpsearch.pipeline import build_index\n"
        "t = time.perf_counter()\n"
        f"build_index(BuildConfig(corpus={str(corpus)!r}, out={str(out)!r}, title_column='title',"
        f" model=ModelConfig(model={model!r})))\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, time.perf_counter() - t)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    rss, secs = res.stdout.split()[-2:]
    return float(rss), float(secs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--docs", type=int, default=0, help="first N demo documents (0 = all)")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--tiny", action="store_true",
                    help="a tiny random llama (hidden 64, 6 layers) instead of --model")
    ap.add_argument("--synthetic", type=int, default=0,
                    help="a synthetic corpus of N short documents instead of the demo corpus")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--update-share", type=float, default=0.0,
                    help="then change this share of the documents and time an incremental build")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each arm (the best counts)")
    ap.add_argument("--no-serial", action="store_true",
                    help="skip the arm that makes the id map and lexical units after encoding")
    ap.add_argument("--arms", default="encoder,pipeline,serial",
                    help="which arms to run, comma-separated (encoder, pipeline, pipeline-thread, "
                         "serial; in that order within each repeat); one arm "
                         "per process keeps an arm's heap from the next (run each with --json "
                         "and compare the files)")
    ap.add_argument("--no-prefill", action="store_true",
                    help="the pipeline arm builds its HNSW graph after encoding, not while")
    ap.add_argument("--prepare", choices=("auto", "process", "thread"), default="auto",
                    help="where the pipeline arm reads, cuts and tokenises its windows: a process "
                         "of their own, a thread beside the encoder, or as a build chooses")
    ap.add_argument("--torch-threads", type=int, default=0,
                    help="torch's threads (0: its default). 1 on a 2-core machine leaves a core "
                         "free beside the encoder, as a GPU encoder leaves the CPU: what overlap "
                         "with the encoder can win there")
    args = ap.parse_args()
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)

    from tpsearch import TPEncoder
    from tpsearch.config import BuildConfig, ModelConfig
    from tpsearch.pipeline import build_index
    from tpsearch.pipeline.reader import CorpusReader, CorpusSpec, join_title

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.tiny:
            from tpsearch.testing import save_tiny_model

            sample = synthetic_table(200)
            args.model = str(save_tiny_model(tmp / "tiny", "llama", sample.column("text").to_pylist()))
        figures: dict = {"model": "tiny llama (64 x 6)" if args.tiny else args.model}
        corpus = make_corpus(tmp / "corpus.parquet", args.docs, 1, args.synthetic)
        texts = [join_title(h, t) for c in
                 CorpusReader(CorpusSpec(str(corpus), title_column="title")).chunks(10**9)
                 for h, t in zip(c.titles, c.texts)]
        mc = ModelConfig(model=args.model, batch_size=args.batch_size)
        enc = TPEncoder.from_pretrained(**mc.encoder_kwargs())
        documents = len(texts)
        wanted = set(args.arms.split(","))
        # Only the bare encoder needs every text in memory (and counting the tokens first
        # tokenises them all, a heap a build never holds); without it the build counts them.
        tokens = enc.tokenize(texts).num_tokens if "encoder" in wanted else None
        if "encoder" not in wanted:
            del texts[64:]
        enc.encode(texts[:64], batch_size=args.batch_size)  # warm-up
        # The build as it runs ("pipeline": the id map and lexical units made while encoding,
        # by the follower) and with them made after encoding ("serial"), side by side.
        from tpsearch.pipeline.runner import BuildParts
        from tpsearch.transform import FIT_SAMPLE

        where = {"auto": None, "process": True, "thread": False}[args.prepare]
        prefill_after = 0 if args.no_prefill else FIT_SAMPLE
        arms = {"pipeline": BuildParts(prefill_after=prefill_after, prepare_process=where),
                # the A/B of the preparing process: the same build, windows prepared in a thread
                "pipeline-thread": BuildParts(prefill_after=prefill_after, prepare_process=False),
                "serial": BuildParts(follow=False, prepare_process=where)}
        if args.no_serial:
            wanted.discard("serial")
        arms = {a: parts for a, parts in arms.items() if a in wanted}
        runs = {**({"encoder": []} if "encoder" in wanted else {}), **{a: [] for a in arms}}
        cores = {name: [] for name in runs}  # CPU seconds per wall second (cores kept busy)
        stages = {}
        for i in range(args.repeats):
            if "encoder" in runs:
                t, c = time.perf_counter(), cpu_seconds()
                enc.encode(texts, batch_size=args.batch_size)
                runs["encoder"].append(time.perf_counter() - t)
                cores["encoder"].append((cpu_seconds() - c) / runs["encoder"][-1])
            for arm, parts in arms.items():
                t, c = time.perf_counter(), cpu_seconds()
                res = build_index(BuildConfig(corpus=str(corpus), out=str(tmp / f"idx-{arm}{i}"),
                                              title_column="title", model=mc), encoder=enc,
                                  parts=parts)
                runs[arm].append(time.perf_counter() - t)
                cores[arm].append((cpu_seconds() - c) / runs[arm][-1])
                stages[arm] = res.manifest.build.stage_seconds
                tokens = tokens if tokens is not None else res.encoded_tokens
        import torch

        print(f"{documents} documents, {tokens} tokens (prompted), model {args.model}, "
              f"batch size {args.batch_size}, torch threads {torch.get_num_threads()} of "
              f"{os.cpu_count()} CPUs")
        for name, secs in runs.items():
            best = min(secs)
            figures[name] = {"seconds": best, "docs_per_s": documents / best, "tokens_per_s": tokens / best}
            busy = cores[name][secs.index(best)]
            figures[name]["cores_busy"] = busy
            figures[name]["runs_seconds"] = secs
            every = f"  (runs: {', '.join(f'{x:.1f}' for x in secs)} s)" if len(secs) > 1 else ""
            print(f"  {name:9s} {best:8.1f} s  {documents / best:8.2f} docs/s  {tokens / best:9.1f} "
                  f"tokens/s  {busy:.2f} cores busy{every}")
        serial = ""
        if "encoder" in runs and "pipeline" in runs:
            share = min(runs["encoder"]) / min(runs["pipeline"])
            figures["pipeline_share_of_encoder"] = share
        if "pipeline" in stages:
            figures["stage_seconds"] = stages["pipeline"]
        if "serial" in runs and "encoder" in runs:
            figures["serial_share_of_encoder"] = min(runs["encoder"]) / min(runs["serial"])
            serial = f"; serial: {figures['serial_share_of_encoder'] * 100:.1f}%"
        for arm, st in stages.items():
            print(f"  {arm} stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in st.items()))
        if "pipeline_share_of_encoder" in figures:
            print(f"  pipeline keeps {figures['pipeline_share_of_encoder'] * 100:.1f}% of the bare "
                  "encoder's throughput (goal >= 90%)" + serial)

        if args.update_share:
            figures["update"] = measure_update(corpus, tmp / "idx-pipeline0", mc, enc, args.update_share,
                                               min(runs["pipeline"]))

        if not args.skip_memory:
            big = make_corpus(tmp / "corpus_x.parquet", args.docs, args.repeat, args.synthetic)
            rss1, s1 = peak_rss_of_build(corpus, tmp / "m1", args.model)
            rssn, sn = peak_rss_of_build(big, tmp / "mn", args.model)
            figures["peak_rss_mib"] = {"x1": rss1, f"x{args.repeat}": rssn, "ratio": rssn / rss1}
            print(f"peak RSS: corpus {rss1:.0f} MiB ({s1:.0f} s), x{args.repeat} {rssn:.0f} MiB "
                  f"({sn:.0f} s), ratio {rssn / rss1:.2f} (goal < 1.3)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()

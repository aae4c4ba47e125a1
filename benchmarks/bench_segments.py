"""What a change to a large index costs, against a full build: the writer's commits and merges.

    python benchmarks/bench_segments.py --docs 100000            # tiny random llama
    python benchmarks/bench_segments.py --docs 20000 --updates 30  # a quicker look

On one machine, in one process, with a tiny random llama (hidden 64, 6 layers), synthetic short
documents with titles (bench_build's), BM25 over whole documents and the default transform:

1. a full build of ``--docs`` documents (seconds, bytes on disk: ``du`` of the directory);
2. through one :class:`tpsearch.IndexWriter` (model loaded once): add 10 documents, delete
   10 ids, then a 1% update (half replaced, half new), each as one commit with its seconds and
   the bytes the directory grew by (each against the goals: <= 1% / <= 1 s / <= 3% of the full
   build's time, <= 2% of its bytes);
3. ``--updates`` small commits (10 added, 2 deleted each) with the default merge policy: the
   segment count, search latency p50 (dense, lexical, hybrid; ``--queries`` queries, each
   timed alone, the query vectors encoded once beforehand so only search is timed) against a
   fresh one-segment build of the same live documents, and the directory's size against it;
4. a compaction (everything merged): latency and size again.

Prints a table and, with ``--json``, writes the figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_build import synthetic_table  # noqa: E402


def du(path: Path) -> int:
    """Bytes of every file under ``path`` (each inode once: hard links count once)."""
    seen, total = set(), 0
    for p in path.rglob("*"):
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def latencies(searcher, texts: list[str], vectors: np.ndarray) -> dict[str, float]:
    """p50 milliseconds of one search per query, per mode (dense gets its vector given)."""
    out = {}
    for mode in ("dense", "lexical", "hybrid"):
        times = []
        for q, v in zip(texts, vectors):
            t0 = time.perf_counter()
            searcher.search_batch([q], k=10, mode=mode,
                                  query_vectors=None if mode == "lexical" else v[None, :])
            times.append(time.perf_counter() - t0)
        out[mode] = 1000 * statistics.median(times)
    return out


def records(table: pa.Table) -> list[dict]:
    return table.to_pylist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--updates", type=int, default=100)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args()

    import tpsearch
    from tpsearch import IndexWriter, Searcher
    from tpsearch.config import BuildConfig, ModelConfig
    from tpsearch.pipeline import build_index
    from tpsearch.testing import save_tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="bench-segments-"))
    figures: dict = {"docs": args.docs, "machine": tpsearch.__version__}
    try:
        table = synthetic_table(args.docs)
        corpus = tmp / "corpus.parquet"
        pq.write_table(table, corpus)
        model = str(save_tiny_model(tmp / "tiny", "llama", table.column("text").to_pylist()[:2000]))
        mc = ModelConfig(model=model, batch_size=args.batch_size, device="cpu")

        def build(src: Path, out: Path) -> float:
            t0 = time.perf_counter()
            build_index(BuildConfig(corpus=str(src), out=str(out), title_column="title", model=mc))
            return time.perf_counter() - t0

        index = tmp / "index"
        full = build(corpus, index)
        full_bytes = du(index)
        figures["full_build"] = {"seconds": round(full, 1), "bytes": full_bytes}
        print(f"full build of {args.docs:,} documents: {full:.1f} s, {full_bytes / 2**20:.1f} MiB")

        extra = synthetic_table(args.docs // 100 + 10 * (args.updates + 2) + 10, seed=7)
        extra = extra.set_column(0, "id", pa.array([f"new-{i}" for i in range(extra.num_rows)]))
        new_rows = records(extra)
        taken = 0

        def take(n: int) -> list[dict]:
            nonlocal taken
            taken += n
            return new_rows[taken - n:taken]

        ids = table.column("id").to_pylist()
        current = {r["id"]: r for r in records(table)}  # what a fresh build must hold

        def upsert(rows: list[dict]) -> None:
            current.update({r["id"]: r for r in rows})
            w.upsert(rows)

        def delete(gone: list) -> None:
            for i in gone:
                current.pop(i, None)
            w.delete(gone)

        rng = np.random.default_rng(3)
        doomed = iter(rng.permutation(len(ids)).tolist())
        with IndexWriter(index) as w:
            w.encoder  # load the model once, outside the timings
            rows = []

            def commit(what: str, change) -> None:
                before, t0 = du(index), time.perf_counter()
                change()
                w.commit()
                seconds, grew = time.perf_counter() - t0, du(index) - before
                rows.append((what, seconds, grew))
                figures[what] = {"seconds": round(seconds, 3), "bytes_written": grew,
                                 "share_of_build_time": round(seconds / full, 5),
                                 "share_of_index_bytes": round(grew / full_bytes, 5)}

            commit("add_10", lambda: upsert(take(10)))
            commit("delete_10", lambda: delete([ids[next(doomed)] for _ in range(10)]))
            n = args.docs // 100

            def one_percent() -> None:
                changed = [dict(r, id=ids[next(doomed)]) for r in take(n // 2)]
                upsert(changed + take(n - n // 2))

            commit("update_1pct", one_percent)
            print(f"\n{'change':<14}{'seconds':>10}{'% of build':>12}{'MiB written':>13}{'% of bytes':>12}")
            for what, seconds, grew in rows:
                print(f"{what:<14}{seconds:>10.2f}{100 * seconds / full:>11.2f}%"
                      f"{grew / 2**20:>13.2f}{100 * grew / full_bytes:>11.2f}%")

            t0 = time.perf_counter()
            for _ in range(args.updates):
                upsert(take(10))
                delete([ids[next(doomed)] for _ in range(2)])
                w.commit()
            per = (time.perf_counter() - t0) / max(1, args.updates)
            segments_after = len(w.segments)
        figures["small_updates"] = {"count": args.updates, "seconds_each": round(per, 3),
                                    "segments": segments_after}
        print(f"\n{args.updates} small commits (10 added, 2 deleted each): {per:.2f} s each, "
              f"{segments_after} segments after them")

        s = Searcher.open(index)
        live = s.document_ids()
        assert sorted(live) == sorted(current), "the index lost or kept a document"
        fresh_corpus = tmp / "live.parquet"
        pq.write_table(pa.Table.from_pylist([current[i] for i in live]), fresh_corpus)
        fresh = tmp / "fresh"
        fresh_seconds = build(fresh_corpus, fresh)
        f = Searcher.open(fresh)
        queries = [t.split(".")[0] for t in table.column("text").to_pylist()[:args.queries]]
        vectors = f.encode_queries(queries)
        base = latencies(f, queries, vectors)
        after = latencies(s, queries, vectors)
        fresh_bytes = du(fresh)
        size_after = du(index)
        with IndexWriter(index) as w:
            t0 = time.perf_counter()
            w.compact()
            compact_seconds = time.perf_counter() - t0
        c = Searcher.open(index)
        merged = latencies(c, queries, vectors)
        figures["latency_ms_p50"] = {"fresh": base, "after_updates": after, "after_compact": merged}
        figures["bytes"] = {"fresh": fresh_bytes, "after_updates": size_after,
                            "after_compact": du(index)}
        figures["compact_seconds"] = round(compact_seconds, 1)
        figures["fresh_build_seconds"] = round(fresh_seconds, 1)
        print(f"\nfresh build of the {len(live):,} live documents: {fresh_seconds:.1f} s, "
              f"{fresh_bytes / 2**20:.1f} MiB; the updated index: {size_after / 2**20:.1f} MiB "
              f"({size_after / fresh_bytes:.2f}x, the replaced version's files included)")
        print(f"compaction: {compact_seconds:.1f} s, then {du(index) / 2**20:.1f} MiB "
              "(until the next publish the replaced version is kept for readers)")
        print(f"\n{'p50 ms':<10}{'fresh':>9}{'updated':>10}{'ratio':>8}{'compacted':>11}{'ratio':>8}")
        for mode in base:
            print(f"{mode:<10}{base[mode]:>9.2f}{after[mode]:>10.2f}{after[mode] / base[mode]:>8.2f}"
                  f"{merged[mode]:>11.2f}{merged[mode] / base[mode]:>8.2f}")
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Runner: the build job. Reader -> mapper -> shard writer, then the index is assembled.

Layout while building (beside the output directory ``OUT``)::

    .OUT.partial/work.json        settings the shards were made with
    .OUT.partial/shards/*.parquet one per window of ``shard_rows`` corpus rows
    .OUT.partial/final/           index, id map and manifest, renamed to OUT when complete

A build started again with the same settings skips the windows whose shard exists; with other
settings it refuses (saying what differs) unless ``fresh`` is set.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import __version__
from ..config import BuildConfig, parse_size
from ..encoder import TPEncoder
from ..errors import ConfigMismatch, InputError, TPSearchError
from ..index import apply_search_params, choose_index, exact_topk, new_index, recall_at_k, tune_search
from ..manifest import FORMAT, FORMAT_VERSION, ID_MAP_FILE, INDEX_FILE, diff_settings, write_manifest
from .distributor import Distributor
from .mapper import ChunkEmbedder, StageTimes
from .reader import CorpusReader, CorpusSpec
from .writer import complete_shards, iter_vectors, read_table, read_vectors, shard_meta, write_shard

log = logging.getLogger("tpsearch")

RECALL_QUERIES = 200
TRAIN_SAMPLE_PER_LIST = 64


@dataclass
class BuildResult:
    """What a finished build produced."""

    out: Path
    manifest: dict
    encoded_documents: int  # embedded in this run (not taken from earlier shards)
    encoded_tokens: int


def work_dir_for(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def _work_settings(config: BuildConfig, encoder: TPEncoder, fingerprint: str) -> dict:
    """What the shards depend on (the index type does not: shards can be reused for another)."""
    return {
        "encoder": encoder.settings.to_dict(),
        "weights_sha256": encoder.source.weights_sha256 if encoder.source else None,
        "corpus_fingerprint": fingerprint,
        "columns": {"text": config.text_column, "id": config.id_column, "title": config.title_column},
        "store_text": config.store_text,
        "strict": config.strict,
        "shard_rows": config.shard_rows,
    }


def _prepare_work_dir(work: Path, settings: dict, fresh: bool) -> Path:
    import json

    shards = work / "shards"
    marker = work / "work.json"
    if work.exists() and fresh:
        shutil.rmtree(work)
    if marker.is_file():
        old = json.loads(marker.read_text())
        diffs = diff_settings(old, settings)
        if diffs:
            raise ConfigMismatch(
                f"{work} holds shards of an interrupted build made with other settings ("
                + "; ".join(diffs[:4]) + "); rerun with --fresh to discard them"
            )
    shards.mkdir(parents=True, exist_ok=True)
    if not marker.is_file():
        marker.write_text(json.dumps(settings, indent=1))
    return shards


def missing_windows(num_rows: int, size: int, done: set[int]) -> list[tuple[int, int]]:
    """Runs of consecutive windows (start, stop) that have no shard yet."""
    runs: list[tuple[int, int]] = []
    for start in range(0, num_rows, size):
        if start in done:
            continue
        stop = min(start + size, num_rows)
        if runs and runs[-1][1] == start:
            runs[-1] = (runs[-1][0], stop)
        else:
            runs.append((start, stop))
    return runs


def encode_shards(
    config: BuildConfig,
    reader: CorpusReader,
    encoder: TPEncoder,
    shards_dir: Path,
    times: StageTimes,
    show_progress: bool = False,
    windows: Callable[[list[tuple[int, int]]], list[tuple[int, int]]] | None = None,
) -> tuple[int, int]:
    """Embed every window without a shard; returns (documents, tokens) encoded now."""
    done = {int(p.stem.split("-")[1]) for p in complete_shards(shards_dir)}
    runs = missing_windows(reader.num_rows, config.shard_rows, done)
    if windows is not None:
        runs = windows(runs)
    todo_rows = sum(b - a for a, b in runs)
    if done:
        log.info("resuming: %d shard(s) done, %d corpus rows left", len(done), todo_rows)
    embed = ChunkEmbedder(encoder, config.model.batch_size, config.store_text, config.strict,
                          config.id_column, config.text_column, config.model.max_batch_tokens)
    bar = None
    if show_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=todo_rows, unit="doc", desc="embedding", smoothing=0.1)
    docs = tokens = 0
    started = time.perf_counter()
    for a, b in runs:
        t_read = time.perf_counter()
        for chunk in reader.chunks(config.shard_rows, start_row=a, stop_row=b):
            times.read += time.perf_counter() - t_read
            shard = embed(chunk, times)
            t_write = time.perf_counter()
            write_shard(shards_dir, shard, reader.id_kind)
            times.write += time.perf_counter() - t_write
            docs += len(shard.rows)
            tokens += shard.tokens
            if bar is not None:
                elapsed = max(1e-9, time.perf_counter() - started)
                bar.set_postfix_str(f"{tokens / elapsed:,.0f} tok/s")
                bar.update(shard.window_rows)
            t_read = time.perf_counter()
    if bar is not None:
        bar.close()
    return docs, tokens


def _sample_rows(n: int, k: int, seed: int = 0) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=min(n, k), replace=False))


def _gather(shards: list[Path], counts: list[int], rows: np.ndarray) -> np.ndarray:
    """Vectors at global positions ``rows`` (sorted), reading one shard at a time."""
    out, offset = [], 0
    for path, n in zip(shards, counts):
        sel = rows[(rows >= offset) & (rows < offset + n)] - offset
        if len(sel):
            out.append(read_vectors(path)[sel])
        offset += n
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def assemble_index(config: BuildConfig, shards: list[Path], final: Path, times: StageTimes) -> dict:
    """Build the FAISS index and the id map from the shards; returns the index manifest part."""
    metas = [shard_meta(p) for p in shards]
    counts = [pq.ParquetFile(p).metadata.num_rows for p in shards]
    n = sum(counts)
    dim = max(m["dim"] for m in metas)
    if n == 0:
        raise InputError(f"{config.corpus}: every row has a null or empty {config.text_column!r}")
    t0 = time.perf_counter()
    plan = choose_index(config.index, n, dim, parse_size(config.max_index_memory))
    log.info("index: %s (%s)", plan.factory, plan.reason)
    index = new_index(plan, dim)
    if not index.is_trained:
        nlist = faiss.extract_index_ivf(index).nlist if "IVF" in plan.factory else 256
        sample = _gather(shards, counts, _sample_rows(n, max(nlist * TRAIN_SAMPLE_PER_LIST, 10_000)))
        log.info("training on %d vectors", len(sample))
        index.train(sample)
    writer = None
    try:
        for path in shards:
            index.add(read_vectors(path))
            table = read_table(path, config.store_text)
            table = table.rename_columns(["corpus_row" if c == "row" else c for c in table.column_names])
            if writer is None:
                writer = pq.ParquetWriter(final / ID_MAP_FILE, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    info = {"factory": plan.factory, "reason": plan.reason, "file": INDEX_FILE,
            "search_params": {}, "recall_at_10": 1.0, "recall_queries": 0}
    if not plan.is_exact:
        q_rows = _sample_rows(n, RECALL_QUERIES, seed=1)
        queries = _gather(shards, counts, q_rows)
        truth = exact_topk(queries, iter_vectors(shards), 10)
        params, recall = tune_search(index, plan, queries, truth)
        info.update(search_params=params, recall_at_10=round(recall, 4), recall_queries=len(queries))
        log.info("recall@10 against exact search on %d sampled documents: %.3f (%s)",
                 len(queries), recall, params or "default parameters")
    faiss.write_index(index, str(final / INDEX_FILE))
    times.index += time.perf_counter() - t0
    return {"index": info, "documents": n, "dim": dim,
            "skipped": sum(m["skipped"] for m in metas),
            "truncated": sum(m["truncated"] for m in metas),
            "tokens": sum(m["tokens"] for m in metas)}


def build_index(
    config: BuildConfig,
    encoder: TPEncoder | None = None,
    show_progress: bool = False,
    overwrite: bool = False,
    distributor: Distributor | None = None,
) -> BuildResult:
    """Run the whole build: validate, embed into shards, assemble, publish atomically.

    Under torchrun each rank embeds its share of the windows and rank 0 assembles; the
    result is the same as one process's. Non-zero ranks return a result without a manifest.
    """
    d = distributor or Distributor.from_env()
    d.start()
    try:
        return _build(config, encoder, show_progress and d.is_main, overwrite, d)
    finally:
        d.stop()


def _agreed(d: Distributor, step: Callable[[], object]):
    """Run ``step`` on this rank; if it fails on any rank, fail on all (no rank left waiting)."""
    error: BaseException | None = None
    value = None
    try:
        value = step()
    except Exception as exc:  # re-raised below, on every rank
        error = exc
    if not d.all_ok(error is None):
        if error is not None:
            raise error
        raise TPSearchError("the build failed on another rank; see its error")
    return value


def _build(config: BuildConfig, encoder: TPEncoder | None, show_progress: bool, overwrite: bool,
           d: Distributor) -> BuildResult:
    began = time.perf_counter()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if not config.out:
        raise InputError("no output directory given (--out)")
    out = Path(config.out).resolve()
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists; remove it, choose another --out, or pass --overwrite")
    if config.shard_rows < 1:
        raise InputError(f"shard_rows must be positive, got {config.shard_rows}")
    times = StageTimes()
    t0 = time.perf_counter()
    reader = CorpusReader(CorpusSpec(config.corpus, config.text_column, config.id_column,
                                     config.title_column))
    ids = reader.check_ids()
    fingerprint = reader.fingerprint(ids)
    del ids
    times.read += time.perf_counter() - t0
    budget = parse_size(config.max_index_memory)
    if encoder is None:
        t0 = time.perf_counter()
        kwargs = config.model.encoder_kwargs()
        kwargs["device"] = d.device(kwargs["device"])
        encoder = TPEncoder.from_pretrained(**kwargs)
        times.extra["model_load"] = time.perf_counter() - t0
    # Fail on a bad index option before any encoding.
    choose_index(config.index, reader.num_rows, encoder.dim, budget)
    work = work_dir_for(out)
    settings = _work_settings(config, encoder, fingerprint)
    # Rank 0 prepares (or discards) the work directory first; the others then check it.
    shards_dir = _agreed(d, lambda: _prepare_work_dir(work, settings, config.fresh) if d.is_main else None)
    if not d.is_main:
        shards_dir = _prepare_work_dir(work, settings, fresh=False)
    final = work / "final"
    try:
        select = (lambda runs: d.select(runs, config.shard_rows)) if d.active else None
        docs, tokens = encode_shards(config, reader, encoder, shards_dir, times, show_progress, select)
        _agreed(d, lambda: None)  # every rank has written its shards
        if not d.is_main:
            _agreed(d, lambda: None)  # wait for rank 0's assembly
            return BuildResult(out, {}, docs, tokens)
        if final.exists():
            shutil.rmtree(final)
        final.mkdir()
        # The others wait here until rank 0 has assembled the index (or failed to).
        part = _agreed(d, lambda: assemble_index(config, complete_shards(shards_dir), final, times))
    except InputError:
        # Bad data will not get better on a rerun: leave nothing behind.
        shutil.rmtree(work, ignore_errors=True)
        raise
    settings = encoder.settings.to_dict()
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tpsearch_version": __version__,
        "model": {
            "spec": encoder.settings.model,
            "path": encoder.source.path if encoder.source else None,
            "kind": encoder.source.kind if encoder.source else "object",
            "weights_sha256": encoder.source.weights_sha256 if encoder.source else None,
        },
        "encoder": settings,
        "query_prompt": config.model.query_prompt,
        "query_templates": list(encoder.variant(prompt=config.model.query_prompt).settings.templates)
        if config.model.query_prompt else None,
        "normalized": True,
        "metric": "inner_product",
        "dim": part["dim"],
        "index": part["index"],
        "id_map": ID_MAP_FILE,
        "id_type": reader.id_kind,
        "store_text": config.store_text,
        "documents": part["documents"],
        "skipped_rows": part["skipped"],
        "truncated_texts": part["truncated"],
        "tokens": part["tokens"],
        "corpus": {
            "path": config.corpus,
            "files": [str(f) for f in reader.files],
            "rows": reader.num_rows,
            "fingerprint": fingerprint,
            "text_column": config.text_column,
            "id_column": config.id_column,
            "title_column": config.title_column,
        },
        "build": {
            "started_at": started_at,
            "seconds": round(time.perf_counter() - began, 2),
            "stage_seconds": times.as_dict(),
            "encoded_now": {"documents": docs, "tokens": tokens},
            # Where this process encoded (rank 0 for sharded builds): bf16 on a GPU by default.
            "device": str(encoder.device),
            "dtype": str(encoder.dtype).removeprefix("torch."),
            "config": config.to_dict(),
        },
    }
    write_manifest(final, manifest)
    if out.exists():
        aside = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, aside)
        os.replace(final, out)
        shutil.rmtree(aside)
    else:
        os.replace(final, out)
    shutil.rmtree(work)
    return BuildResult(out, manifest, docs, tokens)

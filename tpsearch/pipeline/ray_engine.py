"""Ray engine: the same build, scheduled by Ray Data on a local Ray instance or a cluster.

Ray Data runs the build's roles as a streaming pipeline over the corpus's windows (the same
``shard_rows`` windows, so the shards, resuming and the result are the other engines'):

1. **prepare** (CPU actors, ``prepare_workers`` of them): each reads its window's Parquet row
   groups with the build's reader, checks the rows, cuts passages and tokenises; this runs in
   other processes than the encoder, so it overlaps encoding;
2. **encode** (``actors`` actors, each holding one model; ``gpus_per_actor`` GPUs each on a GPU
   cluster): embeds a prepared window and writes its shard into the work directory;
3. **assemble** (``actors`` Ray tasks): the driver fits the transform once (and trains one IVF
   quantizer), then each task turns every ``actors``-th shard into a segment, as torchrun's
   ranks do (:mod:`tpsearch.pipeline.rank_assembly`); the driver publishes the version.

The driver holds the output's lock for the whole build and loads the model too (for the
settings, the transform's query sample and the manifest). On a cluster the output directory
must be on a filesystem every node sees. A killed build leaves its finished shards; the same
command resumes.
"""

from __future__ import annotations

import math
import os
import pickle
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ..config import BuildConfig
from ..errors import InputError, TPSearchError
from ..layout import is_index_dir
from .mapper import ChunkEmbedder, MapperOptions, StageTimes
from .reader import CorpusReader, CorpusSpec
from .workdir import BuildLock, WorkDir, split_windows
from .writer import write_shard


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray engine runs."""

    address: str | None = None  # None: RAY_ADDRESS, else a local instance started here
    actors: int = 1  # encoder actors (one model each), and segments
    gpus_per_actor: float = 0.0  # 1 on a GPU cluster: one model per GPU
    cpus_per_actor: float = 1.0
    prepare_workers: int = 1  # CPU actors reading and tokenising windows

    def check(self) -> None:
        if self.actors < 1 or self.prepare_workers < 1:
            raise InputError("--ray-actors and --ray-prepare-workers must be at least 1")
        if self.gpus_per_actor < 0 or self.cpus_per_actor <= 0:
            raise InputError("--ray-gpus-per-actor must be >= 0 and cpus per actor > 0")


def _spec(config: BuildConfig) -> CorpusSpec:
    return CorpusSpec(config.corpus, config.text_column, config.id_column, config.title_column,
                      config.metadata_list())


def _mapper_options(config: BuildConfig) -> MapperOptions:
    return MapperOptions(config.model.batch_size, config.model.max_batch_tokens, config.strict,
                         config.id_column, config.text_column, config.passage_settings())


class PrepareWindow:
    """Ray Data stage 1 (a CPU actor): a window's rows read, checked, cut and tokenised."""

    def __init__(self, config: BuildConfig, prompter: bytes):
        self.config = config
        self.reader = CorpusReader(_spec(config))
        # The prompt tokenizer alone (tokenize, count_tokens, prompt_tokens): no model here.
        self.embed = ChunkEmbedder(pickle.loads(prompter), _mapper_options(config))

    def __call__(self, row: dict) -> dict:
        start, stop = int(row["start"]), int(row["stop"])
        try:
            chunks = self.reader.chunks(self.config.shard_rows, start_row=start, stop_row=stop)
            prepared = pickle.dumps([self.embed.prepare(c) for c in chunks])
        except TPSearchError as exc:  # bad input: carried to the driver as a value (Ray Data
            return {"start": start, "prepared": b"", "error": pickle.dumps(exc)}  # keeps text only)
        return {"start": start, "prepared": prepared, "error": b""}


class EncodeWindow:
    """Ray Data stage 2 (an encoder actor, one model): a prepared window embedded and written
    as its shard."""

    def __init__(self, config: BuildConfig, out: str, id_kind: str, metadata_types: dict):
        from ..encoder import TPEncoder

        self.config = config
        self.work = WorkDir(Path(out))
        self.id_kind, self.metadata_types = id_kind, metadata_types
        encoder = TPEncoder.load(config.model.encoder_options())
        self.embed = ChunkEmbedder(encoder, _mapper_options(config))

    def __call__(self, row: dict) -> dict:
        times = StageTimes()
        docs = tokens = 0
        error = row["error"]
        if not error:
            try:
                for prepared in pickle.loads(row["prepared"]):
                    shard = self.embed.encode(prepared, times)
                    write_shard(self.work.shard_path(shard.start), shard, self.id_kind,
                                self.metadata_types)
                    docs, tokens = docs + shard.encoded_documents, tokens + shard.encoded_tokens
            except TPSearchError as exc:
                error = pickle.dumps(exc)
        return {"start": int(row["start"]), "documents": docs, "tokens": tokens,
                "encode_seconds": times.encode, "error": error}


def _start_ray(options: RayOptions):
    try:
        import ray
    except ImportError as exc:
        raise InputError("--engine ray needs Ray Data: pip install 'tpsearch[ray]'") from exc
    if not ray.is_initialized():
        local = options.address is None and not os.environ.get("RAY_ADDRESS")
        # A local instance gets a logical CPU for every actor and assembly task (they share
        # the real cores), so Ray Data never waits for a CPU a 2-core machine does not have.
        need = options.prepare_workers + options.actors * options.cpus_per_actor + 1
        cpus = max(os.cpu_count() or 1, int(math.ceil(need))) if local else None
        ray.init(address=options.address, num_cpus=cpus, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    return ray


def build_with_ray(config: BuildConfig, options: RayOptions = RayOptions(),
                   show_progress: bool = False, overwrite: bool = False):
    """Build ``config``'s index with Ray (see the module's description); returns the
    :class:`~tpsearch.pipeline.runner.BuildResult`. A new index, or ``overwrite``: an
    incremental build or update goes through ``tpsearch build``/``add`` without Ray."""
    from .distributor import Distributor
    from .runner import BuildResult, _prepare_work, start_build
    from .validate import validate_build

    options.check()
    out = validate_build(config, overwrite)
    if is_index_dir(out) and not overwrite:
        raise InputError(f"{out} is an index: --engine ray builds a new index or rebuilds one "
                         "with --overwrite (add documents with tpsearch add)")
    ray = _start_ray(options)
    with BuildLock(out):
        began, times = time.perf_counter(), StageTimes()
        reader = CorpusReader(_spec(config))
        times.read += time.perf_counter() - began
        start = start_build(config, reader, Distributor(), times, out, rebuild=True)
        encoder, work = start.encoder, start.work
        _prepare_work(work, start.settings, config, reader)
        try:
            docs, tokens = _encode(ray, config, options, work, reader, encoder, times,
                                   show_progress)
            manifest = _assemble_and_publish(ray, config, options, encoder, work, times,
                                             start.query_prompt, reader, start.fingerprint,
                                             began, docs, tokens)
        except InputError:
            work.discard()  # bad data will not get better on a rerun: leave nothing behind
            raise
    return BuildResult(out, manifest, docs, tokens)


def _encode(ray, config: BuildConfig, options: RayOptions, work: WorkDir, reader: CorpusReader,
            encoder, times: StageTimes, show_progress: bool) -> tuple[int, int]:
    """Stages 1 and 2 over the windows without a shard; (documents, tokens) encoded."""
    windows = split_windows(work.missing_windows(reader.num_rows, config.shard_rows),
                            config.shard_rows)
    if not windows:
        return 0, 0
    t0 = time.perf_counter()
    ds = ray.data.from_items([{"start": a, "stop": b} for a, b in windows],
                             override_num_blocks=len(windows))
    ds = ds.map(PrepareWindow, fn_constructor_args=(config, pickle.dumps(encoder.prompter)),
                compute=ray.data.ActorPoolStrategy(size=options.prepare_workers), num_cpus=1)
    ds = ds.map(EncodeWindow, fn_constructor_args=(config, str(work.out), reader.id_kind,
                                                   reader.metadata_types),
                compute=ray.data.ActorPoolStrategy(size=options.actors),
                num_cpus=options.cpus_per_actor,
                num_gpus=options.gpus_per_actor or None)
    bar = None
    if show_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(b - a for a, b in windows), unit="doc", desc="embedding (ray)")
    docs = tokens = 0
    try:
        for row in ds.iter_rows():
            if row["error"]:
                raise pickle.loads(row["error"])
            docs, tokens = docs + int(row["documents"]), tokens + int(row["tokens"])
            times.encode += float(row["encode_seconds"])
            if bar is not None:
                start = int(row["start"])
                bar.update(min(start + config.shard_rows, reader.num_rows) - start)
    finally:
        if bar is not None:
            bar.close()
    times.extra["ray_encode_wall"] = time.perf_counter() - t0
    return docs, tokens


def _assemble_part(work_out: str, shards: list[str], opts, corpus: str, text_column: str,
                   part: int) -> None:
    """Stage 3, one Ray task: shards to this part's segment."""
    from .assembler import no_query_encoder
    from .rank_assembly import assemble_own_segment

    # the transform was fitted on the driver: kept here
    assemble_own_segment(WorkDir(Path(work_out)), [Path(s) for s in shards], opts, StageTimes(),
                         no_query_encoder, corpus, text_column, part)


def _assemble_and_publish(ray, config, options, encoder, work, times, qp, reader, fingerprint,
                          began, docs, tokens):
    from .rank_assembly import prepare_shared, shared_index, shared_transform
    from .runner import _assembly_options, _query_encoder, publish_segments

    t0 = time.perf_counter()
    shards = work.complete_shards()
    opts = _assembly_options(config, encoder, None)
    prepare_shared(work, shards, opts, _query_encoder(config, encoder, qp))
    kept = shared_transform(work)
    opts = replace(opts, keep_transform=kept, trained=shared_index(work), unembedding=None)
    parts = min(options.actors, len(shards))
    task = ray.remote(num_cpus=1)(_assemble_part)
    ray.get([task.remote(str(work.out), [str(s) for s in shards[p::parts]], opts, config.corpus,
                         config.text_column, p) for p in range(parts)])
    times.index += time.perf_counter() - t0
    return publish_segments(config, encoder, work, times, None, qp, reader, fingerprint, began,
                            docs, tokens, False, parts, kept, True)


__all__ = ["RayOptions", "build_with_ray"]

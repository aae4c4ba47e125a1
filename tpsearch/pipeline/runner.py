"""Runner: the build job as a short loop. Reader -> mapper -> writer into a work directory,
then the assembler writes the index files and the work directory is published atomically.

A build started again with the same settings skips the windows whose shard exists; with other
settings it refuses (saying what differs) unless ``fresh`` is set. Under torchrun every rank
encodes its share of the windows and rank 0 assembles.
"""

from __future__ import annotations

import errno
import logging
import queue
import shutil

import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from ..version import __version__
from ..config import BuildConfig, parse_size
from ..encoder import TPEncoder
from ..errors import ConfigMismatch, DiskError, InputError, TPSearchError, UnbuildableIndex
from ..index import choose_index
from ..layout import is_index_dir, new_version_name, read_pointer, restore_legacy_aside
from ..manifest import (BuildInfo, CorpusInfo, Manifest, ModelRef, UpdateInfo, file_digests,
                        open_manifest, write_manifest)
from ..index_encoder import encoder_mismatches
from ..transform import FIT_SAMPLE
from .assembler import Assembled, AssemblyOptions, KeptTransform, assemble, index_plan
from .distributor import Distributor
from .follower import ShardFollower
from .mapper import ChunkEmbedder, MapperOptions, StageTimes
from .prefill import GraphPrefill, fitter, spare_threads
from .preparer import PROCESS_MIN_ROWS, PrepareJob, prepare_in_process, process_available
from .reader import CorpusReader, CorpusSpec, window_digest
from .reuse import STORE_DIR, BaseStore, fill_store
from .validate import validate_build
from .workdir import BuildLock, WorkDir, shard_start
from .writer import write_shard

log = logging.getLogger("tpsearch")
#: Updates a manifest lists in ``history`` (older ones are counted in ``history_dropped``).
MAX_HISTORY = 100
#: Errors of the disk, not of the data: reported in one line, the shards kept for a resume.
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)


@dataclass(frozen=True)
class BuildParts:
    """The build's roles, as clip-retrieval's inference job has them: the reader (corpus
    windows), the mapper (passages, tokens, vectors), the writer (one shard per window), the
    assembler (shards to index files) and the distributor (which process does what). Each may
    be replaced by a part with the same call; None takes the standard one (looked up when the
    build runs)."""

    reader: Callable[[CorpusSpec], CorpusReader] | None = None
    mapper: Callable[..., ChunkEmbedder] | None = None  # (encoder, MapperOptions, base store)
    writer: Callable[..., Path] | None = None  # (path, shard, id kind, metadata types)
    assembler: Callable[..., Assembled] | None = None  # tpsearch.pipeline.assembler.assemble
    distributor: Distributor | None = None
    # Whether a one-process build makes the id map and lexical units while it encodes (the
    # follower, :mod:`tpsearch.pipeline.follower`) rather than after
    follow: bool = True
    # Passages after which a one-process build whose index is a graph fits the transform on
    # them and fills the graph while encoding goes on (:mod:`tpsearch.pipeline.prefill`);
    # 0: never (the graph is built after encoding)
    prefill_after: int = FIT_SAMPLE
    # Whether windows are read, cut and tokenised in a process of their own rather than a
    # thread beside the encoder (:mod:`tpsearch.pipeline.preparer`); None: when a fresh build
    # with the standard reader and mapper has PROCESS_MIN_ROWS corpus rows or more to encode;
    # never off POSIX (a thread there)
    prepare_process: bool | None = None

    def read(self, spec: CorpusSpec) -> CorpusReader:
        return (self.reader or CorpusReader)(spec)

    def map(self, encoder, options, base) -> ChunkEmbedder:
        return (self.mapper or ChunkEmbedder)(encoder, options, base)

    def write(self, path: Path, shard, id_kind: str, metadata_types) -> Path:
        return (self.writer or write_shard)(path, shard, id_kind, metadata_types)

    def assemble(self, *args) -> Assembled:
        return (self.assembler or assemble)(*args)


@dataclass
class BuildResult:
    """What a finished build produced (``manifest`` is None on ranks other than 0)."""

    out: Path
    manifest: Manifest | None
    encoded_documents: int  # embedded in this run (not taken from earlier shards)
    encoded_tokens: int


def work_settings(config: BuildConfig, encoder: TPEncoder, fingerprint: str) -> dict:
    """What the shards depend on (the index type, transform and lexical index do not: they are
    made at assembly, so shards can be reused for another)."""
    return {
        "encoder": encoder.settings.to_dict(),
        "weights_sha256": encoder.source.weights_sha256 if encoder.source else None,
        "definition_sha256": encoder.source.definition_sha256 if encoder.source else None,
        "corpus_fingerprint": fingerprint,
        "columns": {"text": config.text_column, "id": config.id_column, "title": config.title_column,
                    "metadata": list(config.metadata_list())},
        "passages": config.passage_settings().to_dict(),
        "strict": config.strict,
        "shard_rows": config.shard_rows,
    }


def encode_shards(config: BuildConfig, reader: CorpusReader, encoder: TPEncoder, work: WorkDir,
                  times: StageTimes, show_progress: bool = False,
                  select: Callable[[list[tuple[int, int]]], list[tuple[int, int]]] | None = None,
                  base: BaseStore | None = None, parts: BuildParts = BuildParts(),
                  on_shard: Callable[[Path], None] | None = None) -> tuple[int, int]:
    """Embed every window without a shard (documents unchanged since ``base`` take their
    stored vectors); returns (documents, tokens) encoded now. ``on_shard`` is told of each
    shard written."""
    runs = work.missing_windows(reader.num_rows, config.shard_rows)
    runs = select(runs) if select is not None else runs
    done = len(work.complete_shards())
    if done:
        log.info("resuming: %d shard(s) done, %d corpus rows left", done,
                 sum(b - a for a, b in runs))
    embed = parts.map(encoder, MapperOptions(
        config.model.batch_size, config.model.max_batch_tokens, config.strict, config.id_column,
        config.text_column, config.passage_settings()), base)
    bar = None
    if show_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(b - a for a, b in runs), unit="doc", desc="embedding", smoothing=0.1)
    docs = tokens = 0
    started = time.perf_counter()
    if _prepare_in_process(parts, base, encoder, runs, config.shard_rows):
        job = PrepareJob(reader.spec, tuple(runs), config.shard_rows, encoder.prompter, embed.o,
                         threads=_threads_beside(encoder))
        windows = prepare_in_process(job, times)
    else:
        chunks = (c for a, b in runs
                  for c in reader.chunks(config.shard_rows, start_row=a, stop_row=b))
        windows = prefetch(chunks, embed.prepare, times)
    try:
        for prepared in windows:
            shard = embed.encode(prepared, times, bar.update if bar is not None else None)
            t_write = time.perf_counter()
            path = parts.write(work.shard_path(shard.start), shard, reader.id_kind,
                               reader.metadata_types)
            times.write += time.perf_counter() - t_write
            if on_shard is not None:
                on_shard(path)
            docs, tokens = docs + shard.encoded_documents, tokens + shard.encoded_tokens
            if bar is not None:
                bar.set_postfix_str(f"{tokens / max(1e-9, time.perf_counter() - started):,.0f} tok/s")
                bar.n = round(bar.n)  # whole windows done: no float drift
                bar.refresh()
    finally:  # an error is reported on a line of its own, after the bar
        if bar is not None:
            bar.close()
    return docs, tokens


def _threads_beside(encoder: TPEncoder) -> int:
    """Threads for the work beside this encoder (the prefilled graph, the preparing process's
    tokenizer): :func:`~tpsearch.pipeline.prefill.spare_threads` of torch's threads."""
    import torch

    return spare_threads(torch.get_num_threads(), encoder.device.type != "cpu")


def _prepare_in_process(parts: BuildParts, base: BaseStore | None, encoder,
                        runs: list[tuple[int, int]], shard_rows: int) -> bool:
    """Whether this build prepares its windows in a process (see :class:`BuildParts`)."""
    standard = (parts.reader is None and parts.mapper is None and base is None
                and getattr(encoder, "prompter", None) is not None and process_available())
    if parts.prepare_process is not None:
        return parts.prepare_process and standard
    rows = sum(b - a for a, b in runs)
    return standard and rows >= PROCESS_MIN_ROWS and rows > shard_rows


def prefetch(chunks: Iterator, prepare: Callable, times: StageTimes, depth: int = 2) -> Iterator:
    """``prepare(chunk)`` for each chunk in a background thread, up to ``depth`` ahead of the
    consumer (the encoder), so reading, passage splitting and tokenisation overlap encoding.
    Errors surface in the consumer, in corpus order; memory stays bounded by ``depth``."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            t_read = time.perf_counter()
            for chunk in chunks:
                times.read += time.perf_counter() - t_read
                item = prepare(chunk)
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
                t_read = time.perf_counter()
            q.put(done)
        except BaseException as exc:  # handed to the consumer, raised there
            q.put(exc)

    worker = threading.Thread(target=work, name="tpsearch-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)


def build_index(config: BuildConfig, encoder: TPEncoder | None = None, show_progress: bool = False,
                overwrite: bool = False, distributor: Distributor | None = None,
                keep_shards: bool = False, keep_column: str | None = None,
                locked: bool = False, parts: BuildParts | None = None) -> BuildResult:
    """Run the whole build: validate, embed into shards, assemble, publish atomically.

    Into an existing index at ``config.out`` the build is incremental: documents whose id and
    content are unchanged keep their stored vectors, new and changed ones are encoded, the
    fitted transform is kept (``config.refit`` fits it anew), and the result is published as
    the directory's next version (readers of the old one keep it until they reopen).
    ``overwrite`` rebuilds such an index from scratch instead; anything but an index there is
    never replaced.
    ``keep_column`` (``tpsearch.update``) names a boolean corpus column marking documents to
    take from the index unchanged. ``keep_shards`` leaves the encoded shards in the work directory after publishing, so a
    build of the same output with another index, transform or lexical setting (everything
    made at assembly) reuses them without encoding (the evaluation's comparisons do this).
    ``locked``: the caller holds the output's :class:`BuildLock` already (updates take it before
    they read the version they start from). ``parts``: replacements for the build's roles
    (:class:`BuildParts`; ``distributor`` is its distributor)."""
    parts = parts or BuildParts()
    d = distributor or parts.distributor or Distributor.from_env()
    d.start()
    try:
        out = validate_build(config, overwrite)
        try:
            if not d.is_main or locked:
                result = _build(config, encoder, show_progress and d.is_main, d, out,
                                keep_shards, overwrite, keep_column, parts)
            else:
                with BuildLock(out):
                    result = _build(config, encoder, show_progress, d, out, keep_shards, overwrite,
                                    keep_column, parts)
            # Every rank finishes before any tears the process group down (a rank that left
            # early while rank 0 still published could abort in gloo's teardown).
            d.barrier()
            return result
        except OSError as exc:
            if exc.errno not in DISK_ERRORS:
                raise
            raise DiskError(
                f"{exc.filename or out}: {exc.strerror} while building; the shards finished so "
                f"far are kept in {WorkDir(out).root}: free space (or fix the permissions) "
                "and run the same command to resume") from exc
    finally:
        d.stop()


def agreed(d: Distributor, step: Callable[[], object]):
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


def load_encoder(config: BuildConfig, d: Distributor, times: StageTimes,
                 documents: int = 0, show_progress: bool = False) -> TPEncoder:
    """The build's encoder; with ``compile_layers="auto"``, a CPU build of many documents in
    bfloat16 compiles its decoder layers too (a GPU one always does)."""
    t0 = time.perf_counter()
    options = replace(config.model.encoder_options(), device=d.device(config.model.device))
    encoder = TPEncoder.load(options, documents=documents, show_progress=show_progress)
    times.extra["model_load"] = time.perf_counter() - t0
    return encoder


@dataclass
class BuildStart:
    """What every engine settles before encoding: the corpus's fingerprint, the encoder, the
    version an incremental build starts from, the index's query prompt and the work dir with
    the settings its shards are tied to."""

    fingerprint: str
    encoder: TPEncoder
    base: tuple | None
    query_prompt: str | None
    work: WorkDir
    settings: dict


def start_build(config: BuildConfig, reader: CorpusReader, d: Distributor, times: StageTimes,
                out: Path, encoder: TPEncoder | None = None, rebuild: bool = False,
                show_progress: bool = False) -> BuildStart:
    """Check the corpus's ids, load the encoder (unless given), and refuse an index type the
    corpus cannot fill, an incremental build against other settings, or a query prompt its
    base does not have, all before any encoding."""
    t0 = time.perf_counter()
    fingerprint = reader.fingerprint(reader.check_ids())
    times.read += time.perf_counter() - t0
    encoder = encoder or load_encoder(config, d, times, reader.num_rows, show_progress)
    choose_index(config.index, reader.num_rows, encoder.dim, parse_size(config.max_index_memory))
    base = open_base(out, config, encoder, rebuild)
    query_prompt = query_prompt_for(config, encoder, base)
    settings = work_settings(config, encoder, fingerprint)
    settings["base_version"] = base[0].version if base else None
    return BuildStart(fingerprint, encoder, base, query_prompt, WorkDir(out), settings)


def _build(config: BuildConfig, encoder: TPEncoder | None, show_progress: bool, d: Distributor,
           out: Path, keep_shards: bool = False, rebuild: bool = False,
           keep_column: str | None = None, parts: BuildParts = BuildParts()) -> BuildResult:
    began, times = time.perf_counter(), StageTimes()
    reader = parts.read(CorpusSpec(config.corpus, config.text_column, config.id_column,
                                     config.title_column, config.metadata_list(), keep_column))
    times.read += time.perf_counter() - began
    start = start_build(config, reader, d, times, out, encoder, rebuild, show_progress)
    fingerprint, encoder, base, work = start.fingerprint, start.encoder, start.base, start.work
    query_prompt, settings = start.query_prompt, start.settings
    # Rank 0 prepares (or discards) the work directory and drops shards whose corpus rows
    # changed since they were written; the others then check it.
    agreed(d, lambda: _prepare_work(work, settings, config, reader, keep_column is not None)
           if d.is_main else None)
    if not d.is_main:
        work.prepare(settings, fresh=False)
    # One process, the standard assembler: the id map and lexical units are made from each
    # shard as it is written, while encoding goes on (:mod:`tpsearch.pipeline.follower`).
    follower = None
    if parts.follow and not d.active and parts.assembler is None:
        opts = _assembly_options(config, encoder, base, False)
        follower = ShardFollower.for_build(work, reader.num_rows, config.shard_rows, opts,
                                           _prefill(config, encoder, base, opts, reader, parts))
    try:
        select = (lambda runs: d.select(runs, config.shard_rows)) if d.active else None
        docs, tokens = encode_shards(config, reader, encoder, work, times, show_progress, select,
                                     base[2] if base else None, parts,
                                     follower.written if follower is not None else None)
        agreed(d, lambda: None)  # every rank has written its shards
        if d.active:  # every rank assembles a segment of its own
            manifest = _assemble_on_ranks(config, encoder, work, times, base, query_prompt, d,
                                          reader, fingerprint, began, docs, tokens, keep_shards)
            return BuildResult(out, manifest, docs, tokens)
        tables = prefill = None
        if follower is not None:
            tables = follower.result()
            times.extra["tables_while_encoding"] = follower.seconds
            if follower.prefill is not None and tables is not None:
                prefill = follower.prefill
                if prefill.index is not None:  # a graph was started (kept or not)
                    times.extra["graph_while_encoding"] = follower.graph_seconds
        part = agreed(d, lambda: _assemble(config, encoder, work, times, base, query_prompt,
                                           parts, tables, prefill))
    except UnbuildableIndex:
        raise  # the shards serve a rerun with another --index
    except InputError:
        work.discard()  # bad data will not get better on a rerun: leave nothing behind
        raise
    finally:
        if follower is not None:
            follower.cancel()
    version, replaces = new_version_name(out), read_pointer(out) if out.is_dir() else None
    keep_store(work, keep_shards, config.store_text)
    manifest = _manifest(config, encoder, reader, fingerprint, part, times, began, docs, tokens,
                         query_prompt, base)
    update = _update_info(base, part) if base else None
    history, dropped = bounded_history(base[1]) if base else ([], 0)
    manifest = replace(manifest, files=file_digests(work.final, manifest.named_files() + [STORE_DIR]),
                       version=version, replaces=replaces, store=STORE_DIR, update=update,
                       history=history, history_dropped=dropped)
    write_manifest(work.final, manifest)
    work.publish(version, keep_shards)
    return BuildResult(out, manifest, docs, tokens)


def _prepare_work(work: WorkDir, settings: dict, config: BuildConfig, reader: CorpusReader,
                  update: bool = False) -> None:
    """Make or check the work directory; re-encode windows whose content changed. An update
    discards the work of another interrupted build or update instead of refusing it."""
    restore_legacy_aside(work.out)
    work.prepare(settings, config.fresh, discard_other=update)
    done = sorted(shard_start(p) for p in work.complete_shards())
    if not done:
        return
    size = config.shard_rows
    windows = ((c.start, window_digest(c)) for a in done
               for c in reader.chunks(size, start_row=a, stop_row=min(a + size, reader.num_rows)))
    stale = work.drop_stale(windows)
    if stale:
        log.info("%d shard(s) were made from corpus rows that have changed since (first at row "
                 "%d): encoding them again", len(stale), stale[0])


def open_base(out: Path, config: BuildConfig, encoder: TPEncoder, rebuild: bool):
    """The version an incremental build starts from: (location, manifest, store), or None
    for a new output or a full rebuild (``overwrite``). Other settings are refused."""
    if rebuild or not is_index_dir(out):
        return None
    location, manifest = open_manifest(out)
    diffs = encoder_mismatches(manifest, encoder)
    if manifest.passages != config.passage_settings():
        diffs.append(f"passages {manifest.passages} vs {config.passage_settings()}")
    c = manifest.corpus
    for name, old, new in (("text column", c.text_column, config.text_column),
                           ("id column", c.id_column, config.id_column),
                           ("title column", c.title_column, config.title_column),
                           ("metadata columns", tuple(manifest.metadata), config.metadata_list())):
        if old != new:
            diffs.append(f"{name} {old!r} vs {new!r}")
    if diffs:
        raise ConfigMismatch(f"{out} holds an index built with other settings ("
                             + "; ".join(diffs[:4]) + "); --overwrite rebuilds it from scratch")
    return location, manifest, BaseStore(location.path, manifest, encoder.dim, location.root)


def bounded_history(base: Manifest) -> tuple[list, int]:
    """The update history a version built on ``base`` records: the last :data:`MAX_HISTORY`
    updates, and how many older ones were dropped (so the manifest stays a few KiB)."""
    history = [*base.history, base.update] if base.update else list(base.history)
    cut = max(0, len(history) - MAX_HISTORY)
    return history[cut:], base.history_dropped + cut


def keep_store(work: WorkDir, keep_shards: bool, store_text: bool) -> None:
    """The shards become the new version's store (:func:`~tpsearch.pipeline.reuse.fill_store`;
    kept in the work dir too with ``keep_shards``)."""
    fill_store(work.complete_shards(), work.final / STORE_DIR, store_text, keep_shards)


SAME_PROMPT = ("same", "none")


def query_prompt_for(config: BuildConfig, encoder: TPEncoder, base=None) -> str | None:
    """The query prompt an index gets (None: the documents' own). Unset: an update keeps its
    base's (its query shift was made with it), a new index takes the model's preset. A prompt
    given for an update whose transform is kept must be the base's."""
    given = config.model.query_prompt
    chosen = None if given is not None and given.lower() in SAME_PROMPT else given
    keeps = base is not None and not config.refit
    if given is None:
        if keeps:
            return base[1].query_prompt
        return encoder.preset.query_prompt if encoder.preset else None
    if keeps and chosen != base[1].query_prompt:
        raise ConfigMismatch(f"the index's queries use prompt {base[1].query_prompt!r}, not "
                             f"{chosen!r}: its query shift was made with it (--refit fits a "
                             "new one)")
    return chosen


def _update_info(base, part: Assembled) -> UpdateInfo:
    return UpdateInfo(base=base[0].version, added=part.added, changed=part.changed,
                      kept=part.reused, removed=base[2].documents - part.reused - part.changed,
                      transform=part.transform_source, drift=part.drift)


def _assembly_options(config: BuildConfig, encoder: TPEncoder, base,
                      unembedding: bool = True) -> AssemblyOptions:
    """The assembly's options; ``unembedding`` False leaves out the model's output matrix
    (a copy as large as the embeddings), which only fitting the embed filter reads."""
    keep = KeptTransform.of(base[0], base[1]) if base and not config.refit else None
    ts = config.transform_settings()
    matrix = None
    if unembedding and ts.embed_filter is not None and keep is None:
        from ..embedfilter import unembedding_of

        matrix = unembedding_of(encoder.model, encoder.placeholder_row)
    return AssemblyOptions(config.index, parse_size(config.max_index_memory), config.store_text,
                           ts, config.lexical, config.lexical_unit, config.metadata_list(),
                           keep_transform=keep, unembedding=matrix)


def _query_encoder(config: BuildConfig, encoder: TPEncoder, qp: str | None):
    query_encoder = encoder.variant(prompt=qp) if qp else encoder
    return lambda texts: query_encoder.encode(texts, batch_size=config.model.batch_size)


def _assemble_on_ranks(config: BuildConfig, encoder: TPEncoder, work: WorkDir, times: StageTimes,
                       base, qp: str | None, d: Distributor, reader: CorpusReader,
                       fingerprint: str, began: float, docs: int, tokens: int,
                       keep_shards: bool) -> Manifest | None:
    """Each rank assembles its own segment (:mod:`tpsearch.pipeline.rank_assembly`); rank 0
    fits the transform first and publishes the version listing them last."""
    from .rank_assembly import (assemble_own_segment, owned, prepare_shared, shared_index,
                                shared_transform)

    shards = work.complete_shards()
    opts = _assembly_options(config, encoder, base)
    encode_queries = _query_encoder(config, encoder, qp)
    fitted_here = opts.keep_transform is None
    agreed(d, lambda: prepare_shared(work, shards, opts, encode_queries) if d.is_main else None)
    kept = shared_transform(work) if fitted_here else opts.keep_transform
    agreed(d, lambda: assemble_own_segment(work, owned(shards, d), replace(
        opts, keep_transform=kept, trained=shared_index(work)), times, encode_queries,
        config.corpus, config.text_column, d.rank))
    if not d.is_main:
        agreed(d, lambda: None)  # wait for rank 0's publish
        return None

    return agreed(d, lambda: publish_segments(
        config, encoder, work, times, base, qp, reader, fingerprint, began, docs, tokens,
        keep_shards, d.world_size, kept, fitted_here))


def publish_segments(config: BuildConfig, encoder: TPEncoder, work: WorkDir, times: StageTimes,
                     base, qp: str | None, reader: CorpusReader, fingerprint: str, began: float,
                     docs: int, tokens: int, keep_shards: bool, parts: int, kept: KeptTransform,
                     fitted_here: bool) -> Manifest:
    """Publish the version that lists the ``parts`` segments assembled in the work dir
    (by torchrun's ranks or Ray's tasks; :mod:`tpsearch.pipeline.rank_assembly`)."""
    from .rank_assembly import collect

    segments, part = collect(work, parts, kept, fitted_here)
    out = work.out
    version, replaces = new_version_name(out), read_pointer(out) if out.is_dir() else None
    final = work.fresh_final()
    own = []
    for path, query_file in kept.query_files():
        shutil.copy2(path, final / query_file)
        own.append(query_file)
    manifest = _manifest(config, encoder, reader, fingerprint, part, times, began, docs,
                         tokens, qp, base)
    history, dropped = bounded_history(base[1]) if base else ([], 0)
    manifest = replace(manifest, files=file_digests(final, own), segments=segments,
                       version=version, replaces=replaces, store=STORE_DIR,
                       update=_update_info(base, part) if base else None, history=history,
                       history_dropped=dropped, format_version=4)
    manifest.check(str(final))
    write_manifest(final, manifest)
    work.publish(version, keep_shards)
    return manifest


def _prefill(config: BuildConfig, encoder: TPEncoder, base, opts: AssemblyOptions,
             reader: CorpusReader, parts: BuildParts) -> GraphPrefill | None:
    """The graph filled while encoding, for a build that fits its transform (not one that
    keeps its base version's) into one index."""
    if not parts.prefill_after or opts.keep_transform is not None:
        return None
    return GraphPrefill(lambda n, dim: index_plan(opts, n, dim), reader.num_rows,
                        fitter(opts.transform,
                               lambda: _assembly_options(config, encoder, base).unembedding),
                        after=parts.prefill_after,
                        threads=_threads_beside(encoder))


def _assemble(config: BuildConfig, encoder: TPEncoder, work: WorkDir, times: StageTimes,
              base=None, qp: str | None = None, parts: BuildParts = BuildParts(),
              tables=None, prefill: GraphPrefill | None = None) -> Assembled:
    """One process assembles every shard (``tables``: what was made of them while encoding;
    ``prefill``: the graph filled meanwhile)."""
    opts = replace(_assembly_options(config, encoder, base), tables=tables, graph=prefill)
    return parts.assemble(work.complete_shards(), work.fresh_final(), opts, times,
                          _query_encoder(config, encoder, qp), config.corpus, config.text_column)


def _manifest(config: BuildConfig, encoder: TPEncoder, reader: CorpusReader, fingerprint: str,
              part: Assembled, times: StageTimes, began: float, docs: int, tokens: int,
              qp: str | None, base=None) -> Manifest:
    src = encoder.source
    return Manifest(
        model=ModelRef(spec=encoder.settings.model, path=src.path if src else None,
                       kind=src.kind if src else "object",
                       weights_sha256=src.weights_sha256 if src else None,
                       definition_sha256=src.definition_sha256 if src else None),
        encoder=encoder.settings, dim=part.dim, index=part.index, documents=part.documents,
        vectors=part.vectors, id_type=reader.id_kind, store_text=config.store_text,
        passages=config.passage_settings(), transform=part.transform,
        lexical=part.lexical,
        metadata={c: kind for c, (kind, _) in reader.metadata_types.items()},
        default_mode=config.default_mode() if part.lexical else "dense",
        fusion=config.fusion_settings(part.lexical,
                                      base[1].fusion.lexical_weight if base else None),
        query_prompt=qp,
        query_templates=encoder.variant(prompt=qp).settings.templates if qp else None,
        skipped_rows=part.skipped, truncated_texts=part.truncated, tokens=part.tokens,
        corpus=CorpusInfo(path=config.corpus, files=[str(f) for f in reader.files],
                          rows=reader.num_rows, fingerprint=fingerprint,
                          text_column=config.text_column, id_column=config.id_column,
                          title_column=config.title_column),
        build=BuildInfo(
            started_at=datetime.fromtimestamp(time.time() - (time.perf_counter() - began),
                                              timezone.utc).isoformat(timespec="seconds"),
            seconds=round(time.perf_counter() - began, 2), stage_seconds=times.as_dict(),
            encoded_now={"documents": docs, "tokens": tokens},
            # Where this process encoded (rank 0 for sharded builds): bf16 on a GPU by default.
            device=str(encoder.device), dtype=encoder.settings.dtype or "float32",
            batching=encoder.batching, compiled=encoder.compiled, config=config.to_dict()),
        files={},
        tpsearch_version=__version__,
    )

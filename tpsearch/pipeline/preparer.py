"""Preparer: the corpus windows read, cut into passages and tokenised in a process of its own,
ahead of the encoder.

In a thread (:func:`tpsearch.pipeline.runner.prefetch`) this work shares the interpreter lock
with the thread that runs the model: while it runs, the encoding thread gets about half of the
lock (measured with the tiny model, whose forward pass is mostly Python: 16,384 documents
encoded in 53 s alone, 93 s beside a thread preparing windows non-stop). In a process it takes
nothing from the encoder but a core's share and the unpickling of each window.

Only the standard reader and mapper of a build without a base version run here (the child
opens the corpus itself and needs nothing but picklable settings); updates reuse the base
version's store, which lives in the parent, and keep the thread.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import queue
import time
from dataclasses import dataclass
from typing import Iterator

from ..errors import TPSearchError
from ..tokenizing import PromptTokenizer
from .mapper import ChunkEmbedder, MapperOptions, Prepared, StageTimes
from .reader import CorpusReader, CorpusSpec

#: Corpus rows to encode below which a build prepares its windows in a thread: starting the
#: process (a fresh interpreter, the tokenizer sent over) costs a few seconds, about what
#: encoding a thousand short documents takes on one CPU core.
PROCESS_MIN_ROWS = 16_384
#: Seconds between checks that the other side is still alive while waiting on the queue.
POLL_SECONDS = 1.0


@dataclass(frozen=True)
class PrepareJob:
    """Everything the preparing process needs, all of it picklable."""

    spec: CorpusSpec
    runs: tuple[tuple[int, int], ...]  # corpus row ranges to prepare, in order
    shard_rows: int
    prompter: PromptTokenizer
    options: MapperOptions
    threads: int | None = None  # the tokenizer's threads (None: its default, every core)


def _prepare_all(job: PrepareJob, out: multiprocessing.Queue) -> None:
    """The child: each window prepared and put on ``out`` as pickled ("item", read seconds,
    Prepared), then ("done",); an error as ("error", exception) and nothing after it. Gives
    up when the parent is gone."""
    parent = multiprocessing.parent_process()
    if job.threads is not None:  # read by the tokenizers library when it first runs a batch
        if job.threads <= 1:
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
        else:
            os.environ["RAYON_NUM_THREADS"] = str(job.threads)

    def put(message: tuple) -> bool:
        # pickled here, not by the queue's feeder thread, so that an error pickling it raises
        # in this function (and is reported) rather than being lost with the message
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        while True:
            try:
                out.put(payload, timeout=POLL_SECONDS)
                return True
            except queue.Full:
                if parent is not None and not parent.is_alive():
                    return False

    try:
        reader = CorpusReader(job.spec)
        embed = ChunkEmbedder(job.prompter, job.options)  # prepare() needs only the tokenizer
        for a, b in job.runs:
            t_read = time.perf_counter()
            for chunk in reader.chunks(job.shard_rows, start_row=a, stop_row=b):
                read = time.perf_counter() - t_read
                if not put(("item", read, embed.prepare(chunk))):
                    return
                t_read = time.perf_counter()
        put(("done",))
    except BaseException as exc:  # handed to the parent, raised there
        try:
            put(("error", exc))
        except Exception:  # the exception itself does not pickle: its text does
            put(("error", TPSearchError(f"{type(exc).__name__}: {exc}")))


def prepare_in_process(job: PrepareJob, times: StageTimes, depth: int = 2) -> Iterator[Prepared]:
    """The windows of ``job`` prepared in a child process, in corpus order, at most ``depth``
    ahead of the consumer. Errors surface in the consumer in corpus order; the child is
    stopped when the consumer stops early, and its death is an error, not a hang."""
    ctx = multiprocessing.get_context("spawn")  # never fork a process running torch's threads
    out = ctx.Queue(maxsize=depth)
    child = ctx.Process(target=_prepare_all, args=(job, out), name="tpsearch-prepare", daemon=True)
    child.start()
    try:
        while True:
            try:
                payload = out.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if not child.is_alive():
                    raise TPSearchError(
                        f"the process preparing the corpus windows died (exit code "
                        f"{child.exitcode}) before it finished") from None
                continue
            message = pickle.loads(payload)
            if message[0] == "done":
                return
            if message[0] == "error":
                raise message[1]
            times.read += message[1]
            yield message[2]
    finally:
        if child.is_alive():
            child.terminate()
        child.join(timeout=10)
        out.close()
        out.join_thread()


__all__ = ["PrepareJob", "prepare_in_process", "PROCESS_MIN_ROWS"]

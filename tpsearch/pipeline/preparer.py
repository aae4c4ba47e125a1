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

import os
import pickle
import subprocess
import sys
import time
from dataclasses import dataclass
from multiprocessing import spawn
from multiprocessing.connection import Connection
from typing import Iterator

from ..errors import TPSearchError
from ..tokenizing import PromptTokenizer
from .mapper import ChunkEmbedder, MapperOptions, Prepared, StageTimes
from .reader import CorpusReader, CorpusSpec

#: Corpus rows to encode below which a build prepares its windows in a thread: starting the
#: process (a fresh interpreter, the tokenizer sent over) costs a few seconds, about what
#: encoding a thousand short documents takes on one CPU core.
PROCESS_MIN_ROWS = 16_384


def process_available() -> bool:
    """Whether windows can be prepared in a process here: the child is handed its pipes as
    inherited descriptors (``pass_fds``), which only POSIX systems have; elsewhere a thread."""
    return os.name == "posix"


@dataclass(frozen=True)
class PrepareJob:
    """Everything the preparing process needs, all of it picklable."""

    spec: CorpusSpec
    runs: tuple[tuple[int, int], ...]  # corpus row ranges to prepare, in order
    shard_rows: int
    prompter: PromptTokenizer
    options: MapperOptions
    threads: int | None = None  # the tokenizer's threads (None: its default, every core)


def _prepare_all(job: PrepareJob, conn) -> None:
    """The child: each window prepared and sent on ``conn`` pickled, as ("item", read seconds,
    Prepared), then ("done",); an error as ("error", exception) and nothing after it. A send
    fails once the parent has closed its end (it stopped, or it is gone): the child ends."""
    if job.threads is not None:  # read by the tokenizers library when it first runs a batch
        if job.threads <= 1:
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
        else:
            os.environ["RAYON_NUM_THREADS"] = str(job.threads)

    def send(message: tuple) -> None:
        conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))

    try:
        reader = CorpusReader(job.spec)
        embed = ChunkEmbedder(job.prompter, job.options)  # prepare() needs only the tokenizer
        for a, b in job.runs:
            t_read = time.perf_counter()
            for chunk in reader.chunks(job.shard_rows, start_row=a, stop_row=b):
                read = time.perf_counter() - t_read
                send(("item", read, embed.prepare(chunk)))
                t_read = time.perf_counter()
        send(("done",))
    except (BrokenPipeError, ConnectionResetError):  # nobody reads any more
        return
    except BaseException as exc:  # handed to the parent, raised there
        try:
            send(("error", exc))
        except (BrokenPipeError, ConnectionResetError):
            return
        except Exception:  # the exception itself does not pickle: its text does
            send(("error", TPSearchError(f"{type(exc).__name__}: {exc}")))
    finally:
        conn.close()


def _child_main(job_fd: int, out_fd: int) -> None:
    """The child's entry point: reads the pickled :class:`PrepareJob` from ``job_fd``, then
    sends the windows on ``out_fd`` (see :func:`_prepare_all`)."""
    with os.fdopen(job_fd, "rb") as f:
        job = pickle.load(f)
    _prepare_all(job, Connection(out_fd, readable=False))


def _start_child(job: PrepareJob) -> tuple[subprocess.Popen, Connection]:
    """A fresh interpreter running :func:`_child_main`, and the reading end of its messages.

    Not a ``multiprocessing`` process: its spawn start method runs the parent's main script
    again in the child, so a user's script that calls ``build_index`` without an
    ``if __name__ == "__main__":`` guard would run twice. This child imports tpsearch only
    (with the parent's ``sys.path``) and reads its job from a pipe."""
    job_r, job_w = os.pipe()
    out_r, out_w = os.pipe()
    code = (f"import sys; sys.path[:0] = {[p for p in sys.path if p]!r}; "
            "from tpsearch.pipeline.preparer import _child_main; "
            f"_child_main({job_r}, {out_w})")
    try:
        child = subprocess.Popen([spawn.get_executable(), "-c", code], pass_fds=(job_r, out_w),
                                 stdin=subprocess.DEVNULL, close_fds=True)
    except BaseException:
        for fd in (job_r, job_w, out_r, out_w):
            os.close(fd)
        raise
    os.close(job_r)
    os.close(out_w)  # the child holds the only writing end: its death ends the pipe
    receiver = Connection(out_r, writable=False)
    try:
        with os.fdopen(job_w, "wb") as f:
            pickle.dump(job, f, protocol=pickle.HIGHEST_PROTOCOL)
    except BrokenPipeError:  # the child died before reading its job: said on the first read
        pass
    return child, receiver


def prepare_in_process(job: PrepareJob, times: StageTimes) -> Iterator[Prepared]:
    """The windows of ``job`` prepared in a child process, in corpus order: one waits in the
    pipe while the consumer encodes the last, and the child prepares the next meanwhile.
    Errors surface in the consumer in corpus order; the child is stopped when the consumer
    stops early, and its death (even in the middle of a window) is an error, not a hang: the
    child holds the pipe's only writing end, so its death ends the pipe."""
    child, receiver = _start_child(job)
    try:
        while True:
            try:
                payload = receiver.recv_bytes()
            except EOFError:
                raise TPSearchError(
                    f"the process preparing the corpus windows died (exit code "
                    f"{_exit_code(child)}) before it finished") from None
            message = pickle.loads(payload)
            if message[0] == "done":
                return
            if message[0] == "error":
                raise message[1]
            times.read += message[1]
            yield message[2]
    finally:
        receiver.close()  # a child still sending gets a broken pipe and ends
        if child.poll() is None:
            child.terminate()
        _exit_code(child)


def _exit_code(child: subprocess.Popen) -> int | None:
    """The child's exit code once it has ended (waited for up to 10 s; killed after that)."""
    try:
        return child.wait(timeout=10)
    except subprocess.TimeoutExpired:
        child.kill()
        return child.wait()


__all__ = ["PrepareJob", "prepare_in_process", "process_available", "PROCESS_MIN_ROWS"]

"""Prefill: a one-process build fills its graph index while encoding goes on.

At scale, building HNSW's graph is most of assembly (1,000,000 64-dim vectors: 245 s on 2
cores, after the encoder finished) and, unlike the id map, it needs the fitted transform
(centring on the documents' mean, the embed filter, normalisation). So a one-process build
whose index will be a graph fits the transform on the first ``after`` passages (as many as
assembly's uniform fit sample) as soon as they are written, then adds every shard to the
graph as it comes, in the follower's thread (:mod:`tpsearch.pipeline.follower`).

When encoding ends the assembler keeps the graph only if the plan for the final number of
vectors is the same graph. Then, if the documents' mean over assembly's uniform sample moved at
most :data:`MAX_DRIFT` of their spread from the prefix's (the statistical error of a
20,000-vector mean is about 0.007), graph and transform are kept as they are. A corpus sorted
by topic, date or id moves it further (1,000,000 synthetic documents titled "Doc 0" ... "Doc
999999": 0.096): up to :data:`MAX_RESEAT_DRIFT` the transform is fitted again on the uniform
sample, as a build without the prefill fits it, and the graph keeps its links while its stored
vectors are replaced by the same vectors under the new transform (:func:`reseat`): the index
then holds exactly the vectors of a build without the prefill, found through links chosen
under a slightly different centring, and the recall check against exact search (which the
assembler runs anyway) decides whether they still serve; below the recall target the graph is
rebuilt. Beyond :data:`MAX_RESEAT_DRIFT` it is rebuilt at once. The manifest's transform note
says which happened.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable

import faiss
import numpy as np

from ..index import IndexPlan, new_index
from ..transform import FIT_SAMPLE, FittedTransform, fit_transform, mean_drift

log = logging.getLogger("tpsearch")

#: The largest move of the documents' mean (over a uniform sample, relative to their mean
#: distance from the prefix's mean) under which the graph filled while encoding is kept.
MAX_DRIFT = 0.05
#: The largest such move under which the graph keeps its links, its vectors re-seated under the
#: transform fitted on the uniform sample; beyond it the graph is rebuilt after encoding.
MAX_RESEAT_DRIFT = 0.5
#: How the transform note says a graph kept its links with its vectors re-seated (the assembler
#: replaces these words where the recall check then has the graph rebuilt).
RESEATED = "the graph filled while encoding kept its links, its vectors re-seated under it"


@dataclass
class Prefilled:
    """The graph filled while encoding, and the transform inside it (fitted on the prefix)."""

    index: faiss.Index
    plan: IndexPlan
    fitted: FittedTransform  # without a query shift: assembly adds it
    mean: np.ndarray  # the prefix's mean (the centring's)
    fitted_on: int
    drift: float
    reseat: bool = False  # the links only: the vectors go in again under the uniform sample's fit


class GraphPrefill:
    """Collects shards' vectors in corpus order; after ``after`` of them, fits the transform
    on them and from then on adds every vector to a new graph index.

    ``plan(n, dim)`` gives the index plan for ``n`` vectors of ``dim`` transformed dimensions;
    ``expected`` is the least number of vectors the build will have (its corpus rows);
    ``fit(sample)`` fits the transform (without the query shift)."""

    def __init__(self, plan: Callable[[int, int], IndexPlan], expected: int,
                 fit: Callable[[np.ndarray], FittedTransform], after: int = FIT_SAMPLE,
                 threads: int | None = None):
        self._plan, self.expected, self._fit, self.after = plan, expected, fit, max(2, after)
        self.threads = threads
        self._buffer: list[np.ndarray] = []
        self._seen = 0
        self.off: str | None = None  # why nothing is prefilled
        self.index = self.plan = self.fitted = self.mean = None

    def add(self, vectors: np.ndarray) -> None:
        """The next shard's vectors (raw, as encoded)."""
        if self.off is not None:
            return
        if self.threads is not None:  # OpenMP's thread count is per calling thread
            faiss.omp_set_num_threads(self.threads)
        if self.index is not None:
            self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
            return
        self._buffer.append(np.asarray(vectors, dtype=np.float32))
        self._seen += len(vectors)
        if self._seen >= self.after:
            self._start()

    def _start(self) -> None:
        vectors = np.concatenate(self._buffer)
        self._buffer = []
        fitted = self._fit(vectors[:self.after])
        plan = self._plan(max(self.expected, len(vectors)), fitted.out_dim)
        if "HNSW" not in plan.factory or plan.ondisk:
            self.off = f"the index is {plan.factory}, not a graph: nothing to fill while encoding"
            return
        inner = new_index(plan, fitted.out_dim)
        if not inner.is_trained:  # e.g. HNSW32,SQ8: its codes are trained on a uniform sample
            self.off = f"{plan.factory} trains its codes first: the graph is built after encoding"
            return
        self.fitted, self.plan, self.mean = fitted, plan, vectors[:self.after].mean(0)
        self.index = fitted.wrap(inner)
        self.index.add(vectors)
        log.info("transform fitted on the first %d passages; filling %s while encoding",
                 self.after, plan.factory)

    def take(self, sample: np.ndarray, plan: Callable[[int], IndexPlan],
             n: int) -> tuple[Prefilled | None, str]:
        """After encoding: the graph, if it holds all ``n`` vectors and may be kept (see the
        module's rules), and a sentence saying what was decided. ``sample``: assembly's
        uniform sample of the raw vectors; ``plan(out_dim)``: the plan for all of them."""
        if self.off is not None:
            return None, self.off
        if self.index is None:
            return None, f"encoding ended before {self.after} passages: the graph is built after"
        if self.index.ntotal != n:
            return None, f"the graph holds {self.index.ntotal} of {n} vectors: rebuilt"
        final = plan(self.fitted.out_dim)
        if final.factory != self.plan.factory or final.ondisk:
            return None, f"{n} vectors need {final.factory}, not {self.plan.factory}: rebuilt"
        drift = mean_drift(sample, self.mean) if self.fitted.chain else 0.0
        moved = (f"the documents' mean moved {drift} of their spread from the first "
                 f"{self.after} passages' (over {MAX_DRIFT}): transform refitted on a uniform "
                 "sample, ")
        if drift > MAX_RESEAT_DRIFT:
            return None, moved + f"graph rebuilt (moved over {MAX_RESEAT_DRIFT})"
        if drift > MAX_DRIFT:
            return (Prefilled(self.index, self.plan, self.fitted, self.mean, self.after, drift,
                              reseat=True),
                    moved + RESEATED)
        return (Prefilled(self.index, self.plan, self.fitted, self.mean, self.after, drift),
                f"transform fitted on the first {self.after} passages and the graph filled "
                f"while encoding (the documents' mean moved {drift} of their spread over a "
                "uniform sample)")


def reseat(graph: Prefilled, fitted: FittedTransform) -> tuple[faiss.Index, Callable[[np.ndarray], None]]:
    """The graph's links behind ``fitted`` instead of the prefix's transform, with its stored
    vectors emptied, and the function that stores them again: every vector, transformed by
    ``fitted``, in the order they were added. Search only once all are back."""
    if fitted.out_dim != graph.fitted.out_dim:
        raise ValueError(f"a {fitted.out_dim}-dim transform cannot re-seat a "
                         f"{graph.fitted.out_dim}-dim graph")
    outer = faiss.downcast_index(graph.index)
    inner = faiss.downcast_index(outer.index) if isinstance(outer, faiss.IndexPreTransform) \
        else outer
    storage = faiss.downcast_index(inner.storage)
    storage.reset()
    index = fitted.wrap(inner)
    if hasattr(index, "referenced_objects"):  # the graph's owner outlives this wrapper
        index.referenced_objects.append(graph.index)

    def store(vectors: np.ndarray) -> None:
        storage.add(np.ascontiguousarray(vectors, dtype=np.float32))

    return index, store


def spare_threads(torch_threads: int, on_gpu: bool) -> int:
    """Threads for work beside the encoder (the graph's OpenMP threads, the preparing
    process's tokenizer): the cores torch leaves free on a CPU encoder (at least one); beside
    a GPU encoder, all but two (the thread feeding the GPU and the tokenising process)."""
    cores = os.cpu_count() or 1
    return max(1, cores - 2) if on_gpu else max(1, cores - torch_threads)


def fitter(settings, unembedding: Callable[[], object]) -> Callable[[np.ndarray], FittedTransform]:
    """``fit(sample)`` as assembly fits the transform, without the query shift; the model's
    unembedding (for the embed filter) is read only when the fit runs."""
    return lambda sample: fit_transform(sample, None, settings,
                                        unembedding() if settings.embed_filter else None)

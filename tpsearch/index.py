"""FAISS index choice, training, search-parameter tuning and recall measurement.

Inner product on L2-normalised vectors (cosine). ``auto`` chooses as autofaiss does, by the
document count and an optional memory budget:

* exact (``Flat``) up to :data:`FLAT_MAX_DOCS` documents: below that a brute-force query costs
  less than a tenth of encoding the query on a 2-core CPU (see ``benchmarks/index_choice.py``);
* ``HNSW32,Flat`` above it when the vectors plus graph fit the budget;
* ``IVF{nlist},PQ{m}`` otherwise, with ``m`` the largest code size that fits.

ANN search parameters (``nprobe``, ``efSearch``) are tuned on a sample of the corpus' own
vectors used as queries: the smallest value reaching :data:`TARGET_RECALL` recall@10 against
exact search.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import faiss
import numpy as np

from .errors import InputError

FLAT_MAX_DOCS = 20_000
TARGET_RECALL = 0.95
NPROBE_LADDER = (1, 2, 4, 8, 16, 32, 64, 128, 256)
EF_LADDER = (16, 32, 64, 128, 256, 512)


@dataclass
class IndexPlan:
    """The chosen index: a FAISS factory string and why."""

    factory: str
    reason: str
    search_params: dict = field(default_factory=dict)

    @property
    def is_exact(self) -> bool:
        return self.factory == "Flat"

    @property
    def needs_training(self) -> bool:
        return "IVF" in self.factory or "PQ" in self.factory


def _nlist(n: int) -> int:
    """About 4 sqrt(n) lists, a power of two, at least 39 training points per list."""
    k = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n))))
    return int(max(1, min(k, n // 39, 65536)))


def _pq_m(dim: int, n: int, budget: int | None) -> int:
    """Largest PQ code size (bytes per vector) dividing ``dim`` that fits ``budget``."""
    choices = [m for m in (128, 96, 64, 48, 32, 24, 16, 8, 4) if dim % m == 0 and m <= dim]
    for m in choices:
        if budget is None or n * (m + 8) * 1.1 <= budget:
            return m
    raise InputError(f"no IVF-PQ index of {n} vectors fits a memory budget of {budget} bytes")


def choose_index(spec: str, n: int, dim: int, memory_budget: int | None = None) -> IndexPlan:
    """Turn ``--index`` (auto, flat, hnsw, ivf, ivfpq or a factory string) into a plan."""
    s = spec.strip()
    key = s.lower()
    flat_bytes = n * dim * 4
    if key == "auto":
        if n <= FLAT_MAX_DOCS and (memory_budget is None or flat_bytes <= memory_budget):
            return IndexPlan("Flat", f"{n} documents <= {FLAT_MAX_DOCS}: exact search is cheap")
        hnsw_bytes = flat_bytes + n * 32 * 2 * 4
        if memory_budget is None or hnsw_bytes <= memory_budget:
            return IndexPlan("HNSW32,Flat", f"{n} documents > {FLAT_MAX_DOCS}; "
                             f"vectors and graph need {hnsw_bytes / 2**20:.0f} MiB")
        m = _pq_m(dim, n, memory_budget)
        return IndexPlan(f"IVF{_nlist(n)},PQ{m}", f"{n} documents; HNSW needs "
                         f"{hnsw_bytes / 2**20:.0f} MiB, over the budget: compressed to {m} B/vector")
    if key == "flat":
        return IndexPlan("Flat", "asked for")
    if key == "hnsw":
        return IndexPlan("HNSW32,Flat", "asked for")
    if key == "ivf":
        return IndexPlan(f"IVF{_nlist(n)},Flat", "asked for")
    if key == "ivfpq":
        return IndexPlan(f"IVF{_nlist(n)},PQ{_pq_m(dim, n, memory_budget)}", "asked for")
    try:
        faiss.index_factory(dim, s, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise InputError(f"--index {s!r}: not a FAISS factory string ({str(exc).splitlines()[0]})") from None
    return IndexPlan(s, "asked for")


def new_index(plan: IndexPlan, dim: int) -> faiss.Index:
    return faiss.index_factory(dim, plan.factory, faiss.METRIC_INNER_PRODUCT)


def apply_search_params(index: faiss.Index, params: dict) -> None:
    """Set ``nprobe`` / ``efSearch`` on the index (or on the IVF/HNSW inside it)."""
    if not params:
        return
    ps = faiss.ParameterSpace()
    for name, value in params.items():
        ps.set_index_parameter(index, name, value)


def exact_topk(queries: np.ndarray, batches: Iterable[np.ndarray], k: int) -> np.ndarray:
    """Exact top-k row numbers over vectors streamed in batches (never all in memory)."""
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(queries), k), -1, dtype=np.int64)
    offset = 0
    for vecs in batches:
        scores = queries @ vecs.T
        top = min(k, scores.shape[1])
        part = np.argpartition(-scores, top - 1, axis=1)[:, :top]
        s = np.concatenate([best_s, np.take_along_axis(scores, part, 1)], axis=1)
        i = np.concatenate([best_i, part + offset], axis=1)
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)
        offset += len(vecs)
    return best_i


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Mean fraction of the exact top-k found in the returned top-k."""
    hits = [len(set(f[:k]) & set(t[:k]) - {-1}) / max(1, len(set(t[:k]) - {-1}))
            for f, t in zip(found, truth)]
    return float(np.mean(hits)) if hits else 1.0


def tune_search(index: faiss.Index, plan: IndexPlan, queries: np.ndarray, truth: np.ndarray,
                k: int = 10) -> tuple[dict, float]:
    """The cheapest search parameter reaching the target recall; returns (params, recall)."""
    if plan.is_exact:
        return {}, 1.0
    if "HNSW" in plan.factory:
        name, ladder = "efSearch", EF_LADDER
    elif "IVF" in plan.factory:
        name, ladder = "nprobe", tuple(v for v in NPROBE_LADDER if v <= _nlist_of(index))
    else:
        _, found = index.search(queries, k)
        return {}, recall_at_k(found, truth, k)
    params, recall = {}, 0.0
    for value in ladder:
        params = {name: value}
        apply_search_params(index, params)
        _, found = index.search(queries, k)
        recall = recall_at_k(found, truth, k)
        if recall >= TARGET_RECALL:
            break
    return params, recall


def _nlist_of(index: faiss.Index) -> int:
    ivf = faiss.extract_index_ivf(index)
    return int(ivf.nlist)


def train_index(index: faiss.Index, sample: np.ndarray, progress: Callable[[str], None] | None = None) -> None:
    if not index.is_trained:
        if progress:
            progress(f"training on {len(sample)} vectors")
        index.train(sample)

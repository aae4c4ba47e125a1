"""Embeddings fitted to the corpus: centering or PCA whitening inside the FAISS index, and a
query-side shift.

Last-token embeddings of a small LLM are anisotropic, and short questions sit in another region
of the space than long prompted passages. So the two sides get their own means:

* documents: the transform (``CenteringTransform``, the embed filter and a partial whitening;
  or ``PCAMatrix`` with ``eigen_power=-0.5``; then L2 normalisation) is trained on a sample of
  the corpus' passage vectors and lives in an ``IndexPreTransform``: every vector added and
  every query searched goes through it;
* queries: before search a query vector ``q`` becomes ``q + (mu_docs - mu_queries)``, so that
  the index's own centering subtracts ``mu_queries`` from it instead of ``mu_docs``.
  ``mu_queries`` is the mean of query-like texts encoded with the query prompt: example queries
  the user gives at build time, or else the first sentence of each sampled document.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import faiss
import numpy as np

from .embedfilter import filter_transform, kept_basis
from .errors import InputError
from .index import apply_chain
from .npyfile import read_float32
from .query_adapter import DEFAULT_ADAPTER_SETTINGS, document_targets, fit_adapter, input_space_map

KINDS = ("none", "center", "whiten")
#: Whitening to ``dim`` needs this many fitting vectors per output dimension; fewer: centering.
MIN_SAMPLES_PER_DIM = 4
#: Passage vectors used to fit the transform.
FIT_SAMPLE = 20_000
#: Query-like texts (first sentences) encoded for the query mean.
QUERY_SAMPLE = 1_000
#: Partial whitening's default power (0.12): each principal direction of the centred passages is
#: scaled by its variance to the power ``-p`` (0.5 would be full whitening), chosen on the dev
#: sets (docs/retrieval-quality.md, "Partial whitening").
DEFAULT_WHITEN_POWER = 0.15
#: The covariance is shrunk this share toward isotropic before its power is taken, so that
#: directions a small corpus does not span are not blown up.
WHITEN_SHRINK = 0.05


@dataclass(frozen=True)
class TransformSettings:
    """Which transform to fit; recorded in the manifest."""

    kind: str = "center"
    dim: int = 256
    query_examples: str | None = None  # a text file, one example query per line
    embed_filter: tuple[int, int] | None = None  # EmbedFilter's (top, bottom) directions dropped
    query_adapter: bool = True  # fit a query map on first sentences (tpsearch.query_adapter)
    # 'center' only: scale the centred (filtered) vectors' principal directions by their
    # variance to the power -whiten_power; 0: none (indexes before 0.12)
    whiten_power: float = DEFAULT_WHITEN_POWER

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"transform must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not 0.0 <= self.whiten_power <= 0.5:
            raise InputError(f"whiten power must be within 0..0.5 (0: none, 0.5: full "
                             f"whitening), got {self.whiten_power}")

        if self.dim < 2:
            raise InputError(f"transform dimension must be at least 2, got {self.dim}")


#: The default transform, chosen on the dev sets (README, "Retrieval on documents").
DEFAULT_TRANSFORM_SETTINGS = TransformSettings()
#: EmbedFilter's default (--embed-filter), chosen on the dev sets.
DEFAULT_EMBED_FILTER = "32:32"


@dataclass
class FittedTransform:
    """What the assembler puts in front of the index, and the query shift."""

    kind: str  # what was fitted (may be 'center' where 'whiten' had too few vectors)
    chain: list  # faiss.VectorTransform, applied in order
    out_dim: int
    query_shift: np.ndarray | None  # (d_in,) float32, added to query vectors before search
    note: str | None = None
    filtered: bool = False  # the chain holds the embed filter
    # (d_in + 1, d_in): shifted query vectors become x @ m[:-1] + m[-1] (tpsearch.query_adapter)
    query_map: np.ndarray | None = None
    adapter_pairs: int = 0  # the (pseudo-query, document) pairs the map was fitted on
    whiten_power: float = 0.0  # the partial whitening in the chain (0: none)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The vectors as the index sees them."""
        return apply_chain(self.chain, np.ascontiguousarray(x, dtype=np.float32))

    def wrap(self, inner: faiss.Index) -> faiss.Index:
        """``inner`` (of dimension ``out_dim``) behind the chain, or as is for no transform."""
        if not self.chain:
            return inner
        index = faiss.IndexPreTransform(inner)
        for vt in reversed(self.chain):
            index.prepend_transform(vt)  # faiss's wrapper keeps the transforms alive
        return index


def fit_transform(docs: np.ndarray, queries: np.ndarray | None,
                  settings: TransformSettings, unembedding=None) -> FittedTransform:
    """Fit on a sample of document vectors; ``queries`` (query-like vectors) set the shift;
    ``unembedding`` (the model's vocab x dim output matrix) is what the embed filter needs."""
    d = docs.shape[1]
    if settings.kind == "none" or len(docs) < 2:
        return FittedTransform("none", [], d, None,
                               None if settings.kind == "none" else "fewer than 2 vectors: none")
    docs = np.ascontiguousarray(docs, dtype=np.float32)
    mu_docs = docs.mean(0)
    kind, note = settings.kind, None
    dim = min(settings.dim, d)
    if kind == "whiten" and len(docs) < MIN_SAMPLES_PER_DIM * dim:
        kind = "center"
        note = (f"whitening to {dim} dims needs {MIN_SAMPLES_PER_DIM * dim} vectors, the corpus "
                f"has {len(docs)}: centred instead")
    chain, basis, power = [], None, 0.0
    if settings.embed_filter is not None:
        basis, skipped = _filter_basis(unembedding, settings.embed_filter, d)
        note = "; ".join(x for x in (note, skipped) if x) or None
    if kind == "center":
        chain.append(faiss.CenteringTransform(d))
        chain[0].train(docs)
        out = d
        if basis is not None:  # centred, then the kept directions
            chain.append(filter_transform(basis))
            out = basis.shape[1]
        if settings.whiten_power > 0:  # then flatter: partial whitening
            flat = partial_whitening(apply_chain(chain, docs), settings.whiten_power)
            if flat is None:
                note = "; ".join(x for x in (note, "partial whitening skipped: the vectors do "
                                             "not vary") if x)
            else:
                chain.append(flat)
                power = settings.whiten_power
    else:
        if basis is not None:  # the kept directions, then whitening within them
            chain.append(filter_transform(basis))
            docs = chain[0].apply(docs)
            dim = min(dim, basis.shape[1])
        pca = faiss.PCAMatrix(docs.shape[1], dim, -0.5, False)
        pca.train(docs)
        chain.append(pca)
        out = dim
    chain.append(faiss.NormalizationTransform(out, 2.0))
    shift = None
    if queries is not None and len(queries):
        shift = (mu_docs - np.asarray(queries, dtype=np.float32).mean(0)).astype(np.float32)
    return FittedTransform(kind, chain, out, shift, note, filtered=basis is not None,
                           whiten_power=power)


def partial_whitening(x: np.ndarray, power: float,
                      shrink: float = WHITEN_SHRINK) -> faiss.LinearTransform | None:
    """A trained FAISS ``LinearTransform`` (square, symmetric) that scales each principal
    direction of the centred vectors ``x`` by its variance to the power ``-power``, relative to
    the largest: ``V diag((l / l_max)^-power) V^T`` for the eigenpairs ``(l, V)`` of their
    covariance shrunk ``shrink`` toward its mean variance. The largest direction keeps its
    scale, the flattest are lifted at most ``(l_max / (shrink * mean l))^power`` times. None
    when the vectors do not vary."""
    x = np.asarray(x, dtype=np.float64)
    d = x.shape[1]
    cov = x.T @ x / max(1, len(x))
    mean_var = float(np.trace(cov)) / d
    if not mean_var > 0.0:
        return None
    cov = (1.0 - shrink) * cov + shrink * mean_var * np.eye(d)
    lam, v = np.linalg.eigh(cov)
    lam = np.maximum(lam, shrink * mean_var)  # eigh's rounding below the shrunk floor
    return filter_transform((v * (lam / lam.max()) ** -power) @ v.T)  # m^T x = m x


def with_query_map(fitted: FittedTransform, queries: np.ndarray | None,
                   pairs: "QueryPairs | None", settings: TransformSettings) -> FittedTransform:
    """``fitted`` with a query adapter fitted on ``pairs`` (``queries[i]`` is the first
    sentence of the document whose passage vectors ``pairs`` holds; ``pairs.more`` holds
    further pseudo-queries for the same documents), where the settings ask for one and there
    are enough documents; else as it is, with a note saying why not."""
    if not settings.query_adapter or pairs is None or not fitted.chain or queries is None:
        return fitted
    if fitted.query_shift is None or len(queries) < DEFAULT_ADAPTER_SETTINGS.min_pairs:
        note = (f"query adapter skipped: {len(queries)} first sentences, it needs "
                f"{DEFAULT_ADAPTER_SETTINGS.min_pairs}")
        return replace(fitted, note="; ".join(x for x in (fitted.note, note) if x))
    n = len(queries)
    labels = np.arange(n)
    if pairs.more is not None and len(pairs.more):
        queries = np.vstack([queries, pairs.more])
        labels = np.r_[labels, pairs.more_owner]
    q = fitted.apply(np.asarray(queries, np.float32) + fitted.query_shift)
    targets = document_targets(fitted.apply(pairs.passages), pairs.owner, n)
    w = fit_adapter(q, targets, labels=labels)
    m = input_space_map(fitted.chain, w, pairs.passages.shape[1])
    return replace(fitted, query_map=m, adapter_pairs=len(q))


@dataclass(frozen=True)
class QueryPairs:
    """The passage vectors of the documents whose first sentences are the pseudo-queries:
    ``owner[i]`` is the pseudo-query (by position) that passage ``i`` answers; and further
    pseudo-queries (encoded, before the shift) with the document (by its first sentence's
    position) each one belongs to."""

    passages: np.ndarray
    owner: np.ndarray
    more: np.ndarray | None = None
    more_owner: np.ndarray | None = None


def mean_drift(sample: np.ndarray, mean: np.ndarray) -> float:
    """How far ``sample``'s mean lies from ``mean`` (a fitted transform's), relative to the
    sample's mean distance from it; rounded to 4 places."""
    spread = float(np.linalg.norm(sample - mean, axis=1).mean()) or 1.0
    return round(float(np.linalg.norm(sample.mean(0) - mean)) / spread, 4)


def _filter_basis(unembedding, embed_filter: tuple[int, int], d: int):
    """(kept basis or None, why it was skipped or None)."""
    top, bottom = embed_filter
    if unembedding is None:
        return None, "embed filter skipped: the model has no output head to read"
    if unembedding.shape[1] != d:
        return None, (f"embed filter skipped: the unembedding has {unembedding.shape[1]} dims, "
                      f"the vectors {d}")
    if top + bottom >= d // 2:
        return None, f"embed filter skipped: {top}+{bottom} directions is too many for {d} dims"
    return kept_basis(unembedding, top, bottom), None


def read_example_queries(path: str) -> list[str]:
    """Non-empty lines of a UTF-8 text file (undecodable bytes replaced)."""
    try:
        with open(path, encoding="utf8", errors="replace") as f:
            lines = [line.strip() for line in f]
    except OSError as exc:
        raise InputError(f"{path}: cannot read example queries ({exc.strerror})") from None
    lines = [x for x in lines if x]
    if not lines:
        raise InputError(f"{path}: no example queries (one per line)")
    return lines


def read_vector(path: Path, dim: int) -> np.ndarray:
    """A float32 ``dim``-vector saved with numpy (the query shift), checked before it is read."""
    return read_float32(path, (dim,), f"a float32 {dim}-vector")

"""Embeddings fitted to the corpus: centering or PCA whitening inside the FAISS index, and a
query-side shift.

Last-token embeddings of a small LLM are anisotropic, and short questions sit in another region
of the space than long prompted passages. So the two sides get their own means:

* documents: the transform (``CenteringTransform`` or ``PCAMatrix`` with ``eigen_power=-0.5``,
  then L2 normalisation) is trained on a sample of the corpus' passage vectors and lives in an
  ``IndexPreTransform``: every vector added and every query searched goes through it;
* queries: before search a query vector ``q`` becomes ``q + (mu_docs - mu_queries)``, so that
  the index's own centering subtracts ``mu_queries`` from it instead of ``mu_docs``.
  ``mu_queries`` is the mean of query-like texts encoded with the query prompt: example queries
  the user gives at build time, or else the first sentence of each sampled document.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from .errors import InputError

KINDS = ("none", "center", "whiten")
#: Whitening to ``dim`` needs this many fitting vectors per output dimension; fewer: centering.
MIN_SAMPLES_PER_DIM = 4
#: Passage vectors used to fit the transform.
FIT_SAMPLE = 20_000
#: Query-like texts (first sentences) encoded for the query mean.
QUERY_SAMPLE = 1_000


@dataclass(frozen=True)
class TransformSettings:
    """Which transform to fit; recorded in the manifest."""

    kind: str = "center"
    dim: int = 256
    query_examples: str | None = None  # a text file, one example query per line

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"transform must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.dim < 2:
            raise InputError(f"transform dimension must be at least 2, got {self.dim}")


#: The default transform, chosen on the dev sets (README, "Retrieval on documents").
DEFAULT_TRANSFORM_SETTINGS = TransformSettings()


@dataclass
class FittedTransform:
    """What the assembler puts in front of the index, and the query shift."""

    kind: str  # what was fitted (may be 'center' where 'whiten' had too few vectors)
    chain: list  # faiss.VectorTransform, applied in order
    out_dim: int
    query_shift: np.ndarray | None  # (d_in,) float32, added to query vectors before search
    note: str | None = None

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The vectors as the index sees them."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        for vt in self.chain:
            x = vt.apply(x)
        return x

    def wrap(self, inner: faiss.Index) -> faiss.Index:
        """``inner`` (of dimension ``out_dim``) behind the chain, or as is for no transform."""
        if not self.chain:
            return inner
        index = faiss.IndexPreTransform(inner)
        for vt in reversed(self.chain):
            index.prepend_transform(vt)  # faiss's wrapper keeps the transforms alive
        return index


def fit_transform(docs: np.ndarray, queries: np.ndarray | None,
                  settings: TransformSettings) -> FittedTransform:
    """Fit on a sample of document vectors; ``queries`` (query-like vectors) set the shift."""
    d = docs.shape[1]
    if settings.kind == "none" or len(docs) < 2:
        return FittedTransform("none", [], d, None,
                               None if settings.kind == "none" else "fewer than 2 vectors: none")
    docs = np.ascontiguousarray(docs, dtype=np.float32)
    kind, note = settings.kind, None
    dim = min(settings.dim, d)
    if kind == "whiten" and len(docs) < MIN_SAMPLES_PER_DIM * dim:
        kind = "center"
        note = (f"whitening to {dim} dims needs {MIN_SAMPLES_PER_DIM * dim} vectors, the corpus "
                f"has {len(docs)}: centred instead")
    if kind == "center":
        first = faiss.CenteringTransform(d)
        out = d
    else:
        first = faiss.PCAMatrix(d, dim, -0.5, False)
        out = dim
    first.train(docs)
    chain = [first, faiss.NormalizationTransform(out, 2.0)]
    shift = None
    if queries is not None and len(queries):
        shift = (docs.mean(0) - np.asarray(queries, dtype=np.float32).mean(0)).astype(np.float32)
    return FittedTransform(kind, chain, out, shift, note)


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

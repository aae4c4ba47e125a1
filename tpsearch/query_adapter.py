"""A query-side linear map fitted on the corpus' own (pseudo-query, document) pairs.

The query shift moves query vectors to the documents' region by a mean. The adapter goes one
step further, still without a labelled query: each sampled document's first sentences (the
first, then up to ``more_sentences`` after it in its first passage), encoded with the query
prompt, are pseudo-queries whose answer is their own document (the inverse cloze task of Lee
et al. 2019, arXiv 1906.00300). A square map ``W`` of the index's space is fitted
so that a pseudo-query, mapped, is nearer its own document (the mean of its passages, as the
index stores them) than every other sampled document: InfoNCE over all pairs at once, with a
pull of ``W`` toward the identity that keeps it close to doing nothing. Documents are untouched
(the map is applied to queries only), so the index and an incremental update's segments keep
their vectors.

The map lives in the index's output space (after the transform's chain); it is stored in the
encoder's input space, as ``x -> x @ A + b`` applied after the query shift, so that the index's
own chain turns ``A``'s output into ``W`` of the chain's output. That needs the chain's linear
part ``L`` to have full row rank (centering, EmbedFilter's projection and PCA whitening do).
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from .index import apply_chain
from .npyfile import read_float32


@dataclass(frozen=True)
class AdapterSettings:
    """How the map is fitted (chosen on all dev sets together: docs/retrieval-quality.md)."""

    temperature: float = 0.05
    pull: float = 0.01  # weight of ||W - I||^2 beside the InfoNCE loss
    steps: int = 200  # full-batch Adam steps (converged by 100 on the dev sets)
    learning_rate: float = 1e-3
    min_pairs: int = 100  # fewer first sentences than this: no adapter (too few to fit on)
    #: further pseudo-queries per sampled document: its first passage's sentences 2, 3, 4
    more_sentences: int = 3


DEFAULT_ADAPTER_SETTINGS = AdapterSettings()


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def document_targets(passages: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """Each of ``n`` documents' unit mean of its (transformed, unit) passage vectors;
    ``owner[i]`` is passage ``i``'s document."""
    out = np.zeros((n, passages.shape[1]), np.float64)
    np.add.at(out, owner, passages)
    return _unit(out).astype(np.float32)


def fit_adapter(queries: np.ndarray, targets: np.ndarray,
                settings: AdapterSettings = DEFAULT_ADAPTER_SETTINGS,
                labels: np.ndarray | None = None) -> np.ndarray:
    """``W`` (dim x dim, float32) such that ``unit(q @ W)`` ranks its own target first among
    ``targets``, both as the index sees them: ``queries[i]`` is a pseudo-query for
    ``targets[labels[i]]`` (by default ``targets[i]``: one pseudo-query per document). Full
    batch and started at the identity, so the same pairs give the same map."""
    import torch

    if labels is None:
        if len(queries) != len(targets):
            raise ValueError(f"{len(queries)} pseudo-queries for {len(targets)} documents")
        labels = np.arange(len(queries))
    elif len(labels) != len(queries):
        raise ValueError(f"{len(labels)} labels for {len(queries)} pseudo-queries")
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    t = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32))
    own = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    eye = torch.eye(q.shape[1])
    w = torch.nn.Parameter(eye.clone())
    opt = torch.optim.Adam([w], lr=settings.learning_rate)
    for _ in range(settings.steps):
        mapped = torch.nn.functional.normalize(q @ w, dim=1)
        loss = torch.nn.functional.cross_entropy(mapped @ t.T / settings.temperature, own)
        loss = loss + settings.pull * ((w - eye) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return w.detach().numpy().astype(np.float32)


def affine_part(chain: list, d_in: int) -> tuple[np.ndarray, np.ndarray]:
    """``(L, c)`` with ``chain`` minus its final normalisation ``= x @ L + c`` (row vectors)."""
    steps = [faiss.downcast_VectorTransform(vt) for vt in chain]
    if steps and isinstance(steps[-1], faiss.NormalizationTransform):
        steps = steps[:-1]
    def run(x: np.ndarray) -> np.ndarray:
        return apply_chain(steps, x).astype(np.float64)
    c = run(np.zeros((1, d_in), np.float32))[0]
    return run(np.eye(d_in, dtype=np.float32)) - c, c


def input_space_map(chain: list, w: np.ndarray, d_in: int) -> np.ndarray:
    """The (d_in + 1, d_in) float32 array ``M``: query ``x`` (shifted) becomes
    ``x @ M[:-1] + M[-1]``, whose image through ``chain``'s affine part is that of ``x``
    times ``w``."""
    lin, c = affine_part(chain, d_in)
    back = np.linalg.pinv(lin)  # (out, d_in): lin @ back = I where lin has full row rank
    a = lin @ w.astype(np.float64) @ back
    b = (c @ w.astype(np.float64) - c) @ back
    return np.vstack([a, b[None]]).astype(np.float32)


def apply_query_map(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Query vectors (rows, already shifted) through a stored map, one row at a time: a
    query's vector never depends on the others in the batch (a matrix product may round a
    row differently among others)."""
    x = np.asarray(x, np.float32)
    a, b = m[:-1], m[-1]
    out = np.empty((len(x), a.shape[1]), np.float32)
    for i, row in enumerate(x):
        out[i] = row @ a + b
    return out


def read_query_map(path, dim: int) -> np.ndarray:
    """A stored (dim + 1, dim) float32 map, checked before it is read."""
    return read_float32(path, (dim + 1, dim), f"a float32 ({dim + 1}, {dim}) query map")

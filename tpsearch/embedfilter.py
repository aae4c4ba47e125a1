"""EmbedFilter (arXiv 2606.07502): the unembedding matrix's edge spectrum projected out.

A decoder's unembedding matrix ``W`` (vocab x dim) writes frequent, uninformative tokens into the
hidden states through the directions of its largest and smallest singular values; last-token
embeddings lean on those directions whatever the text says. The filter keeps the orthogonal
complement: with ``W = U S V^T``, the embedding ``x`` becomes ``V_keep^T x``, where ``V_keep``
drops the ``top`` right singular vectors of the largest singular values and the ``bottom`` of the
smallest. That is a linear map to ``dim - top - bottom`` dimensions that preserves inner products
within the kept subspace, so it lives in the FAISS index's transform chain like the centering
(documents and queries pass through it alike) and shrinks the index.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import faiss
import numpy as np

from .errors import InputError

if TYPE_CHECKING:
    import torch


def parse_filter(value) -> tuple[int, int] | None:
    """``"16:16"``, ``(16, 16)``, or ``None``/``"none"``/``"off"`` (no filter)."""
    if value is None or (isinstance(value, str) and value.lower() in ("none", "off", "0:0")):
        return None
    try:
        top, bottom = value.split(":") if isinstance(value, str) else value
        top, bottom = int(top), int(bottom)
    except (ValueError, TypeError):
        raise InputError(f"the embed filter must look like TOP:BOTTOM (e.g. 16:16) or none, "
                         f"got {str(value)[:40]!r}") from None
    if top < 0 or bottom < 0 or top + bottom == 0:
        raise InputError(f"the embed filter drops TOP:BOTTOM >= 0 directions, not both 0; got "
                         f"{top}:{bottom}")
    return top, bottom


#: Rows of the unembedding converted to float64 at a time while summing its Gram matrix.
GRAM_ROWS = 16384


def kept_basis(unembedding: "np.ndarray | torch.Tensor", top: int, bottom: int) -> np.ndarray:
    """(dim, dim - top - bottom) float32: the right singular vectors of ``unembedding`` that the
    filter keeps, largest singular values first. Computed from the dim x dim Gram matrix (no
    SVD of the vocab-sized matrix)."""
    w = unembedding.detach().cpu().numpy() if hasattr(unembedding, "detach") else \
        np.asarray(unembedding)
    dim = w.shape[1]
    if top + bottom >= dim:
        raise InputError(f"the embed filter drops {top}+{bottom} directions of a {dim}-dim "
                         "model: nothing would be left")
    gram = np.zeros((dim, dim))
    for start in range(0, len(w), GRAM_ROWS):  # float64 sums, a slice at a time (no copy of W)
        part = np.asarray(w[start:start + GRAM_ROWS], dtype=np.float64)
        gram += part.T @ part
    values, vectors = np.linalg.eigh(gram)  # ascending
    order = np.argsort(-values, kind="stable")
    keep = order[top: dim - bottom]
    return np.ascontiguousarray(vectors[:, keep], dtype=np.float32)


def unembedding_of(model: "torch.nn.Module", exclude: int | None = None) -> np.ndarray | None:
    """The model's unembedding rows of its own vocabulary (``exclude``: an added token's row,
    such as ``<PST>``), float32; None where the model was loaded without an output head and its
    embeddings are not tied (the filter is then skipped, and the manifest says so)."""
    import torch

    from .tp import output_head
    from .tp import text_config

    try:
        w = output_head(model, keep=False)
    except InputError:
        return None
    w = w[: int(text_config(model).vocab_size)].detach()
    if exclude is not None and exclude < len(w):
        w = torch.cat([w[:exclude], w[exclude + 1:]])
    return w.float().cpu().numpy()


def filter_transform(basis: np.ndarray) -> faiss.LinearTransform:
    """A trained FAISS ``LinearTransform`` computing ``basis^T x``."""
    d_in, d_out = basis.shape
    lt = faiss.LinearTransform(d_in, d_out, False)
    faiss.copy_array_to_vector(np.ascontiguousarray(basis.T, dtype=np.float32).ravel(), lt.A)
    lt.is_trained = True
    return lt

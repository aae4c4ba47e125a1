"""Document rankings from passage scores, and fusion of a dense and a lexical ranking."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

#: Search modes: vectors only, BM25 only, or the two fused.
MODES = ("dense", "lexical", "hybrid")
FUSIONS = ("rrf", "minmax", "zscore")
RRF_K = 60
#: Hybrid defaults, chosen on the dev sets (README, "Retrieval on documents").
DEFAULT_FUSION = "zscore"
DEFAULT_LEXICAL_WEIGHT = 0.5  # 0.6 until 0.9; since 0.11 only where the length is unknown
#: Since 0.11 a build's lexical weight follows its BM25 units' mean length in terms (after
#: stemming and stop words): ``INTERCEPT + SLOPE * log2(length)`` within ``RANGE``. BM25 has
#: more evidence in a long text and the last-token vector less; chosen on STS-B dev (6.7 terms:
#: 0.26), pydoc-dev (56: 0.49) and scifact-dev (185: 0.61) together
#: (docs/retrieval-quality.md, "A lexical weight by document length").
WEIGHT_BY_LENGTH_INTERCEPT = 0.05
WEIGHT_BY_LENGTH_SLOPE = 0.075
WEIGHT_BY_LENGTH_RANGE = (0.25, 0.65)


def lexical_weight_for(mean_length: float | None) -> float:
    """The default lexical weight of an index whose BM25 units hold ``mean_length`` terms on
    average (None or 0: unknown, the fixed default), to two decimals."""
    if not mean_length or not math.isfinite(mean_length) or mean_length <= 0:
        return DEFAULT_LEXICAL_WEIGHT
    lo, hi = WEIGHT_BY_LENGTH_RANGE
    w = WEIGHT_BY_LENGTH_INTERCEPT + WEIGHT_BY_LENGTH_SLOPE * math.log2(mean_length)
    return round(min(hi, max(lo, w)), 2)


@dataclass(frozen=True)
class FusionSettings:
    """How hybrid mode fuses the dense and lexical rankings; recorded in the manifest."""

    method: str = field(default=DEFAULT_FUSION, metadata={"choices": FUSIONS})
    lexical_weight: float = field(default=DEFAULT_LEXICAL_WEIGHT, metadata={"min": 0.0, "max": 1.0})


#: What tpsearch 0.2 and 0.3 fused with: an index that records no fusion gets this.
LEGACY_FUSION = FusionSettings("minmax", 0.7)


def best_per_document(scores: np.ndarray, rows: np.ndarray, doc_of_row: np.ndarray,
                      k: int) -> list[tuple[int, int, float]]:
    """(document, best passage row, score) of the ``k`` best documents, each scored by its best
    passage among ``rows``; ``rows`` are sorted best first, ``-1`` marks an empty slot."""
    seen: dict[int, tuple[int, float]] = {}
    for s, r in zip(scores, rows):
        if r < 0:
            continue
        d = int(doc_of_row[r])
        if d not in seen:
            seen[d] = (int(r), float(s))
            if len(seen) == k:
                break
    return [(d, r, s) for d, (r, s) in seen.items()]


def fuse(dense: Sequence[tuple[int, int, float]], lexical: Sequence[tuple[int, int, float]],
         method: str = DEFAULT_FUSION, weight: float = DEFAULT_LEXICAL_WEIGHT) -> list[tuple[int, int, float]]:
    """One ranking of documents from two: ``weight`` is the lexical side's share.

    ``minmax``: each list's scores scaled to [0, 1] over its own top, then mixed;
    ``zscore``: each list's scores standardised over its own top (mean 0, deviation 1), then
    mixed: unlike min-max, one outlying top score does not squash the rest of its list. A
    lexical list shorter than the dense one is padded with zeros first (the BM25 score of the
    documents without a query word), so that one matching document stands out rather than
    being its list's mean; a document missing from a list gets that list's lowest value;
    ``rrf``: reciprocal rank fusion, weighted. A document's passage is the dense side's where
    it has one (the passage a reader should see), else the lexical side's.
    """
    if method not in FUSIONS:
        raise ValueError(f"unknown fusion {method!r}; use {' or '.join(FUSIONS)}")
    fused: dict[int, float] = {}
    passage: dict[int, int] = {}
    floors = []  # (documents of a list, what a document missing from it gets)
    for ranking, w in ((lexical, weight), (dense, 1.0 - weight)):
        if not ranking:
            continue
        hi, lo = ranking[0][2], ranking[-1][2]
        if method == "zscore":
            values = np.array([s for _, _, s in ranking], dtype=np.float64)
            if ranking is lexical and len(lexical) < len(dense):
                values = np.concatenate([values, np.zeros(len(dense) - len(lexical))])
            mean, std = float(values.mean()), float(values.std())
            floors.append(({d for d, _, _ in ranking},
                           float(w * ((values.min() - mean) / std if std > 0 else 0.0))))
        for rank, (d, r, s) in enumerate(ranking):
            if method == "rrf":
                part = 1.0 / (RRF_K + rank + 1)
            elif method == "zscore":
                part = (s - mean) / std if std > 0 else 0.0
            else:
                part = (s - lo) / (hi - lo) if hi > lo else 1.0
            fused[d] = fused.get(d, 0.0) + w * part
            passage[d] = r  # dense last, so the dense passage wins
    for members, floor in floors:  # z-scores: missing from a list = its lowest score there
        for d in fused:
            if d not in members:
                fused[d] += floor
    order = sorted(fused, key=lambda d: -fused[d])
    return [(d, passage[d], fused[d]) for d in order]

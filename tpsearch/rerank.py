"""An opt-in reranker that uses the index's own decoder: query likelihood (UPR).

Unsupervised Passage Re-ranking (Sachan et al., 2022, arXiv 2204.07496) scores a passage by how
likely the decoder finds the query after it: the mean log-probability of the query's tokens given
``template`` filled with the passage. Training-free, and the model is the one the index already
pins (its weights are checked when the searcher loads it). One forward pass per batch of
(passage, query) rows; rows are padded by hand with position ids that skip the padding, so a
passage's score does not depend on its batch-mates.

The first-stage ranking is not thrown away: the final score of each of the top ``depth``
documents mixes the two, each scaled to [0, 1] over those documents (``weight`` is the
reranker's share). With the bundled 270M model the likelihood alone lost 6.7 nDCG@10 on
scifact-dev while gaining 0.1-2 on pydoc-dev; a small share is what held on both (README,
"Reranking with the decoder").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .errors import InputError
from .shapes import padded_inputs, plan_batches, to_device
from .tp import model_lock, output_head, text_config

#: The instruction around a passage; the query's tokens follow it and are what is scored.
DEFAULT_TEMPLATE = "Passage: {passage}\nA query that this passage answers:"
#: The depth the README measures `--rerank` at (chosen on the dev sets).
DEFAULT_DEPTH = 10
#: Largest rerank depth accepted (each document costs one passage forward pass).
MAX_DEPTH = 1000


@dataclass(frozen=True)
class RerankSettings:
    """How ``rerank=N`` re-scores the first stage's best ``N`` documents."""

    template: str = DEFAULT_TEMPLATE
    #: The reranker's share of the final score (0: first stage only; 1: likelihood only);
    #: chosen on both dev sets (README, "Reranking with the decoder").
    weight: float = field(default=0.2, metadata={"min": 0.0, "max": 1.0})
    #: Passage tokens kept (cut at the end); the query is never cut.
    passage_tokens: int = field(default=256, metadata={"min": 8, "max": 1 << 16})
    max_batch_tokens: int = field(default=8192, metadata={"min": 64})

    def __post_init__(self) -> None:
        if "{passage}" not in self.template:
            raise InputError("the rerank template needs a {passage} slot")
        if not 0.0 <= self.weight <= 1.0:
            raise InputError(f"rerank weight must lie in 0..1, got {self.weight}")


class QueryLikelihoodScorer:
    """Scores (query, passage) pairs by the decoder's mean log-probability of the query."""

    def __init__(self, model: nn.Module, tokenizer, settings: RerankSettings = RerankSettings(),
                 exclude_ids: Sequence[int] = ()):
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        config = text_config(model)
        self.vocab = int(config.vocab_size)
        self.softcap = getattr(config, "final_logit_softcapping", None)
        self.exclude = [i for i in exclude_ids if 0 <= i < self.vocab]  # e.g. <PST>
        head, tail = settings.template.split("{passage}", 1)
        self._head = self._ids(head, special=True)  # the template's fixed tokens, once
        self._tail = self._ids(tail)
        self.pad_id = next((int(c) for c in (tokenizer.pad_token_id, tokenizer.eos_token_id)
                            if c is not None), 0)

    def _ids(self, text: str, special: bool = False) -> list[int]:
        return self.tokenizer(text, add_special_tokens=special)["input_ids"]

    def rows(self, query: str, passages: Sequence[str]) -> tuple[list[list[int]], int]:
        """Token rows (prefix + passage + instruction tail + query) and the query's length."""
        q = self._ids(" " + query.strip())
        if not q:
            raise InputError("cannot rerank an empty query")
        keep = self.settings.passage_tokens
        return [self._head + self._ids(p)[:keep] + self._tail + q for p in passages], len(q)

    @torch.inference_mode()
    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        """Mean log-probability of ``query``'s tokens after each passage (float64, higher =
        more relevant), in ``passages`` order."""

        if not passages:
            return np.zeros(0)
        rows, m = self.rows(query, passages)
        out = np.zeros(len(rows))
        weight = output_head(self.model)
        # an untied head read from the checkpoint has no row for an added <PST>
        weight = weight[: self.vocab]
        exclude = [i for i in self.exclude if i < weight.shape[0]]
        device = weight.device
        lengths = [len(r) for r in rows]
        for batch in plan_batches(lengths, len(rows), self.settings.max_batch_tokens):
            sub = [rows[j] for j in batch]
            width = max(len(r) for r in sub)
            inputs, _, _ = padded_inputs(sub, width, self.pad_id)
            with model_lock(self.model):
                hidden = self.model(**{k: to_device(v, device) for k, v in inputs.items()},
                                    use_cache=False)[0]
            # left padding: the query's m tokens are the last m columns, each predicted by the
            # column before it
            states = hidden[:, width - m - 1: width - 1]
            logits = (states @ weight.T).float()
            if self.softcap:
                logits = torch.tanh(logits / self.softcap) * self.softcap
            if exclude:
                logits[..., exclude] = float("-inf")
            logp = torch.log_softmax(logits, dim=-1)
            target = to_device(inputs["input_ids"][:, width - m:], device)
            got = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1).mean(dim=1)
            out[batch] = got.double().cpu().numpy()
        return out


def scaled(values: np.ndarray) -> np.ndarray:
    """Min-max scaling to [0, 1] (all ones when the values are equal)."""
    lo, hi = float(np.min(values)), float(np.max(values))
    return (values - lo) / (hi - lo) if hi > lo else np.ones_like(values, dtype=np.float64)


def rerank_order(first_stage: np.ndarray, likelihood: np.ndarray, weight: float) -> tuple[np.ndarray, np.ndarray]:
    """(order, scores): the documents re-sorted by ``(1 - weight) * scaled(first_stage) +
    weight * scaled(likelihood)``; ties keep the first stage's order."""
    mixed = (1.0 - weight) * scaled(np.asarray(first_stage, dtype=np.float64)) + \
        weight * scaled(np.asarray(likelihood, dtype=np.float64))
    order = np.argsort(-mixed, kind="stable")
    return order, mixed[order]


#: ``output_head`` lives in :mod:`tpsearch.tp` (re-exported here, where tpsearch 0.4 kept it).
__all__ = ["QueryLikelihoodScorer", "RerankSettings", "output_head", "rerank_order", "scaled",
           "MAX_DEPTH"]

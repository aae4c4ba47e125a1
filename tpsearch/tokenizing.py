"""Prompting and tokenising texts for an encoder: templates filled, sentences normalised,
over-long sentences cut to fit (never the prompt), and the sentence's token span found for mean
pooling. One job, apart from running the model (:mod:`tpsearch.encoder`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from .errors import InputError
from .prompts import PLACEHOLDER, SENTENCE_SLOT, PromptSpec


@dataclass
class Tokenized:
    """Token ids of prompted texts: ``n_templates`` consecutive rows per text."""

    input_ids: list[list[int]]
    n_templates: int
    truncated: list[bool] = field(default_factory=list)  # one flag per text
    spans: list[tuple[int, int]] | None = None  # the sentence's tokens per row (mean pooling)

    @property
    def num_texts(self) -> int:
        return len(self.input_ids) // self.n_templates

    @property
    def num_tokens(self) -> int:
        return sum(len(x) for x in self.input_ids)


class PromptTokenizer:
    """Turns texts into the token-id rows an encoder runs."""

    def __init__(self, tokenizer, prompt: PromptSpec, max_length: int,
                 placeholder_id: int | None, pooling: str):
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.max_length = max_length
        self.placeholder_id = placeholder_id
        self.pooling = pooling

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text on its own (no prompt, no special tokens)."""
        if not texts:
            return []
        return [len(r) for r in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    @property
    def prompt_tokens(self) -> int:
        """Tokens the prompt adds around a text (the longest template, special tokens included)."""
        if not hasattr(self, "_prompt_tokens"):
            ids = self.tokenizer([self.prompt.fill(t, "") for t in self.prompt.templates],
                                 add_special_tokens=True)["input_ids"]
            self._prompt_tokens = max(len(r) for r in ids) + 1  # + the final '.' normalisation adds
        return self._prompt_tokens

    def tokenize(self, texts: Sequence[str]) -> Tokenized:
        """Prompt, normalise and tokenise ``texts``; over-long sentences are cut to fit."""
        n_t = len(self.prompt.templates)
        if not texts:
            return Tokenized(input_ids=[], n_templates=n_t, truncated=[],
                             spans=[] if self.pooling == "mean" else None)
        sentences = [self.prompt.sentence(t) for t in texts for _ in range(n_t)]
        templates = [t for _ in texts for t in self.prompt.templates]
        flat = [self.prompt.fill(t, x) for t, x in zip(templates, sentences)]
        ids = self.tokenizer(flat, add_special_tokens=True)["input_ids"]
        truncated = [False] * len(texts)
        for j, row in enumerate(ids):
            if len(row) > self.max_length:
                ids[j], sentences[j] = self._truncate(sentences[j], templates[j], row)
                flat[j] = self.prompt.fill(templates[j], sentences[j])
                truncated[j // n_t] = True
        if self.placeholder_id is not None:
            for j, row in enumerate(ids):
                if self.placeholder_id not in row:
                    raise InputError(
                        f"prompt {templates[j]!r} lost its {PLACEHOLDER} token when tokenised"
                    )
        spans = None
        if self.pooling == "mean":
            spans = [self._sentence_span(f, t, x) for f, t, x in zip(flat, templates, sentences)]
        return Tokenized(input_ids=ids, n_templates=n_t, truncated=truncated, spans=spans)

    def _sentence_span(self, prompt: str, template: str, sentence: str) -> tuple[int, int]:
        """Token positions [start, end) of the sentence inside the prompted text."""
        start = len(template[: template.index(SENTENCE_SLOT)].lstrip())
        end = start + len(sentence)
        enc = self.tokenizer(prompt, add_special_tokens=True, return_offsets_mapping=True)
        inside = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < end and b > start]
        if not inside:  # an empty sentence: pool the last token
            n = len(enc["input_ids"])
            return n - 1, n
        return inside[0], inside[-1] + 1

    def _truncate(self, sentence: str, template: str, row: list[int]) -> tuple[list[int], str]:
        """Shorten the sentence (never the prompt) until the prompted text fits max_length."""
        limit = self.max_length
        sent_ids = self.tokenizer(sentence, add_special_tokens=False)["input_ids"]
        keep = len(sent_ids) - (len(row) - limit)
        while keep > 0:
            cut = self.tokenizer.decode(sent_ids[:keep], skip_special_tokens=True)
            new = self.tokenizer(self.prompt.fill(template, cut), add_special_tokens=True)["input_ids"]
            if len(new) <= limit:
                return new, cut
            keep -= len(new) - limit
        raise InputError(
            f"max_length {limit} is too small: the prompt alone takes about "
            f"{len(row) - len(sent_ids)} tokens"
        )

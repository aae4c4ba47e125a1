"""Cutting documents into passages: sentence-aware, under a token budget, with an overlap.

A passage is a span ``text[start:end]`` of the document, so it always maps back to the exact
characters it came from. Units are sentences; a sentence longer than the budget is cut at word
boundaries (and a word longer than that at characters). Units are packed greedily into passages
of at most ``max_tokens`` tokens; the next passage starts with the last sentences of the previous
one, as many as fit in ``overlap`` tokens.

Token counts come from a callable (the model's tokenizer), applied to one sentence or piece at a
time, so a document of any length is never tokenised as a whole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from .errors import InputError

#: Counts tokens of several texts at once (without special tokens).
TokenCounter = Callable[[Sequence[str]], Sequence[int]]

# A sentence ends after . ! or ? (and closing quotes or brackets) followed by white space,
# or at a line break.
_BOUNDARY = re.compile(r"""[.!?]+["'\u201d\u2019)\]]*\s+|\n\s*""")
#: Characters per token assumed when cutting an over-long sentence before counting it.
_CHARS_PER_TOKEN = 6
_COUNT_BATCH = 256


@dataclass(frozen=True)
class PassageSettings:
    """How documents become passages; recorded in the manifest.

    ``max_tokens`` is the budget of the prompted text (prompt, title and passage together);
    ``None`` keeps each document whole (truncated at the encoder's max length, as before).
    """

    max_tokens: int | None = 256
    overlap: int = 64  # PASSAGE_OVERLAP_SHARE of max_tokens

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 8:
            raise InputError(f"passage tokens must be at least 8 (or 0 for whole documents), "
                             f"got {self.max_tokens}")
        if self.overlap < 0 or (self.max_tokens is not None and self.overlap >= self.max_tokens):
            raise InputError(f"passage overlap must lie in 0..passage tokens - 1, got {self.overlap}")

    @property
    def whole_documents(self) -> bool:
        return self.max_tokens is None

    def to_dict(self) -> dict:
        return {"max_tokens": self.max_tokens, "overlap": self.overlap}


#: The default passages, chosen on the dev sets (README, "Retrieval on documents"): the one
#: place the library, the CLI and config files read them from.
DEFAULT_PASSAGE_SETTINGS = PassageSettings()
#: The overlap, as a share of the passage budget, where only the budget is given.
PASSAGE_OVERLAP_SHARE = 0.25


@dataclass(frozen=True)
class Passage:
    """One passage of a document: its number and its character span."""

    number: int
    start: int
    end: int


def sentence_spans(text: str) -> Iterator[tuple[int, int]]:
    """Spans of the sentences of ``text``, without surrounding white space."""
    pos = 0
    for m in _BOUNDARY.finditer(text):
        yield from _trimmed(text, pos, m.end())
        pos = m.end()
    yield from _trimmed(text, pos, len(text))


def _trimmed(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if end > start:
        yield start, end


def _cut(text: str, start: int, end: int, max_chars: int) -> list[tuple[int, int]]:
    """``[start, end)`` cut into pieces of at most ``max_chars``, at white space where possible."""
    pieces = []
    while end - start > max_chars:
        cut = text.rfind(" ", start + 1, start + max_chars + 1)
        if cut <= start:
            cut = start + max_chars
        pieces.extend(_trimmed(text, start, cut))
        start = cut
    pieces.extend(_trimmed(text, start, end))
    return pieces


def _units(text: str, max_tokens: int, count: TokenCounter) -> list[tuple[int, int, int]]:
    """(start, end, tokens) of sentences and pieces of sentences, each within ``max_tokens``."""
    spans = [p for s in sentence_spans(text) for p in _cut(text, *s, max_tokens * _CHARS_PER_TOKEN)]
    units: list[tuple[int, int, int]] = []
    for i in range(0, len(spans), _COUNT_BATCH):
        batch = spans[i:i + _COUNT_BATCH]
        for (a, b), n in zip(batch, count([text[a:b] for a, b in batch])):
            units.extend(_fit(text, a, b, int(n), max_tokens, count))
    return units


def _fit(text: str, a: int, b: int, n: int, max_tokens: int,
         count: TokenCounter) -> list[tuple[int, int, int]]:
    """A span with ``n`` tokens, halved until every piece is within ``max_tokens``."""
    if n <= max_tokens or b - a <= 1:
        return [(a, b, n)]
    out = []
    for c, d in _cut(text, a, b, max(1, (b - a + 1) // 2)):
        out.extend(_fit(text, c, d, int(count([text[c:d]])[0]), max_tokens, count))
    return out


def split_passages(text: str | None, max_tokens: int, overlap: int,
                   count: TokenCounter) -> list[Passage]:
    """Passages of ``text`` with at most ``max_tokens`` tokens each (token counts summed over
    sentences), consecutive passages sharing up to ``overlap`` tokens of whole sentences."""
    if not text or not text.strip():
        return []
    units = _units(text, max_tokens, count)
    passages: list[Passage] = []
    first = 0
    while first < len(units):
        total, last = 0, first
        while last < len(units) and (last == first or total + units[last][2] <= max_tokens):
            total += units[last][2]
            last += 1
        passages.append(Passage(len(passages), units[first][0], units[last - 1][1]))
        if last >= len(units):
            break
        nxt, shared = last, 0
        while nxt - 1 > first and shared + units[nxt - 1][2] <= overlap:
            nxt -= 1
            shared += units[nxt][2]
        first = nxt
    return passages

"""Mapper: one chunk of corpus rows in, one shard of passages and their vectors out."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..encoder import TPEncoder
from ..errors import InputError
from ..passages import PassageSettings, split_passages
from .reader import Chunk, join_title, window_digest
from .writer import Shard

#: The fewest tokens a passage may be given once the prompt and title are counted.
MIN_PASSAGE_TOKENS = 16


@dataclass
class StageTimes:
    """Seconds spent per stage, summed over the build."""

    read: float = 0.0
    tokenize: float = 0.0
    encode: float = 0.0
    write: float = 0.0
    index: float = 0.0
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        d = {k: round(v, 3) for k, v in vars(self).items() if k != "extra"}
        d.update({k: round(v, 3) for k, v in self.extra.items()})
        return d


@dataclass
class MapperOptions:
    """What the mapper needs beyond the encoder."""

    batch_size: int
    max_batch_tokens: int | None
    strict: bool
    id_column: str
    text_column: str
    passages: PassageSettings


class ChunkEmbedder:
    """Skips null/empty texts (or refuses them with ``strict``), cuts the rest into passages
    (the title goes with each), and embeds them."""

    def __init__(self, encoder: TPEncoder, options: MapperOptions):
        self.encoder = encoder
        self.o = options

    def _check(self, chunk: Chunk) -> list[int]:
        """Rows with something to embed: a text, or at least a title."""
        titles = chunk.titles or [None] * len(chunk.texts)
        keep = [i for i, (t, h) in enumerate(zip(chunk.texts, titles))
                if (t is not None and t.strip()) or (h is not None and h.strip())]
        if self.o.strict and len(keep) < len(chunk.texts):
            bad = next(i for i in range(len(chunk.texts)) if i not in set(keep))
            raise InputError(
                f"corpus row {chunk.start + bad} (id {chunk.ids[bad]!r}): column "
                f"{self.o.text_column!r} is null or empty (--strict)")
        return keep

    def passages(self, text: str, title_tokens: int = 0) -> list[tuple[int, int]]:
        """Character spans of the passages of one document whose title (if any) takes
        ``title_tokens`` tokens."""
        ps = self.o.passages
        if ps.whole_documents or not text.strip():  # a title-only document: one passage
            return [(0, len(text))]
        room = ps.max_tokens - self.encoder.prompt_tokens - (title_tokens + 1 if title_tokens else 0)
        room = max(MIN_PASSAGE_TOKENS, room)
        if len(text.encode("utf8")) < room:  # fewer bytes than the budget: fewer tokens too
            return [(len(text) - len(text.lstrip()), len(text.rstrip()))]
        return [(p.start, p.end) for p in
                split_passages(text, room, min(ps.overlap, room - 1), self.encoder.count_tokens)]

    def prepare(self, chunk: Chunk) -> "Prepared":
        """Everything before the model: checks, passages, tokenisation (runs ahead of the
        encoder in a background thread; the fast tokenizers release the GIL)."""
        t0 = time.perf_counter()
        keep = self._check(chunk)
        p = Prepared(chunk=chunk, documents=len(keep), digest=window_digest(chunk))
        titles = [chunk.titles[i] if chunk.titles is not None else None for i in keep]
        counts = dict(zip((t for t in titles if t), self.encoder.count_tokens([t for t in titles if t])))
        for i, title in zip(keep, titles):
            text = chunk.texts[i] or ""
            for n, (a, b) in enumerate(self.passages(text, counts.get(title, 0))):
                for c, values in chunk.metadata.items():
                    p.metadata.setdefault(c, []).append(values[i])
                p.rows.append(chunk.start + i)
                p.ids.append(chunk.ids[i])
                p.numbers.append(n)
                p.spans.append((a, b))
                p.bodies.append(text[a:b])
                p.titles.append(title)
                p.embedded.append(join_title(title, text[a:b]))
        p.tokenized = self.encoder.tokenize(p.embedded)
        p.seconds = time.perf_counter() - t0
        return p

    def encode(self, p: "Prepared", times: StageTimes,
               progress: Callable[[float], None] | None = None) -> Shard:
        """The model's part: vectors of the prepared passages, as a shard. ``progress`` gets
        the share of the window's corpus rows each forward pass finished."""
        t1 = time.perf_counter()
        if p.embedded:
            per_row = len(p.chunk.texts) / (len(p.tokenized.input_ids) or 1)
            on_batch = (lambda n: progress(n * per_row)) if progress is not None else None
            vectors = self.encoder.encode_tokenized(p.tokenized, batch_size=self.o.batch_size,
                                                   max_batch_tokens=self.o.max_batch_tokens,
                                                   on_batch=on_batch)
        else:
            vectors = np.zeros((0, self.encoder.dim), dtype=np.float32)
            if progress is not None:
                progress(len(p.chunk.texts))
        times.tokenize += p.seconds
        times.encode += time.perf_counter() - t1
        chunk = p.chunk
        return Shard(start=chunk.start, rows=p.rows, ids=p.ids, passages=p.numbers, spans=p.spans,
                     texts=p.bodies, titles=p.titles if chunk.titles is not None else None,
                     vectors=vectors, window_rows=len(chunk.texts), documents=p.documents,
                     skipped=len(chunk.texts) - p.documents, truncated=sum(p.tokenized.truncated),
                     tokens=p.tokenized.num_tokens, source_sha256=p.digest,
                     metadata={c: p.metadata.get(c, []) for c in chunk.metadata})


@dataclass
class Prepared:
    """A chunk cut into passages and tokenised, waiting for the encoder."""

    chunk: Chunk
    documents: int
    digest: str  # of the window's content, recorded in the shard
    rows: list = field(default_factory=list)
    ids: list = field(default_factory=list)
    numbers: list = field(default_factory=list)
    spans: list = field(default_factory=list)
    bodies: list = field(default_factory=list)
    titles: list = field(default_factory=list)
    embedded: list = field(default_factory=list)
    metadata: dict = field(default_factory=dict)  # column -> value per passage
    tokenized: object = None
    seconds: float = 0.0

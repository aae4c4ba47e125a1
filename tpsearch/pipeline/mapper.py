"""Mapper: one chunk of corpus rows in, one shard of normalised vectors out."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..encoder import TPEncoder
from ..errors import InputError
from .reader import Chunk
from .writer import Shard


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


class ChunkEmbedder:
    """Skips null/empty texts (or refuses them with ``strict``) and embeds the rest."""

    def __init__(self, encoder: TPEncoder, batch_size: int, store_text: bool, strict: bool,
                 id_column: str, text_column: str, max_batch_tokens: int | None = None):
        self.encoder = encoder
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.store_text = store_text
        self.strict = strict
        self.id_column = id_column
        self.text_column = text_column

    def __call__(self, chunk: Chunk, times: StageTimes) -> Shard:
        keep = [i for i, t in enumerate(chunk.texts) if t is not None and t.strip()]
        if self.strict and len(keep) < len(chunk.texts):
            bad = next(i for i, t in enumerate(chunk.texts) if t is None or not t.strip())
            raise InputError(
                f"corpus row {chunk.start + bad} (id {chunk.ids[bad]!r}): column "
                f"{self.text_column!r} is null or empty (--strict)"
            )
        texts = [chunk.texts[i] for i in keep]
        t0 = time.perf_counter()
        tokenized = self.encoder.tokenize(texts)
        t1 = time.perf_counter()
        if texts:
            vectors = self.encoder.encode_tokenized(tokenized, batch_size=self.batch_size,
                                                   max_batch_tokens=self.max_batch_tokens)
        else:
            vectors = np.zeros((0, self.encoder.dim), dtype=np.float32)
        times.tokenize += t1 - t0
        times.encode += time.perf_counter() - t1
        return Shard(
            start=chunk.start,
            rows=[chunk.start + i for i in keep],
            ids=[chunk.ids[i] for i in keep],
            texts=texts if self.store_text else None,
            vectors=vectors,
            window_rows=len(chunk.texts),
            skipped=len(chunk.texts) - len(keep),
            truncated=sum(tokenized.truncated),
            tokens=tokenized.num_tokens,
        )

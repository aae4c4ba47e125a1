"""Mapper: one chunk of corpus rows in, one shard of passages and their vectors out."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..errors import IndexDamaged, InputError
from ..passages import PassageSettings, split_passages
from .reader import Chunk, join_title, window_digest
from .reuse import BaseStore, doc_hash
from .writer import Shard

if TYPE_CHECKING:  # the assembler imports StageTimes from here without torch
    from ..encoder import TPEncoder

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

    def __init__(self, encoder: TPEncoder, options: MapperOptions, reuse: BaseStore | None = None):
        self.encoder = encoder
        self.o = options
        self.reuse = reuse

    def _check(self, chunk: Chunk) -> list[int]:
        """Rows with something to embed: a text, or at least a title."""
        titles = chunk.titles or [None] * len(chunk.texts)
        taken = chunk.keep or [False] * len(chunk.texts)
        keep = [i for i, (t, h, k) in enumerate(zip(chunk.texts, titles, taken))
                if k or (t is not None and t.strip()) or (h is not None and h.strip())]
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
        encoder in a background thread; the fast tokenizers release the GIL). A document the
        base version holds with the same content takes its passages and vectors from there."""
        t0 = time.perf_counter()
        keep = self._check(chunk)
        p = Prepared(chunk=chunk, documents=len(keep), digest=window_digest(chunk))
        titles = [chunk.titles[i] if chunk.titles is not None else None for i in keep]
        plan = []  # per kept document, in corpus order: (row, title, text, digest, reused)
        for i, title in zip(keep, titles):
            if chunk.keep is not None and chunk.keep[i]:  # an update keeps this document as is
                old = self.reuse.match(chunk.ids[i], None)
                if old is None:
                    raise IndexDamaged(f"document {chunk.ids[i]!r} is not in the index's store")
                if old.texts is None:
                    raise InputError("this index was built with --no-store-text, so it keeps no "
                                     "texts to rebuild from: build the changed corpus into it "
                                     "instead of adding or deleting by id")
                plan.append((i, title, "", old.digest, old))
                continue
            digest = doc_hash(title, chunk.texts[i])
            old = self.reuse.match(chunk.ids[i], digest) if self.reuse is not None else None
            if old is None and self.reuse is not None:
                known = self.reuse.known(chunk.ids[i])
                p.changed += known
                p.added += not known
            plan.append((i, title, chunk.texts[i] or "", digest, old))
        named = [t for _, t, _, _, old in plan if t and old is None]
        counts = dict(zip(named, self.encoder.count_tokens(named)))
        for i, title, text, digest, old in plan:
            if old is not None:
                p.reused += 1
                bodies = old.texts or [text[a:b] for a, b in old.spans]  # same content: same spans
                for j, (n, span, body, old_title) in enumerate(
                        zip(old.numbers, old.spans, bodies, old.titles)):
                    p.add(chunk, i, n, span, body, old_title, digest)
                    p.fixed.append((len(p.ids) - 1, old.vectors[j]))
                    p.truncated.append(bool(old.truncated[j]))
                    p.tokens.append(int(old.tokens[j]))
                continue
            for n, (a, b) in enumerate(self.passages(text, counts.get(title, 0))):
                p.add(chunk, i, n, (a, b), text[a:b], title, digest)
                p.encode_at.append(len(p.ids) - 1)
                p.embedded.append(join_title(title, text[a:b]))
                p.truncated.append(False)
                p.tokens.append(0)
        p.tokenized = self.encoder.tokenize(p.embedded)
        per_text = p.tokenized.n_templates
        for j, pos in enumerate(p.encode_at):
            p.truncated[pos] = p.tokenized.truncated[j]
            p.tokens[pos] = sum(len(r) for r in p.tokenized.input_ids[j * per_text:(j + 1) * per_text])
        p.seconds = time.perf_counter() - t0
        return p

    def encode(self, p: "Prepared", times: StageTimes,
               progress: Callable[[float], None] | None = None) -> Shard:
        """The model's part: vectors of the prepared passages that need encoding, beside the
        reused ones, as a shard. ``progress`` gets the share of the window's corpus rows each
        forward pass finished."""
        t1 = time.perf_counter()
        vectors = np.zeros((len(p.ids), self.encoder.dim), dtype=np.float32)
        for pos, v in p.fixed:
            vectors[pos] = v
        if p.embedded:
            per_row = len(p.chunk.texts) / (len(p.tokenized.input_ids) or 1)
            on_batch = (lambda n: progress(n * per_row)) if progress is not None else None
            encoded = self.encoder.encode_tokenized(p.tokenized, batch_size=self.o.batch_size,
                                                    max_batch_tokens=self.o.max_batch_tokens,
                                                    on_batch=on_batch)
            vectors[p.encode_at] = encoded
        elif progress is not None:
            progress(len(p.chunk.texts))
        times.tokenize += p.seconds
        times.encode += time.perf_counter() - t1
        chunk = p.chunk
        return Shard(start=chunk.start, rows=p.rows, ids=p.ids, passages=p.numbers, spans=p.spans,
                     texts=p.bodies, titles=p.titles if chunk.titles is not None else None,
                     vectors=vectors, window_rows=len(chunk.texts), documents=p.documents,
                     skipped=len(chunk.texts) - p.documents, truncated=sum(p.truncated),
                     tokens=sum(p.tokens), source_sha256=p.digest,
                     metadata={c: p.metadata.get(c, []) for c in chunk.metadata},
                     doc_hashes=p.hashes, passage_truncated=p.truncated, passage_tokens=p.tokens,
                     encoded_documents=p.documents - p.reused,
                     encoded_tokens=p.tokenized.num_tokens, reused=p.reused, changed=p.changed,
                     added=p.added)


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
    embedded: list = field(default_factory=list)  # prompted texts to encode
    encode_at: list = field(default_factory=list)  # their passage positions
    fixed: list = field(default_factory=list)  # (position, vector) reused from the base version
    hashes: list = field(default_factory=list)  # document content hash per passage
    truncated: list = field(default_factory=list)
    tokens: list = field(default_factory=list)
    metadata: dict = field(default_factory=dict)  # column -> value per passage
    reused: int = 0  # documents taken from the base version
    changed: int = 0  # documents of the base version with new content
    added: int = 0  # documents the base version did not have

    def add(self, chunk: Chunk, i: int, number: int, span: tuple[int, int], body: str,
            title: str | None, digest: str) -> None:
        """One passage of the document at chunk row ``i``."""
        for c, values in chunk.metadata.items():
            self.metadata.setdefault(c, []).append(values[i])
        self.rows.append(chunk.start + i)
        self.ids.append(chunk.ids[i])
        self.numbers.append(number)
        self.spans.append(span)
        self.bodies.append(body)
        self.titles.append(title)
        self.hashes.append(digest)
    tokenized: object = None
    seconds: float = 0.0

"""Helpers shared by the test modules: small corpora and build configurations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from conftest import CORPUS
from tpsearch.config import BuildConfig, ModelConfig
from tpsearch.layout import locate
from tpsearch.testing import save_tiny_model


def corpus_texts(n: int) -> list[str]:
    words = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega river stone".split()
    rng = np.random.default_rng(1)
    return [f"{CORPUS[i % len(CORPUS)]} {' '.join(rng.choice(words, 4))} {i}" for i in range(n)]


def write_corpus(path: Path, n: int = 120, ids=None, texts=None, row_group_size: int = 25, **extra):
    ids = ids if ids is not None else [f"doc-{i}" for i in range(n)]
    texts = texts if texts is not None else corpus_texts(n)
    pq.write_table(pa.table({"id": ids, "text": texts, **extra}), path, row_group_size=row_group_size)
    return path


#: One vector per document, nothing fitted, no lexical index: what these tests check (passages,
#: transforms and the lexical index have their own tests in test_documents.py).
WHOLE_DOCUMENTS = dict(passage_tokens=0, transform="none", lexical=False, mode="dense")
WHOLE_DOCUMENT_FLAGS = ["--passage-tokens", "0", "--transform", "none", "--no-lexical", "--mode", "dense"]


def config(tmp_path, model_dir, corpus, **kw) -> BuildConfig:
    """A build of ``corpus`` on a tiny model, exact float32 on every CPU (the default dtype
    "auto" is bfloat16 on AMX machines)."""
    model = ModelConfig(model=str(model_dir), device="cpu", batch_size=8, dtype="float32")
    return BuildConfig(corpus=str(corpus), out=str(tmp_path / "index"), model=model,
                       **{"shard_rows": 32, **WHOLE_DOCUMENTS, **kw})


def tiny_model(path: Path, arch: str, window: int | None = None) -> str:
    """A tiny ``arch`` decoder saved at ``path``; ``window`` overrides its sliding window where
    it has one (the conftest models' window of 8 sends every row to the sorted path)."""
    return str(save_tiny_model(path, arch, CORPUS, sliding_window=window))


def version_dir(out) -> Path:
    """The directory holding the files of an index directory's current version."""
    return locate(Path(out)).path


def assert_same_hits(got, want, tolerance: float = 1e-5) -> None:
    """Equal scores rank by rank, and each hit found in the other list with the same score
    (within ``tolerance``): FAISS orders exact ties arbitrarily, and the tiny models give some
    texts equal vectors. Hits tied with the last one may be cut at k differently: left out."""
    import pytest

    assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=tolerance)
    if not got:
        return
    last = got[-1].score
    for a, b in ((got, want), (want, got)):
        for h in a:
            if abs(h.score - last) <= tolerance:
                continue
            assert any((h.id, h.passage) == (o.id, o.passage) and abs(h.score - o.score) <= tolerance
                       for o in b), (h, [(o.id, o.passage, o.score) for o in b])

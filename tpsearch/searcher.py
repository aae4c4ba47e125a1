"""Searcher: query an index directory with queries encoded exactly as its documents were.

    from tpsearch import Searcher
    s = Searcher.open("demo-index")          # manifest, id map and index; model loads on first use
    hits = s.search("parse a JSON string", k=5)
    for h in hits: print(h.rank, h.score, h.id, h.text)

The encoder is rebuilt from the manifest alone (model, prompt templates, TP layers, output
layer, normalisation, max length, placeholder seed) and the model's weights are checked against
the hash recorded at build time.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import faiss
import numpy as np
import pyarrow.parquet as pq

from .encoder import TPEncoder
from .errors import ConfigMismatch
from .index import apply_search_params
from .loading import resolve_source
from .manifest import read_manifest


@dataclass(frozen=True)
class Hit:
    """One search result."""

    id: Any
    score: float
    rank: int
    text: str | None = None

    def to_dict(self) -> dict:
        return {"rank": self.rank, "score": self.score, "id": self.id, "text": self.text}


def _encoder_kwargs(manifest: dict) -> dict:
    e = manifest["encoder"]
    return dict(
        prompt=e["prompt"],
        tp_layers=tuple(e["tp_layers"]) if e["tp_layers"] else None,
        output_layer=e["output_layer"],
        max_length=e["max_length"],
        normalize_sentences=e["normalize_sentences"],
        placeholder_seed=e["placeholder_seed"],
        placeholder_init=e["placeholder_init"],
        pooling=e.get("pooling", "last"),
    )


def check_encoder(manifest: dict, encoder: TPEncoder) -> None:
    """Refuse an encoder whose settings or weights differ from the index's."""
    want, have = manifest["encoder"], encoder.settings.to_dict()
    diffs = [f"{k}: index {want.get(k)!r}, encoder {have.get(k)!r}"
             for k in ("templates", "tp_layers", "output_layer", "n_layers", "max_length",
                       "normalize_sentences", "placeholder_seed", "placeholder_init", "pooling")
             if want.get(k) != have.get(k)]
    if encoder.dim != manifest["dim"]:
        diffs.append(f"dim: index {manifest['dim']}, encoder {encoder.dim}")
    recorded = manifest["model"].get("weights_sha256")
    actual = encoder.source.weights_sha256 if encoder.source else None
    if recorded and actual and recorded != actual:
        diffs.append(f"weights sha256: index {recorded[:12]}..., encoder {actual[:12]}...")
    if diffs:
        raise ConfigMismatch("the encoder does not match the index: " + "; ".join(diffs))


class Searcher:
    """An opened index; thread-safe lazy model loading."""

    def __init__(self, directory: Path, manifest: dict, index: faiss.Index, ids: list,
                 texts: list | None, encoder: TPEncoder | None = None, device: str = "auto",
                 model: str | None = None):
        self.directory = directory
        self.manifest = manifest
        self.index = index
        self.ids = ids
        self.texts = texts
        self.device = device
        self._model_override = model
        self._encoder = encoder
        self._query_encoder: TPEncoder | None = None
        self._lock = threading.Lock()
        self.default_params = dict(manifest["index"].get("search_params") or {})
        if index.d != manifest["dim"]:
            raise ConfigMismatch(f"{directory}: index dimension {index.d} differs from the "
                                 f"manifest's {manifest['dim']}")
        if index.ntotal != len(ids):
            raise ConfigMismatch(f"{directory}: index holds {index.ntotal} vectors but the id map "
                                 f"{len(ids)} rows")
        if encoder is not None:
            check_encoder(manifest, encoder)

    @classmethod
    def open(cls, directory: str | Path, device: str = "auto", encoder: TPEncoder | None = None,
             model: str | None = None) -> "Searcher":
        """Open an index directory. ``model`` points to the weights if they moved (they are
        still checked against the recorded hash); ``encoder`` supplies a loaded one."""
        d = Path(directory)
        manifest = read_manifest(d)
        index = faiss.read_index(str(d / manifest["index"]["file"]))
        cols = ["id"] + (["text"] if manifest.get("store_text") else [])
        table = pq.read_table(d / manifest["id_map"], columns=cols)
        ids = table.column("id").to_pylist()
        texts = table.column("text").to_pylist() if "text" in cols else None
        return cls(d, manifest, index, ids, texts, encoder=encoder, device=device, model=model)

    # ------------------------------------------------------------------ encoder
    @property
    def encoder(self) -> TPEncoder:
        """The query encoder, loaded on first use and verified against the manifest."""
        with self._lock:
            if self._encoder is None:
                m = self.manifest["model"]
                spec = self._model_override or (m["path"] if m.get("kind") in ("gguf", "directory")
                                                else m["spec"])
                source = resolve_source(spec)
                recorded = m.get("weights_sha256")
                if recorded and source.weights_sha256 and source.weights_sha256 != recorded:
                    raise ConfigMismatch(
                        f"{self.directory}: the index was built with model {m['spec']!r} (weights "
                        f"sha256 {recorded[:12]}...), but {spec!r} now has weights "
                        f"{source.weights_sha256[:12]}...; rebuild the index or pass the original model"
                    )
                enc = TPEncoder.from_pretrained(spec, device=self.device, **_encoder_kwargs(self.manifest))
                check_encoder(self.manifest, enc)
                self._encoder = enc
            return self._encoder

    @property
    def query_encoder(self) -> TPEncoder:
        """The document encoder, or its variant with the index's query prompt."""
        if self._query_encoder is None:
            qp = self.manifest.get("query_prompt")
            enc = self.encoder
            self._query_encoder = enc.variant(prompt=qp) if qp else enc
        return self._query_encoder

    def embed_documents(self, texts: Sequence[str], batch_size: int = 32) -> list[list[float]]:
        """Vectors for texts (the LangChain ``Embeddings`` method name)."""
        return self.encoder.encode(list(texts), batch_size=batch_size).tolist()

    def embed_query(self, text: str) -> list[float]:
        """The vector of one query (LangChain's name); uses the query prompt if the index has one."""
        return self.query_encoder.encode([text])[0].tolist()

    # ------------------------------------------------------------------ search
    def search_vectors(self, vectors: np.ndarray, k: int = 10, **params) -> tuple[np.ndarray, np.ndarray]:
        """Raw FAISS search: (scores, rows), each (len(vectors), k); rows are -1 past the end."""
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        apply_search_params(self.index, {**self.default_params, **params})
        return self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)

    def _hits(self, scores: np.ndarray, rows: np.ndarray) -> list[Hit]:
        return [Hit(self.ids[r], float(s), rank, self.texts[r] if self.texts is not None else None)
                for rank, (s, r) in enumerate(zip(scores, rows), start=1) if r >= 0]

    def search(self, query: str, k: int = 10, **params) -> list[Hit]:
        """The top ``k`` documents for one query. ``params`` override nprobe / efSearch."""
        return self.search_batch([query], k=k, **params)[0]

    def search_batch(self, queries: Sequence[str], k: int = 10, batch_size: int = 32,
                     **params) -> list[list[Hit]]:
        """One hit list per query; queries are encoded in batches."""
        if not queries:
            return []
        vecs = self.query_encoder.encode(list(queries), batch_size=batch_size)
        scores, rows = self.search_vectors(vecs, k, **params)
        return [self._hits(s, r) for s, r in zip(scores, rows)]

    def __len__(self) -> int:
        return self.index.ntotal

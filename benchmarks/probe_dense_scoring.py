"""Three scorings of the dense side on probe_dense.py's cache, with 0.10's query adapter (a probe).

- ``max+mean``: a document scored by its best passage plus LAMBDA x the cosine to the unit mean
  of its passages (the search scores the best passage alone);
- ``depth``: hybrid's z-scores over each side's top K documents instead of 100 (the probe's
  BM25 ranking holds 100, so above that only the dense list grows);
- ``prompts``: queries encoded under the question prompt and under the documents' PromptEOL,
  each through its own adapter (fitted on its own prompt's pseudo-queries), averaged.

Hybrid uses 0.11's lexical weight by document length. Encodes only what ``prompts`` needs under
PromptEOL (queries, first sentences, sentences 2-4), cached beside the others::

    python benchmarks/probe_dense_scoring.py --cache runs/dense/1-5-int8
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from tpsearch.fusion import lexical_weight_for
from tpsearch.lexical import TermPostings
from tpsearch.query_adapter import AdapterSettings, fit_adapter

from probe_adapter_passages import open_set, sentence_table
from probe_adapter_sentences import probe_encoders
from probe_dense import cached, encode_probe, l2, zfuse
from probe_documents import doc_rank
from probe_retrieval import first_sentence


def adapted_queries(queries, firsts, more, more_owner, targets) -> np.ndarray:
    """Query vectors (filtered, raw) centred on the first sentences' mean and mapped by the
    adapter fitted as 0.10 fits it (first sentences + sentences 2-4 of the first passage)."""
    mu = firsts.mean(0)
    n = len(firsts)
    w = fit_adapter(np.vstack([l2(firsts - mu), l2(more - mu)]), targets, AdapterSettings(),
                    labels=np.r_[np.arange(n), more_owner])
    return l2(l2(queries - mu) @ w)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--sets", default="pydoc-dev,scifact-dev")
    args = ap.parse_args()
    enc, qenc, filt = probe_encoders("1:5")
    for name in args.sets.split(","):
        ds, data, out, x, _, targets = open_set(name, enc, qenc, args.cache, filt)
        n = len(targets)
        t24, d24, p24 = sentence_table(data, enc, n, 1, 4)
        first = p24 == 0
        pick = lambda z: z["last"][out] @ filt
        v24 = pick(cached(args.cache / f"{name}-sentences-2-4.npz", lambda: encode_probe(qenc, t24)))
        a = adapted_queries(pick(ds.queries), pick(ds.firsts), v24[first], d24[first], targets)
        bm25 = TermPostings(args.cache.parent / f"bm25-{name}" / "lexical")
        lw = lexical_weight_for(float(np.mean(bm25.lengths)))  # the build's rule
        hybrid = lambda r, lex=ds.lexical: ds.ndcg(zfuse([r, lex], [1 - lw, lw]))
        passages = a @ x.T
        best = np.full((len(a), n), -np.inf, np.float32)
        for j, o in enumerate(ds.owner):
            best[:, o] = np.maximum(best[:, o], passages[:, j])
        for lam in (0.0, 0.25, 0.5, 1.0):
            r = doc_rank(best + lam * (a @ targets.T), np.arange(n), n)
            print(f"{name} max+mean {lam:<5g} dense={ds.ndcg(r):6.2f} hybrid@{lw:g}={hybrid(r):6.2f}",
                  flush=True)
        full = doc_rank(passages, ds.owner, len(ds.ids), k=len(ds.ids))
        for k in (10, 20, 50, 100, 200, len(ds.ids)):
            r = [row[:k] for row in full]
            print(f"{name} depth {k:<5d} hybrid@{lw:g}={hybrid(r, [row[:k] for row in ds.lexical]):6.2f}",
                  flush=True)
        firsts = [first_sentence(d) for d in data.corpus][:1000]
        same = {what: pick(cached(args.cache / f"{name}-{what}-same.npz",
                                  lambda texts=texts: encode_probe(enc, texts)))
                for what, texts in (("queries", ds.query_texts), ("firsts", firsts),
                                    ("sentences-2-4", t24))}
        b = adapted_queries(same["queries"], same["firsts"], same["sentences-2-4"][first],
                            d24[first], targets)
        for label, v in (("question", a), ("PromptEOL", b), ("mean of both", l2(a + b))):
            r = doc_rank(v @ x.T, ds.owner, len(ds.ids))
            print(f"{name} prompts {label:<12s} dense={ds.ndcg(r):6.2f} hybrid@{lw:g}={hybrid(r):6.2f}",
                  flush=True)


if __name__ == "__main__":
    main()

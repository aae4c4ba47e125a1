"""The query adapter fitted on every passage's sentences, and on passage targets (a probe).

0.10's build fits the map on each sampled document's first sentence and sentences 2-4 of its
first passage, each against the document (the unit mean of its passages). Long documents are
answered by any of their passages (search scores a document by its best one), and scifact-dev's
claims are mostly about an abstract's later sentences. This probe adds sentences 5.. (up to
``--max-sentences`` per document) as further pseudo-queries and tries two targets:

- ``doc``: the document's unit passage mean, as the build does;
- ``passage``: the passage that holds the sentence (InfoNCE over all passages; a pseudo-query's
  other passages of the same document are masked out of its negatives).

It reuses ``probe_dense.py``'s cache and ``probe_adapter_sentences.py``'s sentences 2-4, encodes
the further sentences once (cached beside them) and scores dense and hybrid (z-score).

    python benchmarks/probe_adapter_passages.py --cache runs/dense/1-5-int8 --weights 0.5,0.6
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from tpsearch import TPEncoder
from tpsearch.eval.retrieval import load_beir
from tpsearch.passages import sentence_spans, split_passages
from tpsearch.query_adapter import AdapterSettings, document_targets, fit_adapter

from probe_adapter_sentences import probe_encoders
from probe_dense import SETS, DevSet, cached, encode_probe, l2, transformed, zfuse
from probe_documents import doc_rank


def sentence_table(data, enc: TPEncoder, n_docs: int, first: int, last: int):
    """(texts, doc, passage-of-doc) for sentences ``first``..``last - 1`` of each document,
    the passage being the first of ``split_passages`` (as the probe's units) that holds it."""
    texts, doc, part = [], [], []
    for i, d in enumerate(data.corpus[:n_docs]):
        text = d.get("text") or ""
        room = 256 - enc.prompt_tokens
        spans = [(p.start, p.end) for p in split_passages(text, room, 64, enc.count_tokens)]
        for a, b in list(sentence_spans(text))[first:last]:
            texts.append(text[a:b])
            doc.append(i)
            part.append(next((k for k, (s, e) in enumerate(spans) if s <= a and b <= e), 0))
    return texts, np.array(doc, np.int64), np.array(part, np.int64)


def open_set(name: str, enc: TPEncoder, qenc: TPEncoder, cache: Path, filt: np.ndarray):
    """(DevSet, its BEIR data, the output layer's index, passages and queries as the build
    transforms them, each sampled document's target: the unit mean of its passages)."""
    ds = DevSet(name, SETS[name], enc, qenc, cache)
    out = ds.passages["last"].shape[0] - 1
    x, q = transformed(ds, "last", out, filt)
    n = len(ds.firsts["last"][out])
    keep = ds.owner < n
    return ds, load_beir(*SETS[name]), out, x, q, document_targets(x[keep], ds.owner[keep], n)


def fit_passage_adapter(queries: np.ndarray, passages: np.ndarray, own: np.ndarray,
                        same_doc: np.ndarray, settings: AdapterSettings) -> np.ndarray:
    """``W`` by InfoNCE of each pseudo-query against every passage, its own (``own``) the
    positive and its document's other passages (``same_doc[i, j]``) left out."""
    q = torch.from_numpy(np.ascontiguousarray(queries, np.float32))
    t = torch.from_numpy(np.ascontiguousarray(passages, np.float32))
    target = torch.from_numpy(own)
    mask = torch.from_numpy(same_doc)
    eye = torch.eye(q.shape[1])
    w = torch.nn.Parameter(eye.clone())
    opt = torch.optim.Adam([w], lr=settings.learning_rate)
    for _ in range(settings.steps):
        logits = torch.nn.functional.normalize(q @ w, dim=1) @ t.T / settings.temperature
        logits = logits.masked_fill(mask, float("-inf"))
        loss = torch.nn.functional.cross_entropy(logits, target)
        loss = loss + settings.pull * ((w - eye) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return w.detach().numpy().astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--sets", default="pydoc-dev,scifact-dev")
    ap.add_argument("--weights", default="0.5")
    ap.add_argument("--pulls", default="0.01")
    ap.add_argument("--temperatures", default="0.05")
    ap.add_argument("--max-sentences", type=int, default=16,
                    help="pseudo-queries per document at most (sentences 1..N)")
    args = ap.parse_args()
    weights = [float(x) for x in args.weights.split(",")]
    enc, qenc, filt = probe_encoders("1:5")
    for name in args.sets.split(","):
        ds, data, out, x, q, targets = open_set(name, enc, qenc, args.cache, filt)
        mu = (ds.firsts["last"][out] @ filt).mean(0)
        n = len(targets)
        keep = ds.owner < n
        # every sentence's vector: the first (cached), 2-4 (cached), 5.. (encoded here)
        t1, d1, p1 = sentence_table(data, enc, n, 0, 1)
        t24, d24, p24 = sentence_table(data, enc, n, 1, 4)
        t5, d5, p5 = sentence_table(data, enc, n, 4, args.max_sentences)
        v1 = ds.firsts["last"][out][d1]
        v24 = cached(args.cache / f"{name}-sentences-2-4.npz",
                     lambda: encode_probe(qenc, t24))["last"][out] if t24 else np.zeros((0, x.shape[1]))
        v5 = cached(args.cache / f"{name}-sentences-5-{args.max_sentences}.npz",
                    lambda: encode_probe(qenc, t5))["last"][out] if t5 else np.zeros((0, v1.shape[1]))
        e = lambda v: l2(v @ filt - mu) if len(v) else np.zeros((0, x.shape[1]), np.float32)
        first_pass = [d24[k] for k in range(len(d24)) if p24[k] == 0]
        base = np.vstack([e(v1), e(v24)[p24 == 0]])
        base_lab = np.r_[d1, np.array(first_pass, np.int64)]
        alls = np.vstack([e(v1), e(v24), e(v5)])
        all_doc = np.r_[d1, d24, d5]
        all_part = np.r_[p1, p24, p5]
        # passage index (row of x) of each (doc, part)
        first_row = {}
        for r, o in enumerate(ds.owner):
            first_row.setdefault(int(o), r)
        own_row = np.array([first_row[int(d)] + int(p) for d, p in zip(all_doc, all_part)])
        own_row = np.minimum(own_row, len(ds.owner) - 1)
        ok = ds.owner[own_row] == all_doc
        xs = x[keep]
        same = (all_doc[:, None] == ds.owner[keep][None, :]) & (own_row[:, None] != np.arange(keep.sum())[None, :])
        variants = {"no adapter": np.eye(x.shape[1], dtype=np.float32)}
        grid = [(float(p), float(t)) for p in args.pulls.split(",")
                for t in args.temperatures.split(",")]
        for pull, temp in grid:
            st = AdapterSettings(pull=pull, temperature=temp)
            tag = f" pull {pull:g} t {temp:g}"
            variants["0.10 (first + 2-4 of first passage) -> doc" + tag] = fit_adapter(
                base, targets, st, labels=base_lab)
            variants[f"all sentences 1-{args.max_sentences} -> doc" + tag] = fit_adapter(
                alls, targets, st, labels=all_doc)
            variants["all sentences -> own passage" + tag] = fit_passage_adapter(
                alls[ok], xs, own_row[ok], same[ok], st)
        print(f"{name}: {len(alls)} pseudo-queries ({len(t5)} beyond sentence 4) for {n} documents",
              flush=True)
        for label, w in variants.items():
            r = doc_rank(l2(q @ w) @ x.T, ds.owner, len(ds.ids))
            hybrid = " ".join(f"hybrid@{lw:g}={ds.ndcg(zfuse([r, ds.lexical], [1 - lw, lw])):6.2f}"
                              for lw in weights)
            print(f"{name} {label:<48s} dense={ds.ndcg(r):6.2f} {hybrid}", flush=True)


if __name__ == "__main__":
    main()

"""Pseudo-relevance feedback from the hybrid ranking, on probe_dense.py's cache (a probe:
scored without encoding).

0.5 measured Rocchio on the dense side with the dense side's own top documents as feedback,
and it lost. Here the feedback is the *hybrid* ranking's top k (nDCG@10 about 69 / 92 on the
dev sets, so its top documents are far more often relevant than the dense side's): each
query's adapted vector moves toward the mean of those documents' best passages (best for that
query), ``q' = l2(q + beta * l2(mean))``; the dense side is searched again with ``q'`` and fused
with the same lexical ranking at the weight by length and below it (the moved query carries
some of the lexical side already). ``--gates G``: feedback only where the hybrid's top
document is also in both sides' own top G (0: always). Everything a 0.12 build fits is refitted
from the cached vectors (centering, EmbedFilter 32:32, partial whitening 0.15, query adapter)::

    python benchmarks/probe_hybrid_prf.py --cache runs/dense/1-5-int8
    python benchmarks/probe_hybrid_prf.py --cache runs/dense/none-int8 --tp-layers none
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from tpsearch.query_adapter import AdapterSettings, document_targets, fit_adapter
from tpsearch.tp import output_head
from tpsearch.transform import partial_whitening

from probe_adapter_sentences import further_sentences, probe_encoders
from probe_dense import SETS, DevSet, cached, encode_probe, l2, zfuse
from probe_documents import doc_rank
from probe_partial_whitening import WEIGHT, faiss_matrix
from probe_retrieval import edge_filter


def build_space(ds: DevSet, name: str, cache: Path, qenc, filt: np.ndarray, power: float,
                settings: AdapterSettings) -> tuple[np.ndarray, np.ndarray]:
    """(passages, adapted queries) as a 0.12 build and its searcher make them."""
    out = ds.passages["last"].shape[0] - 1
    p = ds.passages["last"][out] @ filt
    centred = p - p.mean(0)
    firsts = ds.firsts["last"][out] @ filt
    mu = firsts.mean(0)
    m = faiss_matrix(partial_whitening(centred, power)) if power else np.eye(p.shape[1],
                                                                             dtype=np.float32)
    x = l2(centred @ m)
    q = l2((ds.queries["last"][out] @ filt - mu) @ m)
    f = l2((firsts - mu) @ m)
    n, keep = len(f), ds.owner < len(f)
    targets = document_targets(x[keep], ds.owner[keep], n)
    texts, owner = further_sentences(name)
    if texts:
        more = cached(cache / f"{name}-sentences-2-4.npz", lambda: encode_probe(qenc, texts))
        e = l2((more["last"][out] @ filt - mu) @ m)
        w = fit_adapter(np.vstack([f, e]), targets, settings,
                        labels=np.r_[np.arange(n), np.array(owner)])
    else:
        w = fit_adapter(f, targets, settings)
    return x, l2(q @ w)


def feedback(q: np.ndarray, x: np.ndarray, owner: np.ndarray, ranking, k: int) -> np.ndarray:
    """Per query: the l2-normalised mean of the top ``k`` documents' best passages for it."""
    by_doc: dict[int, np.ndarray] = {}
    for i, d in enumerate(owner):
        by_doc.setdefault(int(d), []).append(i)
    out = np.zeros_like(q)
    for j, docs in enumerate(ranking):
        rows = []
        for d in docs[:k]:
            idx = np.asarray(by_doc[int(d)])
            rows.append(x[idx[np.argmax(x[idx] @ q[j])]])
        out[j] = np.mean(rows, axis=0)
    return l2(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--tp-layers", default="1:5", help="A:B, or none (vanilla): the cache's")
    ap.add_argument("--sets", default="pydoc-dev,scifact-dev,stsb-dev")
    ap.add_argument("--power", type=float, default=0.15)
    ap.add_argument("--adapter", default="0.05:0.01", metavar="T:P")
    ap.add_argument("--ks", default="1,2,3,5")
    ap.add_argument("--betas", default="0.1,0.2,0.3,0.5")
    ap.add_argument("--gates", default="0,1,3,10")
    args = ap.parse_args()
    enc, qenc, _ = probe_encoders(None if args.tp_layers == "none" else args.tp_layers)
    head = output_head(enc.model).detach().float().cpu().numpy()[: enc.placeholder_id]
    filt = edge_filter(head, 32, 32)
    temp, pull = map(float, args.adapter.split(":"))
    for name in args.sets.split(","):
        ds = DevSet(name, SETS[name], enc, qenc, args.cache)
        x, q = build_space(ds, name, args.cache, qenc, filt, args.power,
                           AdapterSettings(temperature=temp, pull=pull))
        lw = WEIGHT[name]
        dense = doc_rank(q @ x.T, ds.owner, len(ds.ids))
        hybrid = zfuse([dense, ds.lexical], [1 - lw, lw])
        print(f"{name}: dense={ds.ndcg(dense):6.2f} hybrid={ds.ndcg(hybrid):6.2f} "
              f"lexical={ds.ndcg(ds.lexical):6.2f}", flush=True)
        for gate in map(int, args.gates.split(",")):
            on = np.ones(len(q), bool) if not gate else np.array(
                [h[0] in {d for d, _ in dr[:gate]} and h[0] in {d for d, _ in lr[:gate]}
                 for h, dr, lr in zip(hybrid, dense, ds.lexical)])
            for k in map(int, args.ks.split(",")):
                c = feedback(q, x, ds.owner, hybrid, k) * on[:, None]
                for beta in map(float, args.betas.split(",")):
                    q2 = l2(q + beta * c)
                    d2 = doc_rank(q2 @ x.T, ds.owner, len(ds.ids))
                    h2 = " ".join(
                        f"h{v:.2f}={ds.ndcg(zfuse([d2, ds.lexical], [1 - v, v])):6.2f}"
                        for v in (lw - 0.15, lw - 0.1, lw - 0.05, lw))
                    print(f"{name} gate {gate} ({on.mean():.2f} of queries) k {k} beta {beta:g}: "
                          f"dense={ds.ndcg(d2):6.2f} {h2}", flush=True)


if __name__ == "__main__":
    main()

"""Partial whitening's power and shrinkage, and EmbedFilter's edge sizes, with 0.10's query
adapter, on probe_dense.py's cache (a probe: scored without encoding).

Each setting refits what a build fits, from the cached vectors: centering, the filter, the
partial whitening (``tpsearch.transform.partial_whitening``), the query mean from the first
sentences and the query adapter on the first sentences and sentences 2-4 (pull 0.01, as a build
fits it); dense and hybrid (z-score fusion) at the lexical weight by length and around it::

    python benchmarks/probe_partial_whitening.py --cache runs/dense/1-5-int8
    python benchmarks/probe_partial_whitening.py --cache runs/dense/none-int8 --tp-layers none \
        --powers 0,0.15 --shrinks 0.05
"""

from __future__ import annotations

import argparse
from pathlib import Path

import faiss
import numpy as np

from tpsearch.query_adapter import AdapterSettings, document_targets, fit_adapter
from tpsearch.tp import output_head
from tpsearch.transform import partial_whitening

from probe_adapter_sentences import further_sentences, probe_encoders
from probe_dense import SETS, DevSet, cached, encode_probe, l2, zfuse
from probe_documents import doc_rank
from probe_retrieval import edge_filter

#: the weights by length (tpsearch.fusion.lexical_weight_for) the dev sets' indexes record
WEIGHT = {"pydoc-dev": 0.49, "scifact-dev": 0.61, "stsb-dev": 0.26}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--tp-layers", default="1:5", help="A:B, or none (vanilla): the cache's")
    ap.add_argument("--sets", default="pydoc-dev,scifact-dev,stsb-dev")
    ap.add_argument("--filters", default="32:32", help="EmbedFilter TOP:BOTTOM sizes, comma-separated")
    ap.add_argument("--powers", default="0,0.1,0.15,0.2,0.25")
    ap.add_argument("--shrinks", default="0.02,0.05,0.1")
    ap.add_argument("--adapters", default="0.05:0.01", metavar="T:P,...",
                    help="the query adapter's temperature:pull pairs (0.10's: 0.05:0.01)")
    args = ap.parse_args()
    enc, qenc, _ = probe_encoders(None if args.tp_layers == "none" else args.tp_layers)
    head = output_head(enc.model).detach().float().cpu().numpy()[: enc.placeholder_id]
    filters = {f: edge_filter(head, *map(int, f.split(":"))) if f != "0:0"
               else np.eye(head.shape[1], dtype=np.float32) for f in args.filters.split(",")}
    settings = [(0.0, 0.0)] + [(float(p), float(s)) for p in args.powers.split(",") if float(p)
                               for s in args.shrinks.split(",")]
    for name in args.sets.split(","):
        ds = DevSet(name, SETS[name], enc, qenc, args.cache)
        texts, owner = further_sentences(name)
        out = ds.passages["last"].shape[0] - 1
        more = cached(args.cache / f"{name}-sentences-2-4.npz",
                      lambda: encode_probe(qenc, texts)) if texts else None
        lw = WEIGHT[name]
        for fname, filt in filters.items():
            p = ds.passages["last"][out] @ filt
            centred = p - p.mean(0)
            firsts = ds.firsts["last"][out] @ filt
            mu = firsts.mean(0)
            for (power, shrink), (temp, pull) in [
                    (ps, tuple(map(float, a.split(":"))))
                    for ps in settings for a in args.adapters.split(",")]:
                st = AdapterSettings(temperature=temp, pull=pull)
                flat = partial_whitening(centred, power, shrink) if power else None
                m = (faiss_matrix(flat) if flat is not None
                     else np.eye(p.shape[1], dtype=np.float32))
                x = l2(centred @ m)
                q = l2((ds.queries["last"][out] @ filt - mu) @ m)
                f = l2((firsts - mu) @ m)
                n, keep = len(f), ds.owner < len(f)
                targets = document_targets(x[keep], ds.owner[keep], n)
                if more is not None:
                    e = l2((more["last"][out] @ filt - mu) @ m)
                    w = fit_adapter(np.vstack([f, e]), targets, st,
                                    labels=np.r_[np.arange(n), np.array(owner)])
                else:
                    w = fit_adapter(f, targets, st)
                plain = doc_rank(q @ x.T, ds.owner, len(ds.ids))
                r = doc_rank(l2(q @ w) @ x.T, ds.owner, len(ds.ids))
                hybrid = " ".join(f"h{v:.2f}={ds.ndcg(zfuse([r, ds.lexical], [1 - v, v])):6.2f}"
                                  for v in (lw - 0.1, lw - 0.05, lw, lw + 0.05))
                print(f"{name} filter {fname} power {power:g} shrink {shrink:g} "
                      f"adapter {temp:g}:{pull:g}: "
                      f"dense-no-adapter={ds.ndcg(plain):6.2f} dense={ds.ndcg(r):6.2f} {hybrid}",
                      flush=True)


def faiss_matrix(lt) -> np.ndarray:
    """A square FAISS LinearTransform's matrix, for row vectors (x @ M)."""
    d = lt.d_out
    return faiss.vector_to_array(lt.A).reshape(d, d).T.copy()


if __name__ == "__main__":
    main()

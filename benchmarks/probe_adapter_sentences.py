"""The query adapter with more pseudo-queries per document (a probe, not the build's method).

The build fits the adapter on each sampled document's first sentence only. This probe adds the
document's sentences 2-4 as further pseudo-queries for the same document (centred on the first
sentences' mean, as the build's shift centres queries), encodes them once (cached beside the
setting's cache) and scores, against the passages of ``probe_dense.py``'s cache: no adapter,
first sentences (the build's), the other sentences alone, and both. InfoNCE with one target per
document (the unit mean of its passages): the build's ``fit_adapter``, several pseudo-queries
per document given as its labels.

    python benchmarks/probe_adapter_sentences.py --cache runs/dense/1-5-int8
    python benchmarks/probe_adapter_sentences.py --cache runs/dense/none-int8 --tp-layers none

``--weights`` scores hybrid at several lexical weights (z-score fusion), ``--pulls`` the adapter's
pull toward the identity (more pairs may need less of it). STS-B dev as retrieval has one
sentence per document: its adapter is the build's either way.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from tpsearch import TPEncoder
from tpsearch.eval.retrieval import load_beir
from tpsearch.passages import sentence_spans
from tpsearch.query_adapter import AdapterSettings, document_targets, fit_adapter
from tpsearch.tp import output_head

from probe_dense import SETS, DevSet, cached, encode_probe, l2, transformed, zfuse
from probe_documents import doc_rank
from probe_retrieval import edge_filter


def probe_encoders(tp_layers: str | None) -> tuple[TPEncoder, TPEncoder, np.ndarray]:
    """The probe cache's encoders (documents, and queries with the question prompt; Gemma 3
    270M in int8, compiled) and the EmbedFilter 32:32 projection of its unembedding."""
    enc = TPEncoder.from_pretrained("gemma-3-270m", tp_layers=tp_layers, output_layer=-1,
                                    pooling="mean", max_length=512, quantize="int8",
                                    compile_layers=True)
    head = output_head(enc.model).detach().float().cpu().numpy()[: enc.placeholder_id]
    return enc, enc.variant(prompt="question"), edge_filter(head, 32, 32)


def further_sentences(name: str) -> tuple[list[str], list[int]]:
    """Sentences 2-4 of each sampled document (the first 1,000) and the document each belongs
    to: the further pseudo-queries a build fits the adapter on."""
    texts, owner = [], []
    for i, doc in enumerate(load_beir(*SETS[name]).corpus[:1000]):
        text = doc.get("text") or ""
        for a, b in list(sentence_spans(text))[1:4]:
            texts.append(text[a:b])
            owner.append(i)
    return texts, owner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, required=True,
                    help="probe_dense.py's cache of the same setting (runs/dense/1-5-int8)")
    ap.add_argument("--tp-layers", default="1:5", help="A:B, or none (vanilla): the cache's")
    ap.add_argument("--sets", default="pydoc-dev,scifact-dev,stsb-dev")
    ap.add_argument("--weights", default="0.6", help="lexical weights of the hybrid (z-score)")
    ap.add_argument("--pulls", default="0.03", help="the adapter's pulls toward the identity")
    args = ap.parse_args()
    cache = args.cache
    weights = [float(x) for x in args.weights.split(",")]
    pulls = [float(x) for x in args.pulls.split(",")]
    enc, qenc, filt = probe_encoders(None if args.tp_layers == "none" else args.tp_layers)
    for name in args.sets.split(","):
        ds = DevSet(name, SETS[name], enc, qenc, cache)
        texts, owner = further_sentences(name)
        out = ds.passages["last"].shape[0] - 1
        x, q = transformed(ds, "last", out, filt)
        firsts = ds.firsts["last"][out] @ filt
        mu = firsts.mean(0)
        f = l2(firsts - mu)
        if texts:
            more = cached(cache / f"{name}-sentences-2-4.npz", lambda: encode_probe(qenc, texts))
            e = l2(more["last"][out] @ filt - mu)
        n, keep = len(f), ds.owner < len(f)
        targets = document_targets(x[keep], ds.owner[keep], n)
        owner = np.array(owner)
        variants = {"no adapter": np.eye(x.shape[1], dtype=np.float32)}
        for pull in pulls:
            st = AdapterSettings(pull=pull)
            tag = f" pull {pull:g}" if len(pulls) > 1 else ""
            variants[f"first sentences (0.9's){tag}"] = fit_adapter(f, targets, st)
            if texts:
                variants[f"sentences 2-4{tag}"] = fit_adapter(e, targets, st, labels=owner)
                variants[f"first sentences + sentences 2-4{tag}"] = fit_adapter(
                    np.vstack([f, e]), targets, st, labels=np.r_[np.arange(n), owner])
        for label, w in variants.items():
            r = doc_rank(l2(q @ w) @ x.T, ds.owner, len(ds.ids))
            hybrid = " ".join(f"hybrid@{lw:g}={ds.ndcg(zfuse([r, ds.lexical], [1 - lw, lw])):6.2f}"
                              for lw in weights)
            print(f"{name} {label:<40s} dense={ds.ndcg(r):6.2f} {hybrid}", flush=True)
        print(f"{name}: {len(texts)} more sentences for {n} documents", flush=True)


if __name__ == "__main__":
    main()

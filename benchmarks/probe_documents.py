"""Probe on a BEIR dev set: passage budgets x fitted transforms x lexical/hybrid fusion.

Encodes the corpus once per passage setting (vectors cached under ``--cache``) and scores every
combination in memory, to choose the defaults of ``tpsearch build`` before building them into
the pipeline. Dev sets only. Example:

    python benchmarks/probe_documents.py --data-dir ../shared/data/beir/scifact-dev --split dev \
        --dtype bfloat16 --cache runs/probe-scifact
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import faiss
import numpy as np

from tpsearch import TPEncoder
from tpsearch.eval.retrieval import load_beir, score_run
from tpsearch.lexical import LexicalBuilder, LexicalSegments, TermPostings
from tpsearch.passages import sentence_spans, split_passages


def units(data, enc, budget, overlap):
    """(doc index, passage text) pairs; budget None = whole documents."""
    out = []
    for i, d in enumerate(data.corpus):
        title, text = d.get("title") or "", d.get("text") or ""
        if budget is None:
            out.append((i, f"{title}. {text}" if title else text))
            continue
        room = budget - enc.prompt_tokens - (enc.count_tokens([title])[0] + 1 if title else 0)
        for p in split_passages(text, room, overlap, enc.count_tokens):
            body = text[p.start:p.end]
            out.append((i, f"{title}. {body}" if title else body))
    return out


def encode_cached(enc, texts, path: Path, batch_size=32):
    if path.is_file():
        return np.load(path)
    t0 = time.perf_counter()
    x = enc.encode(texts, batch_size=batch_size, max_batch_tokens=8192, show_progress=True)
    np.save(path, x)
    print(f"  encoded {len(texts)} texts in {time.perf_counter() - t0:.0f} s -> {path.name}", flush=True)
    return x


def l2(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


def transformed(docs, queries, kind, mu_q):
    if kind == "none":
        return docs, queries
    mu_d = docs.mean(0)
    qm = mu_q if mu_q is not None else mu_d
    if kind == "center":
        return l2(docs - mu_d), l2(queries - qm)
    dout = int(kind.removeprefix("whiten"))
    pca = faiss.PCAMatrix(docs.shape[1], dout, -0.5)
    pca.train(np.ascontiguousarray(docs))
    shift = (mu_d - qm).astype(np.float32)
    return l2(pca.apply(np.ascontiguousarray(docs))), l2(pca.apply(np.ascontiguousarray(queries + shift)))


def doc_scores(scores, owner, n_docs):
    """(queries, n_docs): each document's best passage score (-inf for a document without one)."""
    best = np.full((len(scores), n_docs), -np.inf, dtype=np.float32)
    for b, row in zip(best, scores):
        np.maximum.at(b, owner, row)
    return best


def doc_rank(scores, owner, n_docs, k=100):
    """Per query: document indices by their best passage score."""
    out = []
    for b in doc_scores(scores, owner, n_docs):
        top = np.argsort(-b, kind="stable")[:k]
        out.append([(int(t), float(b[t])) for t in top if np.isfinite(b[t])])
    return out


def rrf(a, b, k=60, w=0.5):
    s = {}
    for lst, weight in ((a, 1 - w), (b, w)):
        for r, (d, _) in enumerate(lst):
            s[d] = s.get(d, 0.0) + weight / (k + r + 1)
    return [d for d, _ in sorted(s.items(), key=lambda x: -x[1])]


def minmax(a, b, w=0.5):
    s = {}
    for lst, weight in ((a, 1 - w), (b, w)):
        if not lst:
            continue
        hi, lo = lst[0][1], lst[-1][1]
        for d, v in lst:
            s[d] = s.get(d, 0.0) + weight * ((v - lo) / (hi - lo) if hi > lo else 1.0)
    return [d for d, _ in sorted(s.items(), key=lambda x: -x[1])]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--split", default="dev")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--cache", default="runs/probe")
    ap.add_argument("--budgets", default="none,64:16,128:32,256:64")
    ap.add_argument("--no-tp", action="store_true")
    args = ap.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    data = load_beir(args.data_dir, args.split)
    judged = [q for q, r in data.qrels.items() if any(v > 0 for v in r.values())]
    ids = [str(d["_id"]) for d in data.corpus]
    enc = TPEncoder.from_pretrained(dtype=args.dtype, max_length=512,
                                    **({"tp_layers": None} if args.no_tp else {}))
    tag = "van" if args.no_tp else "tp"
    q = encode_cached(enc, [data.queries[x] for x in judged], cache / f"{tag}-queries.npy")
    firsts = []
    for d in data.corpus:
        spans = list(sentence_spans(d.get("text") or ""))
        firsts.append(d["text"][spans[0][0]:spans[0][1]] if spans else (d.get("title") or "x"))
    fs = encode_cached(enc, firsts, cache / f"{tag}-first-sentences.npy")
    mu_first = fs.mean(0)
    results = {}

    def score(name, ranking):
        run = {qid: [ids[d] for d in r] for qid, r in zip(judged, ranking)}
        results[name] = round(100 * score_run(run, {x: data.qrels[x] for x in judged})["ndcg@10"], 2)
        print(f"{name:<55s} {results[name]:6.2f}", flush=True)

    for spec in args.budgets.split(","):
        budget, overlap = (None, 0) if spec == "none" else map(int, spec.split(":"))
        us = units(data, enc, budget, overlap)
        owner = np.array([u[0] for u in us])
        x = encode_cached(enc, [u[1] for u in us], cache / f"{tag}-{spec.replace(':', 'o')}.npy")
        print(f"== {spec}: {len(us)} passages", flush=True)
        lb = LexicalBuilder()
        lb.add([u[1] for u in us])
        tmp = cache / f"bm25-{spec.replace(':', 'o')}"
        lb.save(tmp)
        lex = LexicalSegments([(TermPostings(tmp / "lexical"), None)])
        lex_rank = doc_rank(np.stack([lex.scores(data.queries[x]) for x in judged]), owner, len(ids))
        score(f"{spec} lexical", [[d for d, _ in r] for r in lex_rank])
        for kind in ("none", "center", "whiten128", "whiten256"):
            for qname, mu_q in (("same", None), ("first", mu_first)):
                if kind == "none" and qname == "first":
                    continue
                d2, q2 = transformed(x, q, kind, mu_q)
                dense = doc_rank(q2 @ d2.T, owner, len(ids))
                score(f"{spec} dense {kind} q={qname}", [[d for d, _ in r] for r in dense])
                if kind in ("none",) or qname == "first":
                    for w in (0.3, 0.5, 0.7):
                        score(f"{spec} hybrid-rrf w={w} {kind} q={qname}", [rrf(a, b, w=w) for a, b in zip(dense, lex_rank)])
                        score(f"{spec} hybrid-minmax w={w} {kind} q={qname}", [minmax(a, b, w=w) for a, b in zip(dense, lex_rank)])
    (cache / f"{tag}-results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

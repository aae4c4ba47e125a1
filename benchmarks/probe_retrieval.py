"""Encode once, score many: retrieval settings chosen on all BEIR dev sets together.

For one (model, passage prompt, TP range) this encodes each dev set's passages (256-token
budget, 64 overlap: the build's defaults), its queries under several query prompts, and the
documents' first sentences (the query-mean estimate the build uses), keeping the last token's
hidden state at **every** layer and the last token's attention values at every layer. Everything
is cached under ``--cache``; the scoring pass then sweeps, without re-encoding:

* output layer, and averages over layer ranges (pooling across layers);
* value aggregation (arXiv 2602.01572: the last token's attention values, averaged over layers);
* EmbedFilter (arXiv 2606.07502: the unembedding matrix's edge spectrum projected out);
* query prompt (symmetric vs asymmetric);
* transform (none / centred with a query mean);
* fusion with BM25 (min-max at several weights, z-scores).

Example (writes ``CACHE/scores.json``; ``sweep_report`` style tables are printed)::

    python benchmarks/probe_retrieval.py --sets scifact-dev,pydoc-dev --cache runs/pr-gemma
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from tpsearch import TPEncoder
from tpsearch.eval.retrieval import load_beir, score_run
from tpsearch.lexical import LexicalBuilder, LexicalSegments, TermPostings
from tpsearch.passages import sentence_spans

from probe_documents import doc_rank, units

#: The BEIR dev sets (``$TPSEARCH_BEIR_DIR``, else ``../shared/data/beir`` beside the checkout).
BEIR = Path(os.environ.get("TPSEARCH_BEIR_DIR",
                           Path(__file__).resolve().parents[2] / "shared" / "data" / "beir"))

#: Query prompts tried against the passage prompt (``same`` = the passage prompt).
QUERY_PROMPTS = {
    "same": None,
    "question": 'This question : <PST> "{sentence}" is answered in one word:"',
    "search": 'A search for : <PST> "{sentence}" finds a text about, in one word:"',
}


def value_modules(enc: TPEncoder) -> list[torch.nn.Module | None]:
    """Each decoder layer's value projection (``v_proj``), or None where it has none."""
    out = []
    for layer in enc.layers:
        found = None
        for name, m in layer.named_modules():
            if name.endswith("v_proj"):
                found = m
                break
        out.append(found)
    return out


def encode_all_layers(enc: TPEncoder, texts: list[str], batch_size: int = 16,
                      max_batch_tokens: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """(hidden (L+1, N, d) for hidden-state indices 0..output, values (L', N, kv))."""
    tok = enc.tokenize(texts)
    out_idx = enc.plan.output_index
    also = list(range(out_idx))
    vmods = [m for m in value_modules(enc)[:out_idx] if m is not None]
    captured: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda mod, a, o: captured.append(o[:, -1].float().cpu()))
               for m in vmods]
    n_rows = len(tok.input_ids)
    hidden = np.zeros((len(also) + 1, n_rows, enc.dim), dtype=np.float32)
    values = None
    from tqdm.auto import tqdm
    bar = tqdm(total=n_rows, desc="encoding", unit="prompt")
    try:
        for batch, got in enc.forward_batches(tok, batch_size, max_batch_tokens, also):
            hidden[:, batch] = got.float().cpu().numpy()
            vs = torch.stack(captured[:len(vmods)]).numpy()
            captured.clear()
            if values is None:
                values = np.zeros((len(vmods), n_rows, vs.shape[2]), dtype=np.float32)
            values[:, batch] = vs
            bar.update(len(batch))
    finally:
        bar.close()
        for h in handles:
            h.remove()
    if tok.n_templates > 1:
        hidden = hidden.reshape(hidden.shape[0], -1, tok.n_templates, hidden.shape[2]).mean(2)
        values = values.reshape(values.shape[0], -1, tok.n_templates, values.shape[2]).mean(2)
    return hidden, values


def cached(path: Path, make):
    if path.is_file():
        z = np.load(path)
        return z["hidden"], z["values"]
    t0 = time.perf_counter()
    h, v = make()
    np.savez(path, hidden=h, values=v)
    print(f"  {path.name}: {h.shape[1]} texts in {time.perf_counter() - t0:.0f} s", flush=True)
    return h, v


def first_sentence(d: dict) -> str:
    text = d.get("text") or ""
    spans = list(sentence_spans(text))
    return text[spans[0][0]:spans[0][1]] if spans else (d.get("title") or "x")


def l2(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True).clip(1e-12)


def edge_filter(unembed: np.ndarray, top: int, bottom: int) -> np.ndarray:
    """EmbedFilter's projector: identity minus the right singular vectors of the unembedding
    matrix with the ``top`` largest and ``bottom`` smallest singular values."""
    _, s, vt = np.linalg.svd(unembed.astype(np.float64), full_matrices=False)
    drop = list(range(top)) + list(range(len(s) - bottom, len(s)))
    v = vt[drop].T
    return (np.eye(unembed.shape[1]) - v @ v.T).astype(np.float32)


class DevSet:
    """One dev set's passages, queries, first sentences, BM25 ranking and qrels."""

    def __init__(self, name: str, enc: TPEncoder, cache: Path, query_encs: dict[str, TPEncoder]):
        self.name = name
        data = load_beir(BEIR / name, "dev")
        self.judged = [q for q, r in data.qrels.items() if any(v > 0 for v in r.values())]
        self.qrels = {q: data.qrels[q] for q in self.judged}
        self.ids = [str(d["_id"]) for d in data.corpus]
        us = units(data, enc, 256, 64)
        self.owner = np.array([u[0] for u in us])
        self.passages = cached(cache / f"{name}-passages.npz",
                               lambda: encode_all_layers(enc, [u[1] for u in us]))
        qtexts = [data.queries[x] for x in self.judged]
        firsts = [first_sentence(d) for d in data.corpus][:1000]
        self.queries, self.firsts = {}, {}
        for qp, qe in query_encs.items():
            self.queries[qp] = cached(cache / f"{name}-queries-{qp}.npz",
                                      lambda qe=qe: encode_all_layers(qe, qtexts))
            self.firsts[qp] = cached(cache / f"{name}-firsts-{qp}.npz",
                                     lambda qe=qe: encode_all_layers(qe, firsts))
        lb = LexicalBuilder()
        lb.add([d.get("text") or "" if not d.get("title") else f"{d['title']}. {d.get('text') or ''}"
                for d in data.corpus])
        lb.save(cache / f"bm25-{name}")
        lex = LexicalSegments([(TermPostings(cache / f"bm25-{name}" / "lexical"), None)])
        scores = np.stack([lex.scores(data.queries[x]) for x in self.judged])
        self.lexical = doc_rank(scores, np.arange(len(self.ids)), len(self.ids))

    def ndcg(self, ranking: list[list[int]]) -> float:
        run = {q: [self.ids[d] for d in r] for q, r in zip(self.judged, ranking)}
        return 100 * score_run(run, self.qrels)["ndcg@10"]


def pick(arrs: tuple[np.ndarray, np.ndarray], rep: str) -> np.ndarray:
    """A representation from the cached arrays: ``h:K`` (hidden state K), ``h:A-B`` (mean of
    normalised hidden states A..B), ``v:A-B`` (mean of values of layers A..B)."""
    hidden, values = arrs
    kind, spec = rep.split(":")
    src = hidden if kind == "h" else values
    if "-" not in spec:
        return src[int(spec)]
    a, b = map(int, spec.split("-"))
    return np.mean([l2(src[i]) for i in range(a, b + 1)], axis=0)


def dense_scores(ds: DevSet, rep: str, qp: str, transform: str, filt: np.ndarray | None):
    x = pick(ds.passages, rep)
    q = pick(ds.queries[qp], rep)
    f = pick(ds.firsts[qp], rep)
    if filt is not None:
        x, q, f = x @ filt, q @ filt, f @ filt
    if transform == "center":
        mu_d = x.mean(0)
        x, q = l2(x - mu_d), l2(q - f.mean(0))
    else:
        x, q = l2(x), l2(q)
    return q @ x.T


def fuse(dense, lexical, w, norm="minmax", with_scores=False):
    """Per query: documents by fused score (``with_scores``: (document, score) pairs)."""
    from tpsearch.fusion import fuse as library_fuse

    out = []
    method = "zscore" if norm == "z" else norm
    for a, b in zip(dense, lexical):
        fused = library_fuse([(d, 0, x) for d, x in a], [(d, 0, x) for d, x in b], method, w)
        s = {d: x for d, _, x in fused}
        ranked = sorted(s.items(), key=lambda t: -t[1])
        out.append(ranked if with_scores else [d for d, _ in ranked])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--prompt", default=None)
    ap.add_argument("--tp-layers", default="auto")
    ap.add_argument("--sets", default="scifact-dev,pydoc-dev")
    ap.add_argument("--cache", required=True)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--query-prompts", default="same,question")
    ap.add_argument("--reps", default=None, help="comma list of h:K, h:A-B, v:A-B (default: sweep)")
    ap.add_argument("--encode-only", action="store_true")
    args = ap.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    enc = TPEncoder.from_pretrained(args.model, prompt=args.prompt, tp_layers=args.tp_layers,
                                    output_layer=-1, dtype=args.dtype, max_length=512)
    print(f"model {args.model}: {enc.settings.n_layers} layers, prompt {enc.settings.templates[0]!r},"
          f" TP {enc.settings.tp_layers}", flush=True)
    qencs = {qp: (enc if QUERY_PROMPTS[qp] is None else enc.variant(prompt=QUERY_PROMPTS[qp]))
             for qp in args.query_prompts.split(",")}
    sets = [DevSet(n, enc, cache, qencs) for n in args.sets.split(",")]
    if args.encode_only:
        return
    n = enc.settings.n_layers
    reps = args.reps.split(",") if args.reps else (
        [f"h:{k}" for k in range(2 * n // 3, n + 1)] + [f"h:{a}-{b}" for a, b in
        ((n // 2, n), (2 * n // 3, n))] +
        [f"v:{a}-{b}" for a, b in ((0, n - 1), (n // 2, n - 1))])
    emb = enc.model.get_input_embeddings().weight.detach().float().cpu().numpy()
    emb = emb[: enc.placeholder_id or emb.shape[0]]
    results: dict[str, dict[str, float]] = {}

    def report(label, per_set):
        results[label] = per_set
        cells = "  ".join(f"{s}={v:6.2f}" for s, v in per_set.items())
        print(f"{label:<48s} {cells}  mean={np.mean(list(per_set.values())):6.2f}", flush=True)

    report("lexical (BM25)", {ds.name: ds.ndcg([[d for d, _ in r] for r in ds.lexical])
                              for ds in sets})
    filters = {"": None}
    for top, bottom in ((8, 8), (16, 16), (32, 32), (16, 0)):
        filters[f" filter{top}:{bottom}"] = edge_filter(emb, top, bottom)
    fusions = (("minmax", 0.5), ("minmax", 0.7), ("z", 0.3), ("z", 0.4), ("z", 0.5), ("z", 0.6),
               ("z", 0.7))
    for rep in reps:
        for qp in qencs:
            for fname, filt in filters.items():
                if filt is not None and not rep.startswith("h:"):
                    continue
                label = f"{rep} q={qp} center{fname}"
                ranks = {ds.name: doc_rank(dense_scores(ds, rep, qp, "center", filt), ds.owner,
                                           len(ds.ids)) for ds in sets}
                report(label, {ds.name: ds.ndcg([[d for d, _ in r] for r in ranks[ds.name]])
                               for ds in sets})
                for norm, w in fusions:
                    report(f"{label} + BM25 {norm} w={w}",
                           {ds.name: ds.ndcg(fuse(ranks[ds.name], ds.lexical, w, norm))
                            for ds in sets})
    (cache / "scores.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

"""Query-likelihood reranking on the dev sets, from the probe's cached encodings.

The first stage is a hybrid ranking computed from ``probe_retrieval.py``'s cache (``--rep``,
``--weight``: the setting under test); each of a query's top ``--depth`` documents is re-scored by
the decoder (its best dense passage, :class:`tpsearch.rerank.QueryLikelihoodScorer`). Scores are
cached per (query, passage) in ``CACHE/rerank-<set>.json``, so depths, weights and first stages
are swept without running the decoder again. Prints nDCG@10 for every (depth, weight) and the
decoder's seconds per query. Example::

    python benchmarks/probe_rerank.py --cache runs/pr-gemma --depth 10 --queries 120
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from tpsearch import TPEncoder
from tpsearch.eval.retrieval import load_beir
from tpsearch.rerank import QueryLikelihoodScorer, RerankSettings, rerank_order

from probe_documents import doc_rank, units
from probe_retrieval import BEIR, QUERY_PROMPTS, DevSet, dense_scores, fuse  # noqa: E402


def first_stage(ds: DevSet, rep: str, qp: str, w: float, norm: str, filt=None):
    """Per query: [(doc, best dense passage row or -1, fused score)], best first."""
    scores = dense_scores(ds, rep, qp, "center", filt)
    dense = doc_rank(scores, ds.owner, len(ds.ids))
    fused = fuse(dense, ds.lexical, w, norm, with_scores=True)
    out = []
    for qi, ranking in enumerate(fused):
        best = {}
        row_scores = scores[qi]
        for d, s in ranking:
            rows = np.flatnonzero(ds.owner == d)
            best[d] = (int(rows[np.argmax(row_scores[rows])]), s)
        out.append([(d, best[d][0], best[d][1]) for d, _ in ranking])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--cache", required=True)
    ap.add_argument("--sets", default="scifact-dev,pydoc-dev")
    ap.add_argument("--rep", default="h:18")
    ap.add_argument("--query-prompt", default="same")
    ap.add_argument("--weight", type=float, default=0.7, help="first stage's lexical weight")
    ap.add_argument("--norm", default="minmax")
    ap.add_argument("--depth", type=int, default=10)
    ap.add_argument("--filter", default="32:32", help="EmbedFilter TOP:BOTTOM or none")
    ap.add_argument("--queries", type=int, default=0, help="first N judged queries (0: all)")
    ap.add_argument("--template", default=None)
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()
    cache = Path(args.cache)
    enc = TPEncoder.from_pretrained(args.model, output_layer=-1, dtype=args.dtype, max_length=512)
    qencs = {args.query_prompt: enc if QUERY_PROMPTS[args.query_prompt] is None
             else enc.variant(prompt=QUERY_PROMPTS[args.query_prompt])}
    settings = RerankSettings(**({"template": args.template} if args.template else {}))
    scorer = QueryLikelihoodScorer(enc.model, enc.tokenizer, settings,
                                   exclude_ids=[enc.placeholder_id] if enc.placeholder_id else [])
    filt = None
    if args.filter != "none":
        from probe_retrieval import edge_filter

        emb = enc.model.get_input_embeddings().weight.detach().float().numpy()[: enc.placeholder_id]
        filt = edge_filter(emb, *map(int, args.filter.split(":")))
    tag = "" if not args.template else f"-t{abs(hash(args.template)) % 10**6}"
    for name in args.sets.split(","):
        ds = DevSet(name, enc, cache, qencs)
        data = load_beir(BEIR / name, "dev")
        texts = [u[1] for u in units(data, enc, 256, 64)]
        path = cache / f"rerank-{name}{tag}.json"
        memo: dict[str, float] = json.loads(path.read_text()) if path.is_file() else {}
        stage = first_stage(ds, args.rep, args.query_prompt, args.weight, args.norm, filt)
        n_q = args.queries or len(ds.judged)
        spent, scored = 0.0, 0
        for qi in range(n_q):
            cand = stage[qi][: args.depth]
            todo = [r for _, r, _ in cand if f"{qi}:{r}" not in memo]
            if todo:
                t0 = time.perf_counter()
                got = scorer.score(data.queries[ds.judged[qi]], [texts[r] for r in todo])
                spent += time.perf_counter() - t0
                scored += 1
                memo.update({f"{qi}:{r}": float(s) for r, s in zip(todo, got)})
            if qi % 20 == 19:
                path.write_text(json.dumps(memo))
                print(f"  {name}: {qi + 1}/{n_q} queries", flush=True)
        path.write_text(json.dumps(memo))
        if scored:
            print(f"{name}: decoder {spent / scored:.2f} s per query at depth {args.depth}")
        base = [[d for d, _, _ in stage[qi]] for qi in range(n_q)]
        sub = DevSubset(ds, n_q)
        print(f"{name} ({n_q} queries) first stage: {sub.ndcg(base):.2f}")
        for depth in sorted({5, 10, 20, args.depth}):
            if depth > args.depth:
                continue
            for w in (0.2, 0.3, 0.5, 0.7, 1.0):
                ranked = []
                for qi in range(n_q):
                    cand = stage[qi][:depth]
                    order, _ = rerank_order(np.array([s for _, _, s in cand]),
                                            np.array([memo[f"{qi}:{r}"] for _, r, _ in cand]), w)
                    ranked.append([cand[j][0] for j in order] + base[qi][depth:])
                print(f"{name} depth {depth:3d} weight {w:.1f}: {sub.ndcg(ranked):.2f}", flush=True)


class DevSubset:
    """nDCG over the first ``n`` judged queries of a dev set."""

    def __init__(self, ds: DevSet, n: int):
        self.ds, self.n = ds, n

    def ndcg(self, ranking):
        from tpsearch.eval.retrieval import score_run

        run = {q: [self.ds.ids[d] for d in r] for q, r in zip(self.ds.judged[: self.n], ranking)}
        return 100 * score_run(run, {q: self.ds.qrels[q] for q in self.ds.judged[: self.n]})["ndcg@10"]


if __name__ == "__main__":
    main()

"""The dense side, encode once per TP setting and score many methods on every dev set together.

One forward pass per text (the passage prompt for passages, the query prompt for queries and for
the documents' first sentences, which estimate the query mean the build's centring uses) keeps:

* the last token's hidden state at the output layer and the two layers below it;
* the mean over the text's own tokens at the output layer (Hierarchical TP's read-out);
* nothing else: PromptReps' bag of words (arXiv 2404.18424) is the output head applied to the
  last token's final state, restricted to the text's own tokens, so it is computed at scoring.

Scored from the cache, without encoding again, each with the build's transform (centred, query
mean from first sentences, EmbedFilter 32:32): last / mean / mean+last pooling, the sparse
PromptReps signal, BM25, fusions of each pair and of all three (z-scores), Rocchio
pseudo-relevance feedback on the dense side, and the build's query adapter (fitted on the
documents' first sentences, as a build fits it). ``--tp-layers none`` is vanilla (the same prompt
without ``<PST>``). Run it once per TP setting into one cache directory; ``--report`` prints
every setting's rows side by side.

``--adapter-grid`` scores the query adapter's temperature and pull from one setting's cache,
``--ensemble`` scores combinations of cached settings (e.g. prompts) as one ensemble, and
``--contrastive`` encodes with Contrastive Prompting's steering (arXiv 2505.12831).

Example (2 CPU cores, float32: about 25 minutes per setting for the three sets)::

    python pipelines/stsb_to_beir.py --sts-dir ../shared/data/sts --out runs/stsb-beir
    python benchmarks/probe_dense.py --tp-layers none --cache runs/dense
    python benchmarks/probe_dense.py --tp-layers 1:5 --cache runs/dense
    python benchmarks/probe_dense.py --report --cache runs/dense
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from tpsearch import TPEncoder
from tpsearch.eval.retrieval import load_beir, score_run
from tpsearch.lexical import LexicalBuilder, LexicalSegments, TermPostings
from tpsearch.query_adapter import (DEFAULT_ADAPTER_SETTINGS, AdapterSettings, document_targets,
                                    fit_adapter)
from tpsearch.shapes import plan_batches
from tpsearch.tp import forward_with_tp, model_lock, output_head

from probe_documents import doc_rank, doc_scores, units
from probe_retrieval import edge_filter, first_sentence, l2

ROOT = Path(__file__).resolve().parents[1]
BEIR = Path(os.environ.get("TPSEARCH_BEIR_DIR", ROOT.parent / "shared" / "data" / "beir"))
#: name -> (BEIR directory, qrels split); STS-B dev as retrieval comes from
#: ``pipelines/stsb_to_beir.py`` (its split is named test).
SETS = {"scifact-dev": (BEIR / "scifact-dev", "dev"), "pydoc-dev": (BEIR / "pydoc-dev", "dev"),
        "stsb-dev": (ROOT / "runs" / "stsb-beir", "test")}


def prompt_label(prompt: str) -> str:
    """A cache label for a prompt: a method's name as is, a template by a short hash."""
    if prompt.isidentifier():
        return prompt
    return hashlib.sha1(prompt.encode()).hexdigest()[:8]


def with_block_slots(rows: list[list[int]], spans: list[tuple[int, int]], pst_id: int,
                     block: int) -> tuple[list[list[int]], list[tuple[int, int]], list[int],
                                          list[list[tuple[int, int]]]]:
    """Hierarchical TP's block summary slots (arXiv 2511.14868) in tpsearch's prompt: a text of
    n > ``block`` tokens is cut into ceil(n / block) blocks and as many extra ``<PST>`` slots
    go just before the prompt's own ``<PST>`` (so every token of the text sees every block's
    summary); slot j is filled, over TP's layers, from block j's last token, and the prompt's
    ``<PST>`` stays TP's whole-text slot. Texts of at most ``block`` tokens are left as TP has
    them. Returns the new rows, the texts' shifted spans, each row's TP ``<PST>`` position and
    its (slot, source) pairs, positions within the unpadded row."""
    out_rows, out_spans, pst_pos, pairs = [], [], [], []
    for row, (start, end) in zip(rows, spans):
        p = row.index(pst_id)
        n = end - start
        k = -(-n // block) if n > block else 0
        out_rows.append(row[:p] + [pst_id] * k + row[p:])
        out_spans.append((start + k, end + k))
        pst_pos.append(p + k)
        pairs.append([(p + j, start + k + min((j + 1) * block, n) - 1) for j in range(k)])
    return out_rows, out_spans, pst_pos, pairs


KV_ROUTE = "tpsearch_kv_route"


def kv_route_attention(module, query, key, value, attention_mask, kv_route=None, **kwargs):
    """KV-Embedding's re-routing (arXiv 2601.01046) through transformers' attention interface:
    at the layers of ``kv_route = (rows, dst, src, start, stop)``, the key and value at each
    row's ``<PST>`` (``dst``) become those of its last token (``src``), after the rotary
    embedding; the residual stream at ``<PST>`` is left alone (TP overwrites that instead).
    Then the model's own SDPA attention runs."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if kv_route is not None and kv_route[3] <= module.layer_idx < kv_route[4]:
        rows, dst, src = kv_route[:3]
        key, value = key.clone(), value.clone()
        key[rows, :, dst] = key[rows, :, src]
        value[rows, :, dst] = value[rows, :, src]
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def arm_kv_route(enc: TPEncoder) -> None:
    """Route ``enc``'s attention through :func:`kv_route_attention` (a no-op without the
    ``kv_route`` argument)."""
    from transformers import AttentionInterface

    AttentionInterface.register(KV_ROUTE, kv_route_attention)
    for module in enc.model.modules():
        config = getattr(module, "config", None)
        if config is not None and getattr(config, "_attn_implementation", None) == "sdpa":
            config._attn_implementation = KV_ROUTE


#: Contrastive Prompting's auxiliary words (arXiv 2505.12831): put before a prompt's own
#: subject ("this sentence", "this question"), they ask the model for what is *not* the core.
AUX_PREFIX = "The irrelevant information of "


def auxiliary_prompt(template: str) -> str:
    """The auxiliary template of a prompt that starts with ``This``: ``This sentence : ...``
    becomes ``The irrelevant information of this sentence : ...`` (the paper's auxiliary
    prompt for PromptEOL; the same words for the question prompt)."""
    if not template.startswith("This "):
        raise SystemExit(f"--contrastive needs a prompt that starts with 'This ': {template!r}")
    return AUX_PREFIX + "t" + template[1:]


class ContrastiveSteering:
    """Contrastive Prompting's intervention (arXiv 2505.12831, norm scaling): at one decoder
    layer, the last token's attention output (the input of ``o_proj``, all heads) of the normal
    prompt becomes ``alpha * (v_normal - v_auxiliary)``, the auxiliary prompt's taken at the
    same layer in a pass that stops there; later layers run on. ``alpha`` None keeps the
    normal output's norm instead (the difference rescaled to it). ``layer`` must run eagerly
    (its hook raises and reads per-batch state), so it is taken out of a compiled model."""

    def __init__(self, layers, layer: int, alpha: float | None):
        self.alpha = alpha
        self.rows = self.last = self.aux = None
        self.collect = False
        block = layers[layer]
        if getattr(block, "_tpsearch_compiled", False):
            del block.forward  # the class's eager forward again
            block._tpsearch_compiled = False
        self.handle = block.self_attn.o_proj.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        x = args[0]
        v = x[self.rows, self.last]
        if self.collect:
            self.aux = v.clone()
            from tpsearch.tp import EarlyExit
            raise EarlyExit(x)
        d = v - self.aux
        if self.alpha is None:  # norm preserving: the difference at the normal output's norm
            d = d * (v.norm(dim=-1, keepdim=True) / d.norm(dim=-1, keepdim=True).clamp_min(1e-6))
        else:
            d = self.alpha * d
        x = x.index_put((self.rows, self.last), d.to(x.dtype))
        return (x,) + tuple(args[1:])


def encode_probe(enc: TPEncoder, texts: list[str], below: int = 2,
                 block: int = 0, kv_route: bool = False,
                 contrast: tuple[TPEncoder, ContrastiveSteering] | None = None,
                 ) -> dict[str, np.ndarray]:
    """``last``: (below + 1, N, d) last-token states at the output layer and the ``below``
    layers under it (lowest first); ``mean``: (N, d) the mean over each text's own tokens at
    the output layer. ``enc`` must pool by mean (so that tokenising yields the spans). With
    ``block``, texts longer than that many tokens get block summary slots
    (:func:`with_block_slots`). With ``contrast`` (the auxiliary prompt's encoder and the
    armed steering), each batch first runs its texts under the auxiliary prompt up to the
    steered layer (:class:`ContrastiveSteering`)."""
    from tqdm.auto import tqdm
    from tpsearch.tp import BlockSlots

    tok = enc.tokenize(texts)
    rows, spans = tok.input_ids, tok.spans
    aux_rows = contrast[0].tokenize(texts).input_ids if contrast else None
    pst_pos = pairs = None
    if block:
        rows, spans, pst_pos, pairs = with_block_slots(rows, spans, enc.placeholder_id, block)
    out_idx = enc.plan.output_index
    also = list(range(out_idx - below, out_idx))
    last = np.zeros((below + 1, len(rows), enc.dim), dtype=np.float32)
    mean = np.zeros((len(rows), enc.dim), dtype=np.float32)
    bar = tqdm(total=len(rows), desc="encoding", unit="prompt")
    for batch in plan_batches([len(r) for r in rows], 16, 8192, enc.row_ladder):
        t = enc._batch_tensors([rows[j] for j in batch], [spans[j] for j in batch])
        record = {i: None for i in also}
        slots = None
        if block:  # left padding: a row's positions move by width - its length
            off = [int(t["last"][b]) + 1 - len(rows[j]) for b, j in enumerate(batch)]
            t["pst"] = torch.tensor([o + pst_pos[j] for o, j in zip(off, batch)])
            flat = [(b, o + d, o + s) for b, (o, j) in enumerate(zip(off, batch))
                    for d, s in pairs[j]]
            if flat:
                slots = BlockSlots(*(torch.tensor(c, dtype=torch.long) for c in zip(*flat)))
        plan, extra = enc.plan, {}
        if kv_route:  # TP's own overwrite off; its range and <PST> serve the re-routing
            rows_b = torch.arange(len(batch))
            plan = replace(enc.plan, tp_layers=None)
            extra["kv_route"] = (rows_b, t["pst"], t["last"], *enc.plan.tp_layers)
        with torch.inference_mode(), model_lock(enc.model):
            if contrast is not None:
                aenc, steer = contrast
                a = aenc._batch_tensors([aux_rows[j] for j in batch])
                steer.rows, steer.last, steer.collect = torch.arange(len(batch)), a["last"], True
                forward_with_tp(enc.model, enc.layers, aenc.plan, a["pst"], a["last"],
                                input_ids=a["input_ids"], attention_mask=a["attention_mask"],
                                position_ids=a["position_ids"])
                steer.last, steer.collect = t["last"], False
            hidden = forward_with_tp(enc.model, enc.layers, plan,
                                     t["pst"] if enc.placeholder_id is not None else None,
                                     t["last"], record, slots, input_ids=t["input_ids"],
                                     attention_mask=t["attention_mask"],
                                     position_ids=t["position_ids"], **extra)
            at = torch.arange(hidden.shape[0])
            final = hidden[at, t["last"]]
            last[:, batch] = torch.stack([record[i] for i in also] + [final]).float().numpy()
            mean[batch] = torch.einsum("bt,btd->bd", t["pool"].to(hidden.dtype),
                                       hidden).float().numpy()
        bar.update(len(batch))
    bar.close()
    return {"last": last, "mean": mean}


def cached(path: Path, make) -> dict[str, np.ndarray]:
    if path.is_file():
        with np.load(path) as z:
            return dict(z)
    t0 = time.perf_counter()
    got = make()
    np.savez(path, **got)
    print(f"  {path.name}: {got['mean'].shape[0]} texts in {time.perf_counter() - t0:.0f} s",
          flush=True)
    return got


def own_token_ids(tokenizer, texts: list[str]) -> list[np.ndarray]:
    """Each text's vocabulary ids, as it is tokenised and as its words are on their own (the
    next-token prediction after ``:"`` has no leading space)."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    out = []
    for text, row in zip(texts, ids):
        words = sorted({w.strip(".,;:!?()[]'\"") for w in text.split()} - {""})
        alone = tokenizer(words, add_special_tokens=False)["input_ids"] if words else []
        out.append(np.unique(np.array(row + [i for w in alone for i in w[:1]], dtype=np.int64)))
    return out


def bag_of_words(final: np.ndarray, head: torch.Tensor, ids: list[np.ndarray]) -> sp.csr_matrix:
    """PromptReps' sparse vectors: log(1 + relu(logit)) at each text's own tokens."""
    n, vocab = final.shape[0], head.shape[0]
    indptr, indices, data = [0], [], []
    for a in range(0, n, 128):
        logits = torch.from_numpy(final[a:a + 128]) @ head.T
        for r in range(logits.shape[0]):
            cols = torch.from_numpy(ids[a + r])
            vals = torch.log1p(torch.relu(logits[r, cols])).numpy()
            keep = vals > 0
            indices.extend(ids[a + r][keep])
            data.extend(vals[keep])
            indptr.append(len(indices))
    return sp.csr_matrix((np.array(data, np.float32), np.array(indices, np.int64), indptr),
                         shape=(n, vocab))


class DevSet:
    """One dev set's units, encodings under one TP setting, BM25 ranking and qrels."""

    def __init__(self, name: str, where: tuple[Path, str], enc: TPEncoder, qenc: TPEncoder,
                 cache: Path, block: int = 0, kv_route: bool = False,
                 steer: ContrastiveSteering | None = None):
        self.name = name
        data = load_beir(*where)
        self.judged = [q for q, r in data.qrels.items() if any(v > 0 for v in r.values())]
        self.qrels = {q: data.qrels[q] for q in self.judged}
        self.ids = [str(d["_id"]) for d in data.corpus]
        us = units(data, enc, 256, 64)
        self.owner = np.array([u[0] for u in us])
        self.unit_texts = [u[1] for u in us]
        self.query_texts = [data.queries[x] for x in self.judged]
        def encode(e: TPEncoder, texts: list[str]):
            aux = (e.variant(prompt=auxiliary_prompt(e.prompt.templates[0])), steer) if steer else None
            return lambda: encode_probe(e, texts, block=block, kv_route=kv_route, contrast=aux)

        self.passages = cached(cache / f"{name}-passages.npz", encode(enc, self.unit_texts))
        self.queries = cached(cache / f"{name}-queries.npz", encode(qenc, self.query_texts))
        firsts = [first_sentence(d) for d in data.corpus][:1000]
        self.firsts = cached(cache / f"{name}-firsts.npz", encode(qenc, firsts))
        lexdir = cache.parent / f"bm25-{name}"
        if not (lexdir / "lexical").is_dir():
            lb = LexicalBuilder()
            lb.add([d.get("text") or "" if not d.get("title") else
                    f"{d['title']}. {d.get('text') or ''}" for d in data.corpus])
            lb.save(lexdir)
        lex = LexicalSegments([(TermPostings(lexdir / "lexical"), None)])
        self.lexical = doc_rank(np.stack([lex.scores(q) for q in self.query_texts]),
                                np.arange(len(self.ids)), len(self.ids))

    def ndcg(self, ranking) -> float:
        run = {q: [self.ids[d if isinstance(d, (int, np.integer)) else d[0]] for d in r]
               for q, r in zip(self.judged, ranking)}
        return 100 * score_run(run, self.qrels)["ndcg@10"]


def transformed(ds: DevSet, what: str, layer: int, filt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(passages, queries) as the build makes them: filtered, centred (queries by the first
    sentences' mean), normalised. ``what``: last / mean / both (mean+last averaged)."""
    if what == "both":
        a = transformed(ds, "last", layer, filt)
        b = transformed(ds, "mean", layer, filt)
        return l2(a[0] + b[0]), l2(a[1] + b[1])
    pick = (lambda z: z["last"][layer]) if what == "last" else (lambda z: z["mean"])
    x, q, f = pick(ds.passages) @ filt, pick(ds.queries) @ filt, pick(ds.firsts) @ filt
    return l2(x - x.mean(0)), l2(q - f.mean(0))


def adapted(ds: DevSet, x: np.ndarray, q: np.ndarray, layer: int, filt: np.ndarray,
            settings: AdapterSettings = DEFAULT_ADAPTER_SETTINGS) -> np.ndarray:
    """Queries through the build's query adapter (tpsearch.query_adapter), fitted as a build
    fits it: each document's first sentence (query prompt, centred on their mean) against the
    unit mean of that document's passages (``x``, as the index stores them)."""
    f = ds.firsts["last"][layer] @ filt
    f = l2(f - f.mean(0))
    n = len(f)
    keep = ds.owner < n
    w = fit_adapter(f, document_targets(x[keep], ds.owner[keep], n), settings)
    return l2(q @ w)


def adapter_grid(sets: list[DevSet], enc: TPEncoder, temperatures: list[float],
                 pulls: list[float]) -> None:
    """The query adapter's temperature and pull, dense and hybrid, on every set (one cached
    setting, scored without encoding)."""
    head = output_head(enc.model).detach().float().cpu()
    filt = edge_filter(head.numpy()[: enc.placeholder_id or head.shape[0]], 32, 32)
    grid = [None] + [AdapterSettings(temperature=t, pull=p) for t in temperatures for p in pulls]
    rows: dict[str, dict[str, float]] = {}
    for ds in sets:
        out = ds.passages["last"].shape[0] - 1
        x, q = transformed(ds, "last", out, filt)
        for st in grid:
            label = "no adapter" if st is None else f"temperature {st.temperature}, pull {st.pull}"
            qq = q if st is None else adapted(ds, x, q, out, filt, st)
            d = doc_rank(qq @ x.T, ds.owner, len(ds.ids))
            rows.setdefault(f"{label}: dense", {})[ds.name] = ds.ndcg(d)
            rows.setdefault(f"{label}: hybrid", {})[ds.name] = ds.ndcg(
                zfuse([d, ds.lexical], [0.4, 0.6]))
    for n, v in rows.items():
        cells = "  ".join(f"{k}={x:6.2f}" for k, x in v.items())
        print(f"{n:<40s} {cells}  mean={np.mean(list(v.values())):6.2f}", flush=True)


def rocchio(x: np.ndarray, q: np.ndarray, k: int, beta: float) -> np.ndarray:
    """Queries moved toward the mean of their top-k passages, normalised."""
    s = q @ x.T
    top = np.argpartition(-s, k, axis=1)[:, :k]
    return l2((1 - beta) * q + beta * x[top].mean(1))


def zfuse(lists, weights):
    """Per query: documents by the weighted sum of each list's z-scores over its own top
    (a document missing from a list gets that list's lowest z-score)."""
    out = []
    for per_query in zip(*lists):
        total: dict[int, float] = {}
        parts = []
        for ranking, w in zip(per_query, weights):
            v = np.array([s for _, s in ranking], dtype=np.float64)
            sd = v.std() or 1.0
            z = {d: (s - v.mean()) / sd for d, s in ranking}
            parts.append((z, w * (v.min() - v.mean()) / sd, w))
        docs = set().union(*(p[0] for p in parts))
        for d in docs:
            total[d] = sum(w * z[d] if d in z else floor for z, floor, w in parts)
        out.append([d for d, _ in sorted(total.items(), key=lambda t: -t[1])])
    return out


def adaptive(dense, lexical, base: float = 0.6, gain: float = 0.2):
    """Per query: z-score fusion whose lexical share moves with how far each side's best
    document stands out of its own list (its top z-score): ``base + gain * tanh(zl - zd)``."""
    out = []
    for d, lx in zip(dense, lexical):
        tops = []
        for ranking in (d, lx):
            v = np.array([s for _, s in ranking] or [0.0], dtype=np.float64)
            tops.append((v.max() - v.mean()) / (v.std() or 1.0))
        w = base + gain * np.tanh(tops[1] - tops[0])
        out.append(zfuse([[d], [lx]], [1 - w, w])[0])
    return out


def rrf(lists, k: int = 60):
    out = []
    for per_query in zip(*lists):
        total: dict[int, float] = {}
        for ranking in per_query:
            for r, (d, _) in enumerate(ranking):
                total[d] = total.get(d, 0.0) + 1.0 / (k + r + 1)
        out.append([d for d, _ in sorted(total.items(), key=lambda t: -t[1])])
    return out


def score_setting(sets: list[DevSet], enc: TPEncoder) -> dict[str, dict[str, float]]:
    head = output_head(enc.model).detach().float().cpu()
    emb = head.numpy()[: enc.placeholder_id or head.shape[0]]
    filt = edge_filter(emb, 32, 32)
    rows: dict[str, dict[str, float]] = {}
    for ds in sets:
        ranks = {"lexical": ds.lexical}
        out = ds.passages["last"].shape[0] - 1
        for what in ("last", "mean", "both"):
            x, q = transformed(ds, what, out, filt)
            ranks[f"dense {what}"] = doc_rank(q @ x.T, ds.owner, len(ds.ids))
            if what == "last":
                ranks["dense last + query adapter"] = doc_rank(
                    adapted(ds, x, q, out, filt) @ x.T, ds.owner, len(ds.ids))
                for k, beta in ((3, 0.3), (5, 0.5), (10, 0.3)):
                    ranks[f"dense last + PRF k={k} b={beta}"] = doc_rank(
                        rocchio(x, q, k, beta) @ x.T, ds.owner, len(ds.ids))
        for layer in range(out):
            x, q = transformed(ds, "last", layer, filt)
            ranks[f"dense last, layer {layer - out}"] = doc_rank(q @ x.T, ds.owner, len(ds.ids))
        tok = enc.tokenizer
        docs = bag_of_words(ds.passages["last"][out], head, own_token_ids(tok, ds.unit_texts))
        qs = bag_of_words(ds.queries["last"][out], head, own_token_ids(tok, ds.query_texts))
        ranks["sparse (PromptReps)"] = doc_rank((qs @ docs.T).toarray(), ds.owner, len(ds.ids))
        for name in list(ranks):
            rows.setdefault(name, {})[ds.name] = ds.ndcg(ranks[name])
        d, s, lx = ranks["dense last"], ranks["sparse (PromptReps)"], ranks["lexical"]
        fused = {
            "hybrid dense+BM25 z 0.6 (the default)": zfuse([d, lx], [0.4, 0.6]),
            "hybrid dense mean+BM25 z 0.6": zfuse([ranks["dense mean"], lx], [0.4, 0.6]),
            "hybrid dense + query adapter+BM25 z 0.6": zfuse([ranks["dense last + query adapter"], lx],
                                                           [0.4, 0.6]),
            "hybrid dense both+BM25 z 0.6": zfuse([ranks["dense both"], lx], [0.4, 0.6]),
            "hybrid dense PRF k=3+BM25 z 0.6": zfuse([ranks["dense last + PRF k=3 b=0.3"], lx],
                                                   [0.4, 0.6]),
            "dense+sparse z 0.5": zfuse([d, s], [0.5, 0.5]),
            "sparse+BM25 z 0.5": zfuse([s, lx], [0.5, 0.5]),
        }
        for w in (0.5, 0.7):
            fused[f"hybrid dense+BM25 z {w}"] = zfuse([d, lx], [1 - w, w])
        fused["hybrid dense+BM25 rrf"] = rrf([d, lx])
        for base, gain in ((0.6, 0.2), (0.6, 0.3), (0.5, 0.3)):
            fused[f"hybrid adaptive {base}+{gain}tanh"] = adaptive(d, lx, base, gain)
        fused["hybrid adaptive 0.6+0.2tanh, PRF k=3"] = adaptive(
            ranks["dense last + PRF k=3 b=0.3"], lx, 0.6, 0.2)
        for w in (0.2, 0.3):
            fused[f"dense+sparse+BM25 z {0.4 - w / 2:.2f}/{w:.2f}/{0.6 - w / 2:.2f}"] = zfuse(
                [d, s, lx], [0.4 - w / 2, w, 0.6 - w / 2])
        for name, r in fused.items():
            rows.setdefault(name, {})[ds.name] = ds.ndcg(r)
    return rows


def report(cache: Path) -> None:
    runs = {p.parent.name: json.loads(p.read_text()) for p in sorted(cache.glob("*/scores.json"))}
    names = list(next(iter(runs.values())))
    sets = list(next(iter(next(iter(runs.values())).values())))
    for setting, rows in runs.items():
        print(f"\n## TP {setting}")
        print(f"| method | {' | '.join(sets)} | mean |\n|---|{'---|' * (len(sets) + 1)}")
        for n in names:
            v = [rows.get(n, {}).get(s, float('nan')) for s in sets]
            print(f"| {n} | {' | '.join(f'{x:.2f}' for x in v)} | {np.mean(v):.2f} |")


def label_settings(label: str) -> dict:
    """The encoder settings a cache label names (``none...`` = vanilla, ``A-B...`` = TP A..B,
    ``-p<name>`` = the passages' prompt), for re-cutting that setting's passages."""
    parts = label.split("-")
    out: dict = {"tp_layers": None if parts[0] == "none" else (int(parts[0]), int(parts[1]))}
    for part in parts[1:]:
        if part.startswith("p") and part[1:].isidentifier():  # prompt_label's method name
            out["prompt"] = part[1:]
    return out


def ensemble(cache: Path, labels: list[str], model: str, sets: list[str]) -> None:
    """Score every combination of cached settings as one ensemble: a document's dense score is
    the sum over the settings of its best passage's cosine (each setting with the build's
    transform; their passages may be cut differently, hence per document). MetaEOL's idea
    (several prompts' embeddings averaged) at retrieval, at the cost of one encoding each."""
    from itertools import combinations

    base = TPEncoder.from_pretrained(model, tp_layers="1:5", output_layer=-1, pooling="mean",
                                     max_length=512)
    qenc = base.variant(prompt="question")
    head = output_head(base.model).detach().float().cpu().numpy()
    filt = edge_filter(head[: base.placeholder_id], 32, 32)
    rows: dict[str, dict[str, tuple[float, float]]] = {}
    for name in sets:
        per = {}
        for label in labels:
            enc = base.variant(**label_settings(label))
            ds = DevSet(name, SETS[name], enc, qenc, cache / label)
            x, q = transformed(ds, "last", ds.passages["last"].shape[0] - 1, filt)
            per[label] = doc_scores(q @ x.T, ds.owner, len(ds.ids))
        every = np.arange(len(ds.ids))
        for r in range(1, len(labels) + 1):
            for combo in combinations(labels, r):
                dense = doc_rank(sum(per[c] for c in combo), every, len(ds.ids))
                hybrid = zfuse([dense, ds.lexical], [0.4, 0.6])
                rows.setdefault(" + ".join(combo), {})[name] = (ds.ndcg(dense), ds.ndcg(hybrid))
    print(f"| settings (dense / hybrid z 0.6) | {' | '.join(sets)} | mean |")
    print(f"|---|{'---|' * (len(sets) + 1)}")
    for combo, v in rows.items():
        cells = [f"{v[s][0]:.2f} / {v[s][1]:.2f}" for s in sets]
        mean = [np.mean([v[s][i] for s in sets]) for i in (0, 1)]
        print(f"| {combo} | {' | '.join(cells)} | {mean[0]:.2f} / {mean[1]:.2f} |")


#: The rows ``--tp-table`` compares across TP settings: (row in scores.json, label).
TP_ROWS = (("dense last", "dense, output layer -1"),
           ("dense last, layer -1", "dense, output layer -2"),
           ("dense last, layer -2", "dense, output layer -3"),
           ("hybrid dense+BM25 z 0.6 (the default)", "hybrid (z 0.6)"))


def tp_table(cache: Path, sts: Path | None) -> None:
    """One markdown table per row of :data:`TP_ROWS`: each cached setting (label suffix
    ``-int8`` etc. kept) against every dev set, with vanilla's difference; with ``sts``, the
    STS Spearman of ``tpsearch eval sts --json`` saved as ``sts-<setting>.json`` beside."""
    runs = {p.parent.name: json.loads(p.read_text()) for p in sorted(cache.glob("*/scores.json"))}
    vanilla = next((k for k in runs if k.startswith("none")), None)
    for row, label in TP_ROWS:
        sets = list(runs[next(iter(runs))][row])
        print(f"\n{label} (nDCG@10 x 100; in brackets: minus vanilla)\n")
        print(f"| TP | {' | '.join(sets)} | mean |\n|---|{'---|' * (len(sets) + 1)}")
        for name, rows in runs.items():
            v = [rows[row][s] for s in sets]
            cells = []
            for s, x in zip(sets, v):
                d = "" if vanilla is None or name == vanilla else \
                    f" ({x - runs[vanilla][row][s]:+.2f})"
                cells.append(f"{x:.2f}{d}")
            print(f"| {name} | {' | '.join(cells)} | {np.mean(v):.2f} |")
    if sts is not None:
        print("\nSTS (Spearman x 100, raw vectors)\n\n| TP | STS-B dev | STS12 |\n|---|---|---|")
        for name in runs:
            f = sts / f"sts-{name.removesuffix('-int8')}.json"
            if f.exists() and f.stat().st_size:
                t = json.loads(f.read_text())["tasks"]
                print(f"| {name} | {t['STSBenchmark-dev']:.2f} | {t['STS12']:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--tp-layers", default="auto", help="auto (the preset), none, or A:B")
    ap.add_argument("--placeholder-init", default=None)
    ap.add_argument("--quantize", default="none", choices=("none", "int8"),
                    help="int8: tpsearch's int8 (per-token), compiled; cached apart (label -int8)")
    ap.add_argument("--blocks", type=int, default=0, metavar="TOKENS",
                    help="Hierarchical TP: a block summary slot per this many tokens of a "
                         "longer text, beside TP's own (cached apart, label -blocksN)")
    ap.add_argument("--kv-route", action="store_true",
                    help="KV-Embedding instead of TP: over TP's layers, <PST>'s key and value "
                         "are the last token's (cached apart, label kv-A-B)")
    ap.add_argument("--contrastive", default=None, metavar="LAYER:ALPHA",
                    help="Contrastive Prompting (2505.12831): at decoder layer LAYER the last "
                         "token's attention output becomes ALPHA x (normal - auxiliary prompt's), or "
                         "with ALPHA np that difference at the normal output's norm "
                         "(cached apart, label -cpLAYER-ALPHA)")
    ap.add_argument("--prompt", default=None,
                    help="the passages' prompt (a method name such as pcot or ke, or a template); "
                         "default: the preset's (cached apart, label -p<name> or -p<hash>)")
    ap.add_argument("--query-prompt", default="question",
                    help="the queries' (and first sentences') prompt (cached apart unless "
                         "question, label -q<name>)")
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--cache", required=True, type=Path)
    ap.add_argument("--report", action="store_true", help="print the cached settings' tables")
    ap.add_argument("--tp-table", action="store_true",
                    help="print the TP settings side by side (dense at three output layers, "
                         "hybrid; with --sts-json DIR, STS too)")
    ap.add_argument("--adapter-grid", default=None, metavar="TEMPERATURES/PULLS",
                    help="score the query adapter at each temperature and pull (e.g. "
                         "0.02,0.05,0.1/0.01,0.03,0.1) from this setting's cache")
    ap.add_argument("--ensemble", default=None, metavar="LABEL,LABEL,...",
                    help="score every combination of these cached settings as an ensemble "
                         "(the sum of their cosines per document), dense and hybrid")
    ap.add_argument("--sts-json", type=Path, default=None,
                    help="folder of sts-<setting>.json (tpsearch eval sts --json) for --tp-table")
    args = ap.parse_args()
    if args.report:
        return report(args.cache)
    if args.tp_table:
        return tp_table(args.cache, args.sts_json)
    if args.ensemble:
        return ensemble(args.cache, args.ensemble.split(","), args.model, args.sets.split(","))
    tp = None if args.tp_layers == "none" else args.tp_layers
    if args.blocks and tp is None:
        ap.error("--blocks needs TP (block slots are filled over TP's layers)")
    if args.kv_route and (tp is None or args.blocks):
        ap.error("--kv-route needs a TP range (its layers) and no --blocks")
    extra = {"placeholder_init": args.placeholder_init} if args.placeholder_init else {}
    if args.prompt:
        extra["prompt"] = args.prompt
    enc = TPEncoder.from_pretrained(args.model, tp_layers=tp, output_layer=-1, pooling="mean",
                                    max_length=512, quantize=args.quantize,
                                    # the re-routing's per-layer test would recompile
                                    # every layer (layer_idx is static to torch.compile)
                                    compile_layers=args.quantize == "int8" and not args.kv_route,
                                    **extra)
    label = "none" if tp is None else "{}-{}".format(*enc.settings.tp_layers)
    label += f"-{args.placeholder_init}" if args.placeholder_init else ""
    label = f"kv-{label}" if args.kv_route else label
    label += f"-blocks{args.blocks}" if args.blocks else ""
    label += "-cp{}-{}".format(*args.contrastive.split(":")) if args.contrastive else ""
    label += f"-p{prompt_label(args.prompt)}" if args.prompt else ""
    label += f"-q{prompt_label(args.query_prompt)}" if args.query_prompt != "question" else ""
    label += "-int8" if args.quantize == "int8" else ""
    cache = args.cache / label
    cache.mkdir(parents=True, exist_ok=True)
    qenc = enc.variant(prompt=args.query_prompt)
    print(f"{args.model}: TP {enc.settings.tp_layers}, {enc.settings.n_layers} layers", flush=True)
    if args.kv_route:
        arm_kv_route(enc)  # qenc shares the model
    steer = None
    if args.contrastive:
        layer, alpha = args.contrastive.split(":")
        steer = ContrastiveSteering(enc.layers, int(layer), None if alpha == "np" else float(alpha))
    sets = [DevSet(n, SETS[n], enc, qenc, cache, args.blocks, args.kv_route, steer)
            for n in args.sets.split(",")]
    if args.adapter_grid:
        temps, pulls = ([float(v) for v in part.split(",")] for part in args.adapter_grid.split("/"))
        return adapter_grid(sets, enc, temps, pulls)
    rows = score_setting(sets, enc)
    (cache / "scores.json").write_text(json.dumps(rows, indent=1))
    for n, v in rows.items():
        cells = "  ".join(f"{s}={x:6.2f}" for s, x in v.items())
        print(f"{n:<48s} {cells}  mean={np.mean(list(v.values())):6.2f}", flush=True)


if __name__ == "__main__":
    main()

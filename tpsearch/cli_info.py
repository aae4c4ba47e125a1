"""``tpsearch info``'s table: what a version holds and how its queries are encoded, as
(name, value) rows."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .manifest import Manifest


def info_rows(index_dir, m: "Manifest") -> list[tuple[str, str]]:
    """The rows ``tpsearch info`` prints for the manifest ``m`` of ``index_dir``."""
    e, ix, c, t = m.encoder, m.index, m.corpus, m.transform
    tp = f"{e.tp_layers[0]}:{e.tp_layers[1]}" if e.tp_layers else "off (vanilla)"
    ps = m.passages
    f = m.summary()  # the facts the server's /indexes lists too
    return [
        ("index", f"{index_dir} (format version {m.format_version}"
                  + (f", version {m.version}" if m.version else ", flat tpsearch 0.2 layout")
                  + (f", replaced {m.replaces}" if m.replaces else "") + ")"),
        ("documents", f"{f['documents']} in {f['passages']} passages ({m.skipped_rows} rows skipped, "
                      f"{m.truncated_texts} texts truncated)"),
        ("passages", f"at most {ps.max_tokens} tokens, {ps.overlap} overlapping"
         if ps and ps.max_tokens else "whole documents"),
        ("model", f"{m.model.spec} [{m.model.kind}] sha256 {str(m.model.weights_sha256)[:16]}"),
        ("prompt", f"{e.prompt}: {e.templates[0]}"
                   + (f" (+{len(e.templates) - 1} more)" if len(e.templates) > 1 else "")),
        ("query prompt", f"{m.query_prompt}: {m.query_templates[0]}" if m.query_prompt and
         m.query_templates else "the documents' own"),
        ("token prepending", tp),
        ("output layer", f"{e.output_layer} of {e.n_layers} layers, {e.pooling} token pooling, "
                         f"{e.dtype or 'dtype not recorded'}"),
        ("max length", f"{e.max_length} tokens; sentence normalisation "
                       f"{'on' if e.normalize_sentences else 'off'}"),
        ("vectors", f"{f['dim']} dims, L2-normalised, {m.metric}"),
        ("transform", t.kind + (f" to {t.dim} dims" if t.dim else "")
         + (f", embed filter {t.embed_filter[0]}:{t.embed_filter[1]} (to {t.out_dim} dims)"
            if t.embed_filter else "")
         + (f", partial whitening power {t.whiten_power:g}" if t.whiten_power else "")
         + (f", fitted on {t.fitted_on} vectors; queries centred on {t.query_samples} "
            f"{t.query_stats}" if t.kind != "none" else "")
         + (f"; query adapter fitted on {t.adapter_pairs} (pseudo-query, document) pairs"
            if t.query_map_file else "") + (f" ({t.note})" if t.note else "")),
        ("segments", segments_row(m)),
        ("faiss index", f"{ix.factory} ({ix.reason}); search {ix.search_params or 'exact'}; "
                        f"recall@10 {ix.recall_at_10}"
                        + (f" on {ix.recall_queries} queries" if ix.recall_queries else "")),
        ("lexical", f"BM25 ({'term frequencies' if m.lexical.library != 'bm25s' else 'bm25s'}) "
                    f"over {m.lexical.rows} {m.lexical.unit}s"
                    + (f" of {m.lexical.mean_length:.1f} terms on average"
                       if m.lexical.mean_length else "")
         if m.lexical else "none"),
        ("metadata", ", ".join(f"{k} ({v})" for k, v in m.metadata.items()) or "none"),
        ("search mode", m.default_mode + (f" ({m.fusion.method}, lexical weight "
                                          f"{m.fusion.lexical_weight}{weight_source(m)})"
                                          if m.default_mode == "hybrid" else "")),
        ("corpus", f"{c.path} ({c.rows} rows, text={c.text_column!r}, id={c.id_column!r}"
                   + (f", title={c.title_column!r}" if c.title_column else "") + ")"),
        ("updates", updates_row(m)),
        ("built", f"{f['built_at']} in {m.build.seconds} s with tpsearch "
                  f"{f['tpsearch_version']} ({m.build.device}, {m.build.batching})"),
        ("files", f"{len(m.files)} checked against the manifest's sizes and SHA-256"),
    ]


def weight_source(m) -> str:
    """Where the lexical weight came from: the index's first build chose it (none given)."""
    config = m.build.config
    if "lexical_weight" in config and config["lexical_weight"] is None:
        return ", by document length"
    return ""


def format_table(rows: list[tuple[str, str]]) -> str:
    """Rows as aligned text, one a line."""
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


def updates_row(m) -> str:
    """``info``'s updates row: how many since the full build, the last three in full."""
    updates = [*m.history, *([m.update] if m.update else [])]
    if not updates:
        return "none (a full build)"
    total = len(updates) + m.history_dropped
    shown = "; ".join(f"from {u.base}: +{u.added} ~{u.changed} -{u.removed} ={u.kept}, "
                      f"transform {u.transform}" + (f", drift {u.drift}" if u.drift is not None else "")
                      for u in updates[-3:])
    return shown if total <= 3 else f"{total} since the full build; the last 3: {shown}"


def segments_row(m) -> str:
    """``info``'s segments row: how many, their sizes, deletions."""
    if not m.segments:
        return "one (a full build)"
    parts = [f"{x.documents - x.deleted}" + (f" (-{x.deleted})" if x.deleted else "")
             for x in m.segments]
    shown = ", ".join(parts[:8]) + (f", ... ({len(parts) - 8} more)" if len(parts) > 8 else "")
    return f"{len(m.segments)}: live documents {shown}"

"""The ``tpsearch`` command line: build, search, info, eval."""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from pathlib import Path

import click

from . import __version__
from .errors import TPSearchError

EXPECTED_ERRORS = (TPSearchError, ValueError, FileNotFoundError, OSError)


def _fail_cleanly(fn):
    """Expected failures become one 'Error: ...' line and exit status 1, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except click.ClickException:
            raise
        except EXPECTED_ERRORS as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("tpsearch: %(message)s"))
    log = logging.getLogger("tpsearch")
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("transformers", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def model_options(fn):
    """The encoder options shared by build and eval."""
    options = [
        click.option("--model", default=None, help="Bundled model name (gemma-3-270m, smollm2-135m, "
                     "qwen2.5-coder-0.5b), a .gguf file, a transformers directory or a hub id. "
                     "Default: gemma-3-270m (offline)."),
        click.option("--prompt", default=None, help="prompteol, pcot, ke, metaeol, or a template "
                     "with {sentence} (and optionally <PST> before it). Default: the model's preset."),
        click.option("--tp-layers", default=None, metavar="START:EXIT",
                     help="Replace <PST> before layers START..EXIT-1. Default: the model's preset."),
        click.option("--no-tp", is_flag=True, default=False,
                     help="Vanilla embeddings: the same prompt without <PST> or replacement."),
        click.option("--output-layer", type=int, default=None,
                     help="Hidden state to pool, indexed like output_hidden_states (-1 = final, "
                     "-2 = one before; layers after it are not run). Default: the model's preset."),
        click.option("--placeholder-init", type=click.Choice(["randn", "mean"]), default=None,
                     help="<PST> embedding row: seeded standard normal (the paper) or the mean "
                     "embedding row. Default: the model's preset."),
        click.option("--pooling", type=click.Choice(["last", "mean"]), default=None,
                     help="last: the prompt's last token (the paper; default); mean: the mean over "
                     "the text's own tokens (not the prompt or <PST>)."),
        click.option("--query-prompt", default=None,
                     help="A different prompt for queries (method or template); default: the same."),
        click.option("--max-length", type=int, default=None, help="Tokens per prompted text; longer "
                     "texts are truncated (the prompt is kept) and counted. Default 256."),
        click.option("--batch-size", type=int, default=None, help="Texts per forward pass (default 32)."),
        click.option("--max-batch-tokens", type=int, default=None, help="Also cap each forward pass at "
                     "this many computed tokens (rows x longest row): long texts go in smaller "
                     "batches. Default: no cap."),
        click.option("--device", default=None, help="auto (cuda, then mps, then cpu), cpu, cuda:0, ..."),
        click.option("--dtype", default=None, help="float32 (CPU default), bfloat16 (GPU default), float16."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _model_settings(model, prompt, tp_layers, no_tp, output_layer, placeholder_init, pooling,
                    query_prompt, max_length, batch_size, max_batch_tokens, device, dtype) -> dict:
    """Only the options given on the command line (so config files and presets fill the rest)."""
    if no_tp and tp_layers:
        raise click.UsageError("--no-tp and --tp-layers contradict each other")
    given = {"model": model, "prompt": prompt, "output_layer": output_layer,
             "placeholder_init": placeholder_init, "pooling": pooling, "query_prompt": query_prompt,
             "max_length": max_length, "batch_size": batch_size, "max_batch_tokens": max_batch_tokens,
             "device": device, "dtype": dtype,
             "tp_layers": "none" if no_tp else tp_layers}
    return {k: v for k, v in given.items() if v is not None}


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="tpsearch")
@click.option("-v", "--verbose", is_flag=True, help="More log output.")
def main(verbose: bool) -> None:
    """Vector search over Token Prepending embeddings from decoder LLMs.

    \b
    Build an index from a Parquet corpus, then query it:
      tpsearch build data/demo/stdlib_docs.parquet --out demo-index --title-column title
      tpsearch search demo-index "read a file line by line"
      tpsearch info demo-index
    Measure embedding quality on STS (SentEval layout):
      tpsearch eval sts --data-dir ../shared/data/sts --tasks STSBenchmark-dev
    """
    _setup_logging(verbose)
    _use_all_cores()


def _use_all_cores() -> None:
    """Intra-op threads = the cores this process may use (shared among torchrun's local ranks)."""
    import os

    import torch

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    cores = max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if os.environ.get("LOCAL_WORLD_SIZE"):
        torch.set_num_threads(cores)
    elif torch.get_num_threads() < cores:
        torch.set_num_threads(cores)


# ---------------------------------------------------------------------------------- build
@main.command()
@click.argument("corpus", required=False)
@click.option("--out", "out", default=None, help="Index directory to create (appears only when complete).")
@click.option("--text-column", default=None, help="Column with the text (default: text).")
@click.option("--id-column", default=None, help="Column with unique string or integer ids (default: id).")
@click.option("--title-column", default=None, help="Optional column joined before the text.")
@click.option("--store-text/--no-store-text", default=None,
              help="Keep the texts in the id map for RAG answers (default: on).")
@click.option("--strict", is_flag=True, default=None, help="Fail on a null or empty text instead of skipping it.")
@click.option("--index", "index", default=None, help="auto (default), flat, hnsw, ivf, ivfpq, or a FAISS "
              "factory string such as 'IVF1024,PQ64'.")
@click.option("--max-index-memory", default=None, help="Memory budget for the index, e.g. 2GB; guides 'auto'.")
@click.option("--shard-rows", type=int, default=None, help="Corpus rows per resumable shard (default 2048).")
@click.option("--fresh", is_flag=True, default=None, help="Discard shards left by an interrupted build with other settings.")
@click.option("--overwrite", is_flag=True, default=False, help="Replace OUT if it exists (only once the new index is complete).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="YAML or TOML file with the same options (command-line options win).")
@model_options
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@_fail_cleanly
def build(corpus, out, text_column, id_column, title_column, store_text, strict, index,
          max_index_memory, shard_rows, fresh, overwrite, config_file, no_progress, **model_kw):
    """Embed a Parquet CORPUS (file, directory or glob) into a FAISS index directory.

    The index directory holds index.faiss, ids.parquet (FAISS row -> id, and the text) and
    manifest.json (everything needed to encode queries the same way). An interrupted build
    resumes from its last complete shard when run again with the same arguments.
    """
    from .config import build_config_from, read_config_file
    from .pipeline import build_index

    options = read_config_file(config_file) if config_file else {}
    cli = {"corpus": corpus, "out": out, "text_column": text_column, "id_column": id_column,
           "title_column": title_column, "store_text": store_text, "strict": strict,
           "index": index, "max_index_memory": max_index_memory, "shard_rows": shard_rows,
           "fresh": fresh}
    options.update({k: v for k, v in cli.items() if v is not None})
    options.update(_model_settings(**model_kw))
    if not options.get("corpus"):
        raise click.UsageError("give a CORPUS (or 'corpus' in --config)")
    if not options.get("out"):
        raise click.UsageError("give --out (or 'out' in --config)")
    config = build_config_from(options)
    t0 = time.perf_counter()
    result = build_index(config, show_progress=not no_progress, overwrite=overwrite)
    m = result.manifest
    if not m:  # a torchrun rank other than 0: rank 0 reports
        return
    secs = time.perf_counter() - t0
    enc_secs = m["build"]["stage_seconds"]["encode"] or 1e-9
    size = sum(f.stat().st_size for f in result.out.iterdir()) / 2**20
    click.echo(
        f"built {result.out}: {m['documents']} documents, {m['skipped_rows']} skipped, "
        f"{m['truncated_texts']} truncated, {secs:.1f} s, "
        f"{result.encoded_documents / enc_secs:.1f} docs/s and {result.encoded_tokens / enc_secs:,.0f} "
        f"tokens/s encoding, index {m['index']['factory']} ({size:.1f} MiB on disk)", err=True)


# ---------------------------------------------------------------------------------- search
@main.command()
@click.argument("index_dir", type=click.Path(file_okay=False))
@click.argument("query", required=False)
@click.option("-k", "k", type=int, default=10, show_default=True, help="Hits per query.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per query.")
@click.option("--nprobe", type=int, default=None, help="Override the IVF lists probed.")
@click.option("--ef-search", type=int, default=None, help="Override HNSW efSearch.")
@click.option("--device", default="auto", help="Where to run the query encoder.")
@click.option("--width", type=int, default=100, show_default=True, help="Characters of text shown per hit.")
@_fail_cleanly
def search(index_dir, query, k, as_json, nprobe, ef_search, device, width):
    """Search INDEX_DIR for QUERY; without QUERY, answer one query per line of standard input."""
    from .searcher import Searcher

    searcher = Searcher.open(index_dir, device=device)
    params = {}
    if nprobe is not None:
        params["nprobe"] = nprobe
    if ef_search is not None:
        params["efSearch"] = ef_search
    queries = [query] if query is not None else [q.strip() for q in sys.stdin if q.strip()]
    results = searcher.search_batch(queries, k=k, **params)
    for q, hits in zip(queries, results):
        if as_json:
            click.echo(json.dumps({"query": q, "hits": [h.to_dict() for h in hits]}, ensure_ascii=False))
            continue
        click.echo(f"query: {q}")
        for h in hits:
            text = "" if h.text is None else " ".join(h.text.split())
            if len(text) > width:
                text = text[: width - 3] + "..."
            click.echo(f"{h.rank:>3}  {h.score:.4f}  {h.id}  {text}")
        if len(queries) > 1:
            click.echo("")


# ---------------------------------------------------------------------------------- info
@main.command()
@click.argument("index_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@_fail_cleanly
def info(index_dir, as_json):
    """Show what an index holds and how its queries are encoded."""
    from .manifest import read_manifest

    m = read_manifest(index_dir)
    if as_json:
        click.echo(json.dumps(m, indent=2))
        return
    e, ix, c = m["encoder"], m["index"], m["corpus"]
    tp = f"{e['tp_layers'][0]}:{e['tp_layers'][1]}" if e["tp_layers"] else "off (vanilla)"
    rows = [
        ("index", f"{index_dir}"),
        ("documents", f"{m['documents']} ({m['skipped_rows']} rows skipped, {m['truncated_texts']} texts truncated)"),
        ("model", f"{m['model']['spec']} [{m['model']['kind']}] sha256 {str(m['model']['weights_sha256'])[:16]}"),
        ("prompt", f"{e['prompt']}: {e['templates'][0]}" + (f" (+{len(e['templates']) - 1} more)" if len(e['templates']) > 1 else "")),
        ("token prepending", tp),
        ("output layer", f"{e['output_layer']} of {e['n_layers']} layers, {e['pooling']} token pooling"),
        ("max length", f"{e['max_length']} tokens; sentence normalisation {'on' if e['normalize_sentences'] else 'off'}"),
        ("vectors", f"{m['dim']} dims, L2-normalised, {m['metric']}"),
        ("faiss index", f"{ix['factory']} ({ix['reason']}); search {ix['search_params'] or 'exact'}; "
                        f"recall@10 {ix['recall_at_10']}" + (f" on {ix['recall_queries']} queries" if ix['recall_queries'] else "")),
        ("corpus", f"{c['path']} ({c['rows']} rows, text={c['text_column']!r}, id={c['id_column']!r}"
                   + (f", title={c['title_column']!r}" if c['title_column'] else "") + ")"),
        ("built", f"{m['build']['started_at']} in {m['build']['seconds']} s with tpsearch {m['tpsearch_version']}"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")


# ---------------------------------------------------------------------------------- bench
@main.command()
@click.option("--model", default=None, help="Model to measure (default: gemma-3-270m).")
@click.option("--corpus", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Parquet file with a 'text' column (and 'title', joined if present). Default: the demo corpus.")
@click.option("--docs", type=int, default=256, show_default=True, help="Documents measured (the first N).")
@click.option("--rounds", type=int, default=2, show_default=True, help="Alternating rounds; the best is kept.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--max-batch-tokens", type=int, default=None, help="Token budget per batch (rows x longest row).")
@click.option("--tp-layers", default=None, metavar="START:EXIT", help="TP range (default: the model's preset).")
@click.option("--output-layer", type=int, default=None, help="Early-exit layer (default: the model's preset).")
@click.option("--device", default="auto")
@click.option("--dtype", default=None)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
@click.option("--output", type=click.Path(dir_okay=False), default="tpsearch-bench.json", show_default=True,
              help="Where the JSON figures are written.")
@_fail_cleanly
def bench(model, corpus, docs, rounds, batch_size, max_batch_tokens, tp_layers, output_layer,
          device, dtype, as_json, output):
    """Encoder throughput: vanilla vs TP, with and without early exit, against the machine's
    matrix-product rate. With no options: the default model on the demo corpus (minutes)."""
    from .bench import DEMO_CORPUS, bench_texts, format_bench, run_bench
    from .config import BuildConfig, parse_tp_layers
    from .encoder import TPEncoder

    all_texts = bench_texts(corpus or DEMO_CORPUS)
    texts = all_texts[:docs]
    tp = parse_tp_layers(tp_layers) if tp_layers else "auto"
    enc = TPEncoder.from_pretrained(model or "gemma-3-270m", tp_layers=tp, output_layer=output_layer,
                                    device=device, dtype=dtype)
    result = run_bench(texts, enc, rounds=rounds, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                       corpus_texts=all_texts, window=BuildConfig().shard_rows)
    Path(output).write_text(json.dumps(result, indent=1))
    click.echo(json.dumps(result) if as_json else format_bench(result))


# ---------------------------------------------------------------------------------- eval
@main.group()
def eval():  # noqa: A001 - the command is called "eval"
    """Measure embedding quality."""


@eval.command("sts")
@click.option("--data-dir", required=True, type=click.Path(file_okay=False),
              help="SentEval-layout STS data (STS12-en-test/, STSBenchmark/, SICK/ ...).")
@click.option("--tasks", default=None, help="Comma-separated: STS12..STS16, STSBenchmark, "
              "STSBenchmark-dev, SICKRelatedness. Default: the seven STS tasks of the paper.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@model_options
@_fail_cleanly
def eval_sts(data_dir, tasks, as_json, **model_kw):
    """Spearman x 100 of cosine similarity on STS tasks, as in the paper's tables."""
    from .config import ModelConfig, parse_tp_layers
    from .encoder import TPEncoder
    from .sts import ALL_TASKS, STS_TASKS, evaluate, format_table

    chosen = [t.strip() for t in tasks.split(",")] if tasks else list(STS_TASKS)
    unknown = [t for t in chosen if t not in ALL_TASKS]
    if unknown:
        raise click.UsageError(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(ALL_TASKS)}")
    given = _model_settings(**model_kw)
    if "tp_layers" in given:
        given["tp_layers"] = parse_tp_layers(given["tp_layers"])
    cfg = ModelConfig(**given)
    if "max_length" not in given:
        cfg.max_length = 512
    enc = TPEncoder.from_pretrained(**cfg.encoder_kwargs())
    t0 = time.perf_counter()
    result = evaluate(lambda s: enc.encode(s, batch_size=cfg.batch_size, show_progress=not as_json,
                                           max_batch_tokens=cfg.max_batch_tokens),
                      data_dir, chosen)
    settings = enc.settings.to_dict()
    settings["weights_sha256"] = enc.source.weights_sha256 if enc.source else None
    if as_json:
        click.echo(json.dumps({"tasks": result["tasks"], "avg": result["avg"],
                               "missing": result["missing"], "pairs": result["pairs"],
                               "settings": settings, "seconds": round(time.perf_counter() - t0, 1)}))
        return
    tp = settings["tp_layers"]
    click.echo(f"model {settings['model']}, prompt {settings['prompt']}, "
               f"TP {f'{tp[0]}:{tp[1]}' if tp else 'off'}, output layer {settings['output_layer']}")
    click.echo(format_table(result, chosen))
    if result["missing"]:
        click.echo(f"missing (no files under {data_dir}): {', '.join(result['missing'])}")


@eval.command("retrieval")
@click.option("--data-dir", required=True, type=click.Path(file_okay=False),
              help="BEIR layout: corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv.")
@click.option("--split", default="test", show_default=True, help="Which qrels file.")
@click.option("--index", "index", default="flat", show_default=True, help="FAISS index for the run.")
@click.option("--index-dir", default=None, type=click.Path(file_okay=False),
              help="Keep the built index here (default: a temporary directory).")
@click.option("--compare", is_flag=True, help="Run vanilla and TP, each with last-token and mean "
              "pooling, on one loaded model and print them side by side.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@model_options
@_fail_cleanly
def eval_retrieval(data_dir, split, index, index_dir, compare, as_json, **model_kw):
    """nDCG@10, MRR@10 and Recall@1/10/100 on a BEIR-format data set, built with the real
    pipeline and searched with the real Searcher.

    \b
    One setting:       tpsearch eval retrieval --data-dir DIR --pooling mean
    Four side by side: tpsearch eval retrieval --data-dir DIR --compare"""
    from .config import ModelConfig, parse_tp_layers
    from .retrieval import compare_retrieval, evaluate_retrieval

    given = _model_settings(**model_kw)
    if "tp_layers" in given:
        given["tp_layers"] = parse_tp_layers(given["tp_layers"])
    if compare:
        if index_dir or "pooling" in given:
            raise click.UsageError("--compare runs every pooling in temporary indexes: "
                                   "drop --pooling and --index-dir")
        runs = compare_retrieval(data_dir, ModelConfig(**given), split=split, index=index,
                                 show_progress=not as_json)
    else:
        runs = [evaluate_retrieval(data_dir, ModelConfig(**given), split=split, index=index,
                                   index_dir=index_dir, show_progress=not as_json)]
    if as_json:
        click.echo(json.dumps({"runs": runs} if compare else runs[0]))
        return
    st, first = runs[0]["settings"], runs[0]
    tp = f"{st['tp_layers'][0]}:{st['tp_layers'][1]}" if st["tp_layers"] else "off"
    if compare:
        tp_run = next(r for r in runs if r["settings"]["tp_layers"])["settings"]["tp_layers"]
        tp = f"{tp_run[0]}:{tp_run[1]} where on"
    click.echo(f"model {st['model']}, prompt {st['prompt']}, TP {tp}, output layer {st['output_layer']}"
               + ("" if compare else f", pooling {st['pooling']}")
               + f"; {first['queries']} queries, {first['documents']} documents")
    names = ["nDCG@10", "MRR@10", "R@1", "R@10", "R@100"]
    keys = ["ndcg@10", "mrr@10", "recall@1", "recall@10", "recall@100"]
    width = max([len(r.get("label", "")) for r in runs] + [0])
    pad = f"{'':<{width}}  " if width else ""
    click.echo(pad + "  ".join(f"{n:>8s}" for n in names))
    for r in runs:
        label = f"{r['label']:<{width}}  " if width else ""
        click.echo(label + "  ".join(f"{r['metrics'][k] * 100:8.2f}" for k in keys))


if __name__ == "__main__":  # pragma: no cover
    main()

"""The ``tpsearch`` command line: build, search, info, eval."""

from __future__ import annotations

import os
import json
import sys
import time
from pathlib import Path

import click

from .version import __version__
from .cli_info import format_table, info_rows
from .cli_options import (BUILD_KEYS, RETRIEVAL_KEYS, fail_cleanly, model_options,
                          model_settings, options_of, retrieval_options, serve_options)
from .cli_runtime import json_logs, setup_logging, use_all_cores
from .config import BuildConfig, ModelConfig
from .fusion import MODES
from .transform import DEFAULT_WHITEN_POWER


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
    setup_logging(verbose)
    use_all_cores()


# ---------------------------------------------------------------------------------- build
@main.command()
@click.argument("corpus", required=False)
@click.option("--out", "out", default=None, help="Index directory to create (appears only when "
              "complete), or an index to publish a new version of (with --overwrite).")
@options_of(BuildConfig, BUILD_KEYS)
@click.option("--overwrite", is_flag=True, default=False,
              help="OUT is an index already: rebuild it from scratch (without this, a build into "
              "an index encodes only new and changed documents). Either way the result is "
              "published as OUT's next version; nothing but an index is ever replaced.")
@retrieval_options
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="YAML or TOML file with the same options (command-line options win).")
@model_options
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process (or torchrun's ranks); ray: Ray Data schedules reading, "
              "tokenising, encoding and assembly on a Ray instance (pip install 'tpsearch[ray]').")
@click.option("--ray-address", default=None, help="Ray cluster to join (default: RAY_ADDRESS, "
              "else a local instance).")
@click.option("--ray-actors", type=int, default=1, show_default=True,
              help="Encoder actors (one model each; also the number of segments).")
@click.option("--ray-gpus-per-actor", type=float, default=0.0, show_default=True,
              help="GPUs per encoder actor (1 on a GPU cluster: one model per GPU).")
@click.option("--ray-prepare-workers", type=int, default=1, show_default=True,
              help="CPU actors that read and tokenise windows while the encoders run.")
@fail_cleanly
def build(corpus, out, overwrite, config_file, no_progress, engine, ray_address, ray_actors,
          ray_gpus_per_actor, ray_prepare_workers, **kw):
    """Embed a Parquet CORPUS (file, directory or glob) into a FAISS index directory.

    Each document is cut into passages, each passage embedded; a BM25 index is built over the
    same passages. The index directory holds versions/<version>/ with index.faiss (with the
    fitted transform), ids.parquet (vector -> document id, passage number, span, text),
    lexical/ and manifest.json (everything needed to encode queries the same way), and
    CURRENT, naming the version searches open. An interrupted build resumes from its last
    complete shard when run again with the same arguments.

    \b
    tpsearch build docs.parquet --out idx --title-column title
    tpsearch build docs.parquet --out idx --passage-tokens 0 --transform none --no-lexical
    tpsearch build docs.parquet --out idx --engine ray --ray-actors 4 --ray-gpus-per-actor 1
    """
    from .config import build_config_from, read_config_file
    from .pipeline import build_index

    options = read_config_file(config_file) if config_file else {}
    cli = {"corpus": corpus, "out": out, **{k: kw.pop(k) for k in BUILD_KEYS + RETRIEVAL_KEYS}}
    options.update({k: v for k, v in cli.items() if v is not None})
    options.update(model_settings(**kw))
    if not options.get("corpus"):
        raise click.UsageError("give a CORPUS (or 'corpus' in --config)")
    if not options.get("out"):
        raise click.UsageError("give --out (or 'out' in --config)")
    config = build_config_from(options)
    t0 = time.perf_counter()
    if engine == "ray":
        from .pipeline.ray_engine import RayOptions, build_with_ray

        result = build_with_ray(config, RayOptions(ray_address, ray_actors, ray_gpus_per_actor,
                                                   prepare_workers=ray_prepare_workers),
                                show_progress=not no_progress, overwrite=overwrite)
    else:
        result = build_index(config, show_progress=not no_progress, overwrite=overwrite)
    m = result.manifest
    if not m:  # a torchrun rank other than 0: rank 0 reports
        return
    secs = time.perf_counter() - t0
    enc_secs = m.build.stage_seconds.get("encode") or 1e-9
    size = sum(f.stat().st_size for f in (result.out / "versions" / str(m.version)).rglob("*")
               if f.is_file()) / 2**20
    click.echo(
        f"built {result.out} (version {m.version}): {m.documents} documents in {m.vectors} passages, {m.skipped_rows} "
        f"skipped, {m.truncated_texts} truncated, {secs:.1f} s, "
        f"{result.encoded_documents / enc_secs:.1f} docs/s and {result.encoded_tokens / enc_secs:,.0f} "
        f"tokens/s encoding, index {m.index.factory} + {m.transform.kind} transform"
        + (f" + embed filter {m.transform.embed_filter[0]}:{m.transform.embed_filter[1]}"
           if m.transform.embed_filter else "")
        + (f" + partial whitening {m.transform.whiten_power:g}" if m.transform.whiten_power else "")
        + (" + query adapter" if m.transform.query_map_file else "")
        + f"{' + BM25' if m.lexical else ''} ({size:.1f} MiB on disk)", err=True)


# ---------------------------------------------------------------------------------- add / delete
@main.command()
@click.argument("index_dir", type=click.Path(file_okay=False))
@click.argument("corpus", type=click.Path(dir_okay=False))
@click.option("--refit", is_flag=True, help="Fit the transform and query shift anew.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@fail_cleanly
def add(index_dir, corpus, refit, no_progress):
    """Add documents to INDEX_DIR from a Parquet CORPUS with the index's columns, or replace
    those whose id it holds (upsert). Only these rows are encoded; the result is the index's
    next version. Waits (up to 10 minutes) for another build or update of INDEX_DIR to finish;
    an interrupted add is resumed by running it again.

    \b
    tpsearch add idx new-docs.parquet"""
    from .updates import update

    res = update(index_dir, upsert=corpus, refit=refit, show_progress=not no_progress)
    _report_update(res)


@main.command()
@click.argument("index_dir", type=click.Path(file_okay=False))
@click.argument("ids", nargs=-1)
@click.option("--ids-file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="A text file of ids, one a line.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@fail_cleanly
def delete(index_dir, ids, ids_file, no_progress):
    """Delete documents from INDEX_DIR by id (IDs on the command line and/or --ids-file);
    nothing is encoded; the result is the index's next version. Ids it does not hold are
    ignored (and counted out); on an integer-id index each must be ASCII digits. Waits (up to
    10 minutes) for another build or update of INDEX_DIR to finish.

    \b
    tpsearch delete idx doc-17 doc-42
    tpsearch delete idx --ids-file gone.txt"""
    from .manifest import open_manifest
    from .updates import ids_from_text, read_ids_file, update

    wanted = list(ids) + (read_ids_file(ids_file) if ids_file else [])
    if not wanted:
        raise click.UsageError("give ids to delete, or --ids-file")
    id_type = open_manifest(index_dir)[1].id_type
    res = update(index_dir, delete=ids_from_text(wanted, id_type, "delete"),
                 show_progress=not no_progress)
    _report_update(res)


@main.command()
@click.argument("index_dir", type=click.Path(file_okay=False))
@fail_cleanly
def compact(index_dir):
    """Merge all segments of INDEX_DIR into one, dropping deleted documents (adds and deletes
    write small segments and deletion marks; the writer merges them as they pile up, and this
    folds everything, e.g. before copying the index elsewhere). Nothing is encoded; readers
    keep their version meanwhile. Waits (up to 10 minutes) for another writer of INDEX_DIR.

    \b
    tpsearch compact idx"""
    from .index_writer import IndexWriter

    with IndexWriter(index_dir) as writer:
        before = len(writer.segments)
        res = writer.compact()
    if res is None:
        click.echo(f"{index_dir}: one segment, nothing deleted: nothing to compact", err=True)
        return
    click.echo(f"{res.out}: version {res.manifest.version}: {before} segment(s) merged into one, "
               f"{res.manifest.documents} documents", err=True)


def _report_update(res) -> None:
    u = res.manifest.update
    click.echo(f"{res.out}: version {res.manifest.version} (was {u.base}): {u.added} added, "
               f"{u.changed} changed, {u.removed} removed, {u.kept} kept; "
               f"{res.encoded_documents} documents encoded", err=True)


# ---------------------------------------------------------------------------------- search
@main.command()
@click.argument("index_dir", type=click.Path(file_okay=False))
@click.argument("query", required=False)
@click.option("-k", "k", type=int, default=10, show_default=True, help="Hits per query.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per query.")
@click.option("--nprobe", type=int, default=None, help="Override the IVF lists probed.")
@click.option("--ef-search", type=int, default=None, help="Override HNSW efSearch.")
@click.option("--device", default="auto", help="Where to run the query encoder.")
@click.option("--mode", type=click.Choice(list(MODES)), default=None,
              help="dense (vectors), lexical (BM25) or hybrid (fused). Default: the index's.")
@click.option("--passages", is_flag=True, help="Return the k best passages instead of documents.")
@click.option("--filter", "filter_", default=None, metavar="JSON",
              help='Only documents whose metadata match, e.g. \'{"lang": "en", "year": {"$gte": '
              '2020}}\' (operators $eq $ne $gt $gte $lt $lte $in $nin $contains $null $and $or '
              '$not; the index needs --metadata-columns).')
@click.option("--trust-remote-code", is_flag=True,
              help="Allow the model directory's own Python code to run (never by default).")
@click.option("--model", "model", default=None,
              help="Where the index's model is now, if it moved (its weights are still checked "
              "against the hash the index recorded).")
@click.option("--rerank", type=int, default=0, metavar="N",
              help="Re-score the best N documents with the index's own decoder (query "
              "likelihood given each one's passage, mixed with the first stage's score). "
              "Slower: one decoder pass per passage; see the README for the gain. Default: off.")
@click.option("--width", type=int, default=100, show_default=True, help="Characters of text shown per hit.")
@fail_cleanly
def search(index_dir, query, k, as_json, nprobe, ef_search, device, mode, passages, filter_,
           trust_remote_code, model, rerank, width):
    """Search INDEX_DIR for QUERY; without QUERY, answer one query per line of standard input.

    Hits are documents, each scored by its best passage, shown with that passage (-k counts
    documents); --passages lists passages instead."""
    from .searcher import Searcher

    if k < 1:
        raise click.UsageError(f"-k must be positive, got {k}")
    searcher = Searcher.open(index_dir, device=device, trust_remote_code=trust_remote_code,
                             model=model)
    params = {}
    if nprobe is not None:
        params["nprobe"] = nprobe
    if ef_search is not None:
        params["efSearch"] = ef_search
    if query is not None:
        queries = [query]
    else:  # undecodable bytes become U+FFFD: one bad line does not fail the others
        lines = (raw.decode("utf8", errors="replace") for raw in sys.stdin.buffer)
        queries = [q.strip() for q in lines if q.strip()]
    results = searcher.search_batch(queries, k=k, mode=mode, passages=passages, filter=filter_,
                                    rerank=rerank, **params)
    for q, hits in zip(queries, results):
        if as_json:
            click.echo(json.dumps({"query": q, "hits": [h.to_dict() for h in hits]}, ensure_ascii=False))
            continue
        click.echo(f"query: {q}")
        for h in hits:
            text = "" if h.text is None else " ".join(h.text.split())
            if len(text) > width:
                text = text[: width - 3] + "..."
            where = f"#{h.passage}" if searcher.manifest.passages and searcher.manifest.passages.max_tokens else ""
            click.echo(f"{h.rank:>3}  {h.score:.4f}  {h.id}{where}  {text}")
        if len(queries) > 1:
            click.echo("")


# ---------------------------------------------------------------------------------- serve
@main.command()
@click.argument("index_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@serve_options
@fail_cleanly
def serve(index_dirs, **kw):
    """Serve INDEX_DIRS over HTTP (needs: pip install 'tpsearch[serve]').

    Each index is served under its folder's name. Queries of concurrent requests are encoded
    in one forward pass; a directory republished by a build is picked up without dropping a
    request (or at once with POST /admin/reload); a damaged new version is refused and the old
    one keeps serving. SIGTERM stops accepting, finishes what is in flight and exits 0.

    \b
    tpsearch serve demo-index
    curl -s localhost:8000/search -d '{"query": "parse JSON text", "k": 3}'
    Endpoints: POST /search, /indexes/NAME/search, /v1/embeddings (OpenAI), /admin/reload;
    GET /v1/models, /indexes, /healthz, /readyz, /metrics (Prometheus), /docs."""
    try:
        from .serve.app import run
        from .serve.config import ServeConfig
    except ImportError as exc:
        raise click.ClickException(f"serving needs the serve extra ({exc.name} is missing): "
                                   "pip install 'tpsearch[serve]'") from None
    if kw.get("api_key") is None and os.environ.get("TPSEARCH_API_KEY") is not None:
        kw["api_key"] = os.environ["TPSEARCH_API_KEY"]  # click reads a set but empty one as unset
    config = ServeConfig(**{k: v for k, v in kw.items() if v is not None})
    config.check()
    json_logs(config)
    click.echo(f"tpsearch: serving {', '.join(index_dirs)} on http://{config.host}:{config.port}"
               + (" (API key required)" if config.api_key else ""), err=True)
    run(list(index_dirs), config)


# ---------------------------------------------------------------------------------- info
@main.command()
@click.argument("index_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@fail_cleanly
def info(index_dir, as_json):
    """Show what the current version of an index holds and how its queries are encoded;
    exit 1 if it is damaged (a file missing, unlisted, of the wrong size or checksum, or
    unreadable)."""
    from .searcher import Searcher

    s = Searcher.open(index_dir, verify=True)  # reads and checks every file the manifest names
    m = s.manifest
    if as_json:
        click.echo(json.dumps(m.to_dict(), indent=2))
        return
    rows = info_rows(index_dir, m)
    click.echo(format_table(rows))


# ---------------------------------------------------------------------------------- bench
@main.command()
@click.option("--model", default=None, help="Model to measure (default: gemma-3-270m).")
@click.option("--corpus", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Parquet file with a 'text' column (and 'title', joined if present). Default: the demo corpus.")
@click.option("--docs", type=int, default=256, show_default=True, help="Documents measured (the first N).")
@click.option("--rounds", type=int, default=2, show_default=True, help="Alternating rounds; the best is kept.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--max-batch-tokens", type=int, default=2048, show_default=True,
              help="Token budget per batch (rows x longest row): on the 256 default documents it "
              "keeps padding at the level a whole-corpus build gets (sorted 2,048-row shards).")
@click.option("--tp-layers", default=None, metavar="START:EXIT", help="TP range (default: the model's preset).")
@click.option("--output-layer", type=int, default=None, help="Early-exit layer (default: the model's preset).")
@click.option("--device", default="auto")
@click.option("--dtype", default=None)
@click.option("--batching", default="auto", show_default=True, metavar="B[,B...]",
              help="Batch shapes (auto, sorted, bucketed, graphs); more than one, comma-separated, "
              "measures each side by side against the first.")
@click.option("--compile", "compile_pass", is_flag=True, help="Then compile the decoder layers and "
              "measure vanilla_last and tp_exit (and tp_exit_bf16) again, as '+compiled'.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
@click.option("--output", type=click.Path(dir_okay=False), default="tpsearch-bench.json", show_default=True,
              help="Where the JSON figures are written.")
@fail_cleanly
def bench(model, corpus, docs, rounds, batch_size, max_batch_tokens, tp_layers, output_layer,
          device, dtype, batching, compile_pass, as_json, output):
    """Encoder throughput: vanilla vs TP, with and without early exit, against the machine's
    matrix-product rate. With no options: the default model on the demo corpus (minutes)."""
    from .eval.bench import bench_texts, format_bench, run_bench
    from .loading import DEFAULT_MODEL
    from .config import BuildConfig, parse_tp_layers
    from .encoder import TPEncoder
    from .shapes import resolve_batching

    all_texts = bench_texts(corpus or _demo_corpus_or_fail())
    texts = all_texts[:docs]
    tp = parse_tp_layers(tp_layers) if tp_layers else "auto"
    batchings = [b.strip() for b in batching.split(",") if b.strip()] or ["auto"]
    enc = TPEncoder.from_pretrained(model or DEFAULT_MODEL, tp_layers=tp, output_layer=output_layer,
                                    device=device, dtype=dtype, batching=batchings[0],
                                    compile_layers=False, quantize="none")
    others = [resolve_batching(b, enc.device) for b in batchings[1:]]
    result = run_bench(texts, enc, rounds=rounds, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                       corpus_texts=all_texts, window=BuildConfig().shard_rows, batchings=others,
                       compile_pass=compile_pass)
    Path(output).write_text(json.dumps(result, indent=1))
    click.echo(json.dumps(result) if as_json else format_bench(result))


def _demo_corpus_or_fail() -> Path:
    from .eval.bench import demo_corpus

    path = demo_corpus()
    if path is None:
        raise click.UsageError("no demo corpus here (it ships with the source tree): give --corpus")
    return path


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
@click.option("--fit-transform", "fit_file", type=click.Path(dir_okay=False), default=None,
              help="Text file of unlabeled sentences, one a line: fit --transform on them and "
              "report the scores with the transform beside the raw ones.")
@click.option("--transform", type=click.Choice(["center", "whiten"]), default="center",
              show_default=True, help="The transform --fit-transform fits.")
@click.option("--transform-dim", type=int, default=256, show_default=True,
              help="Output dimensions of 'whiten'.")
@click.option("--embed-filter", default="none", show_default=True, metavar="TOP:BOTTOM",
              help="Also project out the unembedding's edge directions (EmbedFilter) in the "
              "transform --fit-transform fits.")
@click.option("--whiten-power", type=float, default=0.0, show_default=True, metavar="P",
              help="Also whiten 'center' partially (power P; a build's default is "
              f"{DEFAULT_WHITEN_POWER}) in the transform --fit-transform fits.")
@model_options
@fail_cleanly
def eval_sts(data_dir, tasks, as_json, fit_file, transform, transform_dim, embed_filter,
             whiten_power, **model_kw):
    """Spearman x 100 of cosine similarity on STS tasks, as in the paper's tables.

    \b
    tpsearch eval sts --data-dir ../shared/data/sts --tasks STSBenchmark-dev,STS12
    tpsearch eval sts --data-dir DIR --tasks STSBenchmark-dev --fit-transform unlabeled.txt"""
    from .encoder import TPEncoder
    from .eval.sts import ALL_TASKS, STS_TASKS, evaluate, format_table

    chosen = [t.strip() for t in tasks.split(",")] if tasks else list(STS_TASKS)
    unknown = [t for t in chosen if t not in ALL_TASKS]
    if unknown:
        raise click.UsageError(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(ALL_TASKS)}")
    cfg = ModelConfig(**model_settings(**model_kw))
    enc = TPEncoder.load(cfg)
    t0 = time.perf_counter()

    def embed(sentences):
        return enc.encode(sentences, batch_size=cfg.batch_size, show_progress=not as_json,
                          max_batch_tokens=cfg.max_batch_tokens)

    result = evaluate(embed, data_dir, chosen)
    fitted = None
    if fit_file:
        from .eval.sts import evaluate_fitted

        from .embedfilter import parse_filter, unembedding_of

        ef = parse_filter(embed_filter)
        fitted = evaluate_fitted(embed, data_dir, chosen, fit_file, transform, transform_dim, ef,
                                 unembedding_of(enc.model, enc.placeholder_row) if ef else None,
                                 whiten_power)
    settings = enc.settings.to_dict()
    settings["weights_sha256"] = enc.source.weights_sha256 if enc.source else None
    if as_json:
        click.echo(json.dumps({"tasks": result["tasks"], "avg": result["avg"],
                               "missing": result["missing"], "pairs": result["pairs"],
                               "fitted": fitted, "settings": settings,
                               "seconds": round(time.perf_counter() - t0, 1)}))
        return
    tp = settings["tp_layers"]
    click.echo(f"model {settings['model']}, prompt {settings['prompt']}, "
               f"TP {f'{tp[0]}:{tp[1]}' if tp else 'off'}, output layer {settings['output_layer']}")
    click.echo(format_table(result, chosen))
    if fitted:
        click.echo(f"with {fitted['transform']} fitted on {fitted['fit_sentences']} sentences "
                   f"of {fit_file}:")
        click.echo(format_table(fitted, chosen))
    if result["missing"]:
        click.echo(f"missing (no files under {data_dir}): {', '.join(result['missing'])}")


@eval.command("retrieval")
@click.option("--data-dir", required=True, type=click.Path(file_okay=False),
              help="BEIR layout: corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv.")
@click.option("--split", default="test", show_default=True, help="Which qrels file.")
@click.option("--index", "index", default="flat", show_default=True, help="FAISS index for the run.")
@click.option("--index-dir", default=None, type=click.Path(file_okay=False),
              help="Keep the built index here (default: a temporary directory).")
@click.option("--search-mode", "search_modes", default=None,
              help="Comma-separated modes to score on the one index (default: its default mode).")
@click.option("--compare", is_flag=True, help="tpsearch 0.1's whole documents, 0.3's passages, "
              "transform, lexical and hybrid, each method added since on its own, the defaults, "
              "the defaults reranked and the defaults without TP (vanilla, encoded anew): side "
              "by side, one loaded model; each row against the defaults in its mode, query by "
              "query (95% bootstrap interval, paired randomisation p-value).")
@click.option("--rerank", type=int, default=None, metavar="N",
              help="Rerank the best N documents with the decoder (with --compare: the reranked "
              "row's depth, 0 leaves it out; default there: 10).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@retrieval_options
@model_options
@fail_cleanly
def eval_retrieval(data_dir, split, index, index_dir, search_modes, compare, rerank, as_json, **kw):
    """nDCG@10, MRR@10 and Recall@1/10/100 on a BEIR-format data set, built with the real
    pipeline and searched with the real Searcher.

    \b
    The defaults:   tpsearch eval retrieval --data-dir DIR --split dev
    Side by side:   tpsearch eval retrieval --data-dir DIR --split dev --compare
    Other settings: tpsearch eval retrieval --data-dir DIR --passage-tokens 0 --search-mode dense,lexical"""
    from .config import build_config_from
    from .eval.retrieval import compare_retrieval, evaluate_retrieval
    from .eval.significance import describe

    options = {k: v for k, v in ((k, kw.pop(k)) for k in RETRIEVAL_KEYS) if v is not None}
    options.update(model_settings(**kw))
    build = build_config_from({**options, "index": index, "title_column": "title",
                               "store_text": False})
    if compare:
        if index_dir or search_modes:
            raise click.UsageError("--compare builds its own temporary indexes and modes: "
                                   "drop --index-dir and --search-mode")
        runs = compare_retrieval(data_dir, build, split=split, show_progress=not as_json,
                                 rerank=rerank)
    else:
        modes = [m.strip() for m in search_modes.split(",")] if search_modes else None
        res = evaluate_retrieval(data_dir, build, split=split, index_dir=index_dir,
                                 show_progress=not as_json, modes=modes, rerank=rerank or 0)
        runs = res["runs"] if "runs" in res else [res]
        if len(runs) > 1:
            for r in runs:
                r["label"] = r["mode"]
    if as_json:
        click.echo(json.dumps({"runs": runs}))
        return
    st, first = runs[0]["settings"], runs[0]
    tp = f"{st['tp_layers'][0]}:{st['tp_layers'][1]}" if st["tp_layers"] else "off"
    click.echo(f"model {st['model']}, prompt {st['prompt']}, TP {tp}, output layer "
               f"{st['output_layer']}, pooling {st['pooling']}; {first['queries']} queries, "
               f"{first['documents']} documents")
    names = ["nDCG@10", "MRR@10", "R@1", "R@10", "R@100"]
    keys = ["ndcg@10", "mrr@10", "recall@1", "recall@10", "recall@100"]
    width = max([len(r.get("label", "")) for r in runs] + [0])
    pad = f"{'':<{width}}  " if width else ""
    paired = any(r.get("vs_reference") for r in runs)
    click.echo(pad + "  ".join(f"{n:>8s}" for n in names + ["ms/query"])
               + ("  nDCG@10 vs defaults [95% CI], p" if paired else ""))
    for r in runs:
        label = f"{r['label']:<{width}}  " if width else ""
        vs = r.get("vs_reference")
        click.echo(label + "  ".join([f"{r['metrics'][k] * 100:8.2f}" for k in keys]
                                     + [f"{r['ms_per_query']:8.1f}"])
                   + (f"  {describe(vs['mean'], vs['low'], vs['high'], vs['p_value'])}"
                      if vs else ""))
    if paired:
        click.echo("vs defaults: the row's nDCG@10 minus the defaults' in the same mode, on the "
                   "same queries; bootstrap interval and paired randomisation p-value "
                   "(p < 0.05: unlikely to be chance)")


if __name__ == "__main__":  # pragma: no cover
    main()

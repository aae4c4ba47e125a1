"""The command line's options, generated from the configuration dataclasses (help and
defaults live beside each field), and its one error boundary."""

from __future__ import annotations

import functools
from dataclasses import fields as dataclass_fields
from typing import Callable, Sequence

import click

from .config import BuildConfig, ModelConfig
from .errors import TPSearchError


def fail_cleanly(fn):
    """The one error boundary: a :class:`TPSearchError` (bad input, a refused index, ...)
    becomes one 'Error: ...' line and exit status 1. Anything else is a bug and keeps its
    traceback; ``-v`` shows the traceback of everything."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TPSearchError as exc:
            if click.get_current_context().find_root().params.get("verbose"):
                raise
            raise click.ClickException(str(exc)) from exc

    return wrapper


def field_option(cls: type, name: str) -> Callable:
    """A click option generated from a dataclass field: its help (with the default filled in)
    and click settings live beside the default, in the field's metadata."""
    f = next(f for f in dataclass_fields(cls) if f.name == name)
    meta = f.metadata
    cli = dict(meta.get("cli", {}))
    flag = name.replace("_", "-")
    kwargs: dict = {"default": None, "help": meta["help"].format(default=f.default)}
    if "choices" in cli:
        kwargs["type"] = click.Choice(list(cli.pop("choices")))
    if cli.pop("path", False):
        kwargs["type"] = click.Path(dir_okay=False)
    kwargs.update(cli)
    if name == "compile_layers":
        return click.option("--compile/--no-compile", "compile_layers", **kwargs)
    if isinstance(f.default, bool):
        if f.default is False and name in ("strict", "fresh", "trust_remote_code"):
            return click.option(f"--{flag}", name, is_flag=True, **kwargs)
        return click.option(f"--{flag}/--no-{flag}", name, **kwargs)
    return click.option(f"--{flag}", name, **kwargs)


def options_of(cls: type, names: Sequence[str]) -> Callable:
    def decorate(fn):
        for name in reversed(names):
            fn = field_option(cls, name)(fn)
        return fn

    return decorate


#: The encoder's options and how a build feeds it: every field of ModelConfig, in declaration
#: order (an option added to EncoderOptions or ModelConfig is a CLI option with no edit here).
MODEL_KEYS = tuple(f.name for f in dataclass_fields(ModelConfig))


def model_options(fn):
    """The encoder options shared by build and eval (generated from ModelConfig)."""
    fn = options_of(ModelConfig, MODEL_KEYS)(fn)
    return click.option("--no-tp", is_flag=True, default=False,
                        help="Vanilla embeddings: the same prompt without <PST> or replacement.")(fn)


#: Passages, transform, lexical index and search mode: shared by build and eval retrieval.
RETRIEVAL_KEYS = ("passage_tokens", "passage_overlap", "transform", "transform_dim", "embed_filter",
                  "whiten_power", "query_examples", "query_adapter", "lexical", "lexical_unit", "mode", "fusion",
                  "lexical_weight")
retrieval_options = options_of(BuildConfig, RETRIEVAL_KEYS)
#: The rest of the build's own options.
BUILD_KEYS = ("text_column", "id_column", "title_column", "store_text", "strict", "index",
              "max_index_memory", "shard_rows", "fresh", "refit", "metadata_columns")


def model_settings(no_tp: bool = False, **given) -> dict:
    """Only the options given on the command line (so config files and presets fill the rest)."""
    if no_tp and given.get("tp_layers"):
        raise click.UsageError("--no-tp and --tp-layers contradict each other")
    if no_tp:
        given["tp_layers"] = "none"
    return {k: v for k, v in given.items() if v is not None and k in MODEL_KEYS}


SERVE_KEYS = ("host", "port", "api_key", "device", "max_batch", "max_wait_ms", "queue_size",
              "timeout_s", "max_body_bytes", "max_queries", "max_query_chars", "max_k", "max_rerank",
              "watch_seconds", "cors_origin", "allow_writes", "log_queries")


def serve_options(fn):
    """The server's options (generated from ServeConfig)."""
    from .serve.config import ServeConfig

    return options_of(ServeConfig, SERVE_KEYS)(fn)

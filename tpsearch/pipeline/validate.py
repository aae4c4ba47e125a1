"""Checks of a build's options that need no model: run before the model loads and before any
work directory is made, so a bad option costs nothing and leaves nothing behind."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..config import BuildConfig, check_types, parse_size
from ..errors import InputError
from ..fusion import FUSIONS, MODES
from ..index import check_index_spec
from ..layout import is_index_dir
from ..devices import check_device, resolve_dtype
from ..prompts import resolve_prompt
from ..shapes import BATCHING
from .reader import resolve_files


def check_output_place(out: Path, corpus: str, overwrite: bool) -> None:
    """Refuse an output that would lose data or read itself back: an existing directory that
    is not a tpsearch index (even with ``--overwrite``: it may hold anything), the corpus
    itself or a folder holding it, or a place inside a corpus directory (the build's own
    Parquet files would be read as corpus next time). An existing index is updated."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a directory; choose another --out")
    files = [f.resolve() for f in resolve_files(corpus)]
    for f in files:
        if f == out or out in f.parents:
            raise InputError(f"--out {out} holds the corpus ({f}); choose another --out")
    for scanned in corpus_scan_roots(corpus):
        if out == scanned or scanned in out.parents:
            raise InputError(f"--out {out} lies inside the corpus directory {scanned}, whose "
                             "Parquet files are all read as corpus (the index's own files "
                             "would be too); choose an --out outside it")
    if out.is_dir() and any(out.iterdir()):
        if not is_index_dir(out):
            shown = ", ".join(sorted(p.name for p in out.iterdir())[:5])
            raise InputError(f"{out} exists and is not a tpsearch index (it holds {shown}); "
                             "--overwrite only replaces an index: choose another --out")


def corpus_scan_roots(corpus: str) -> list[Path]:
    """Directories the corpus reader scans recursively: a corpus directory, or the fixed part
    of a recursive ('**') glob."""
    p = Path(corpus).expanduser()
    if any(ch in corpus for ch in "*?["):
        if "**" not in corpus:
            return []
        fixed = []
        for part in p.parts:
            if any(ch in part for ch in "*?["):
                break
            fixed.append(part)
        return [Path(*fixed).resolve()] if fixed else []
    return [p.resolve()] if p.is_dir() else []


def validate_build(config: BuildConfig, overwrite: bool) -> Path:
    """Refuse what cannot work; returns the resolved output path."""
    check_types(config)
    if not config.corpus:
        raise InputError("no corpus given")
    if not config.out:
        raise InputError("no output directory given (--out)")
    out = Path(config.out).resolve()
    check_output_place(out, config.corpus, overwrite)
    parent = out.parent
    if not parent.is_dir():
        raise InputError(f"{parent}: the output's parent directory does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{parent}: not writable; choose another --out")
    m = config.model
    if m.device != "auto":
        check_device(m.device)
    resolve_dtype(m.dtype, torch.device("cpu"))
    for name, value in (("batch_size", m.batch_size), ("shard_rows", config.shard_rows),
                        ("max_length", m.max_length)):
        if value < 1:
            raise InputError(f"{name.replace('_', '-')} must be positive, got {value}")
    if m.max_batch_tokens is not None and m.max_batch_tokens < 1:
        raise InputError(f"max-batch-tokens must be positive, got {m.max_batch_tokens}")
    if m.batching not in ("auto", *BATCHING):
        raise InputError(f"batching must be auto or one of {', '.join(BATCHING)}, got {m.batching!r}")
    on_cuda = str(m.device).startswith("cuda") or (m.device == "auto" and torch.cuda.is_available())
    if m.batching == "graphs" and not on_cuda:
        raise InputError(f"batching 'graphs' needs --device cuda (got {m.device!r})")
    for given in (m.prompt, m.query_prompt):  # a bad template is refused before the model loads
        if given is not None and given.lower() not in ("same", "none"):
            resolve_prompt(given, tp=True)
    if m.compile_layers not in ("auto", True, False):
        raise InputError(f"compile-layers must be auto, true or false, got {m.compile_layers!r}")
    columns = [c for c in (config.text_column, config.id_column, config.title_column) if c]
    if len(set(columns)) < len(columns):
        raise InputError(f"the text, id and title columns must differ (got {', '.join(columns)})")
    meta = config.metadata_list()
    if not all(isinstance(c, str) and c for c in meta) or len(set(meta)) < len(meta):
        raise InputError(f"metadata-columns must name distinct columns, got {config.metadata_columns!r}")
    clash = [c for c in meta if c in columns]
    if clash:
        raise InputError(f"metadata-columns: {clash[0]!r} is already the text, id or title column")
    if config.passage_tokens < 0:
        raise InputError(f"passage-tokens must be 0 (whole documents) or positive, "
                         f"got {config.passage_tokens}")
    config.passage_settings()
    config.transform_settings()
    if config.query_examples and not Path(config.query_examples).is_file():
        raise InputError(f"{config.query_examples}: no such file (--query-examples)")
    if config.mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, got {config.mode!r}")
    if config.mode != "dense" and not config.lexical:
        raise InputError(f"mode {config.mode!r} needs the lexical index (drop --no-lexical)")
    if config.lexical_unit not in ("document", "passage"):
        raise InputError(f"lexical-unit must be document or passage, got {config.lexical_unit!r}")
    if config.fusion not in FUSIONS:
        raise InputError(f"fusion must be {' or '.join(FUSIONS)}, got {config.fusion!r}")
    if config.lexical_weight is not None and not 0.0 <= config.lexical_weight <= 1.0:  # NaN too
        raise InputError(f"lexical-weight must lie in 0..1, got {config.lexical_weight}")
    parse_size(config.max_index_memory)
    check_index_spec(config.index)
    return out

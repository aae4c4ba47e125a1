"""Run configuration as dataclasses, loadable from YAML or TOML files (``--config``)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from .errors import InputError
from .fusion import DEFAULT_FUSION, FUSIONS, MODES, FusionSettings, lexical_weight_for
from .passages import DEFAULT_PASSAGE_SETTINGS, PASSAGE_OVERLAP_SHARE, PassageSettings
from .settings import AUTO, EncoderOptions, option, parse_tp_layers
from .typed import short
from .embedfilter import parse_filter
from .transform import (DEFAULT_EMBED_FILTER, DEFAULT_TRANSFORM_SETTINGS, DEFAULT_WHITEN_POWER,
                        KINDS as TRANSFORM_KINDS, TransformSettings)

if TYPE_CHECKING:
    from .manifest import LexicalInfo


@dataclass
class ModelConfig(EncoderOptions):
    """The encoder's options (:class:`~tpsearch.settings.EncoderOptions`) plus how a build feeds
    it; the same settings encode queries at search time."""

    query_prompt: str | None = option(None, "The prompt queries get (method or template; "
                                      "'same': the documents' prompt). Default: the model's "
                                      "preset (question for Gemma 3 and the Qwens); an update "
                                      "of an index keeps the index's.")
    batch_size: int = option(32, "Texts per forward pass. Default: {default}.", type=int)
    max_batch_tokens: int | None = option(
        None, "Also cap each forward pass at this many computed tokens (rows x longest row): "
        "long texts go in smaller batches. Default: no cap.", type=int)

    def encoder_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``TPEncoder.from_pretrained`` these options give."""
        return asdict(self.encoder_options())


#: Retrieval defaults chosen on the dev sets (scifact-dev, STS-B dev/STS12, STS-B as
#: retrieval); see the README's "Retrieval on documents". Each lives here only.
DEFAULT_PASSAGE_TOKENS = DEFAULT_PASSAGE_SETTINGS.max_tokens
DEFAULT_TRANSFORM = DEFAULT_TRANSFORM_SETTINGS.kind
DEFAULT_TRANSFORM_DIM = DEFAULT_TRANSFORM_SETTINGS.dim
DEFAULT_LEXICAL_UNIT = "document"
DEFAULT_MODE = "hybrid"


@dataclass
class BuildConfig:
    """Everything ``tpsearch build`` takes."""

    corpus: str = ""
    out: str = ""
    text_column: str = option("text", "Column with the text. Default: {default}.")
    id_column: str = option("id", "Column with unique string or integer ids. Default: {default}.")
    title_column: str | None = option(None, "Optional column joined before the text.")
    store_text: bool = option(True, "Keep the texts in the id map for RAG answers. Default: on.")
    strict: bool = option(False, "Fail on a null or empty text instead of skipping it.")
    index: str = option(AUTO, "auto, flat, hnsw, ivf, ivfpq, ivf-disk, ivfpq-disk (inverted "
                        "lists in a file, memory-mapped: for indexes larger than memory), or a "
                        "FAISS factory string such as 'IVF1024,PQ64'. Default: {default}.")
    max_index_memory: str | None = option(None, "Memory budget for the index, e.g. 2GB; "
                                          "guides 'auto'.")
    shard_rows: int = option(2048, "Corpus rows per resumable shard. Default: {default}.", type=int)
    fresh: bool = option(False, "Discard shards left by an interrupted build with other settings.")
    refit: bool = option(False, "Building into an existing index: fit the transform and query "
                         "shift anew instead of keeping the index's.")
    passage_tokens: int = option(
        DEFAULT_PASSAGE_TOKENS, "Cut documents into sentence-aware passages of at most this "
        "many tokens of prompted text (prompt + title + passage). 0: whole documents. "
        "Default: {default}.", type=int)
    passage_overlap: int | None = option(
        None, "Tokens of whole sentences a passage shares with the previous one. Default: "
        f"{PASSAGE_OVERLAP_SHARE:.0%} of --passage-tokens.", type=int)
    transform: str = option(DEFAULT_TRANSFORM, "Fit to the corpus: center (subtract the mean) "
                            "or whiten (PCA whitening to --transform-dim) the vectors, inside "
                            "the index. Default: {default}.", choices=TRANSFORM_KINDS)
    transform_dim: int = option(DEFAULT_TRANSFORM_DIM, "Output dimensions of 'whiten'. "
                                "Default: {default}.", type=int)
    embed_filter: str | None = option(
        DEFAULT_EMBED_FILTER, "EmbedFilter (arXiv 2606.07502): project out the TOP:BOTTOM "
        "directions of the largest and smallest singular values of the model's unembedding "
        "matrix (frequent-token directions), inside the index after centering; 'none' to keep "
        "them. Default: {default}.", metavar="TOP:BOTTOM")
    whiten_power: float = option(
        DEFAULT_WHITEN_POWER, "Partial whitening with 'center': after centering and the embed "
        "filter, scale each principal direction of the corpus' vectors by its variance to the "
        "power -P (0: none; 0.5 would be full whitening), inside the index; flattens the "
        "anisotropic spectrum of last-token vectors. Default: {default}.", type=float,
        metavar="P")
    query_examples: str | None = option(
        None, "Text file, one example query a line: their mean centres queries. Default: the "
        "first sentences of the corpus' documents.", path=True)
    query_adapter: bool = option(
        True, "Fit a linear map for query vectors on the corpus' own documents, each one's first "
        "sentences (up to 4) as pseudo-queries for it (no labelled queries; documents are "
        "untouched). Not with --query-examples. Default: on.")
    metadata_columns: str | None = option(
        None, "Comma-separated corpus columns to keep, typed, for filters at search time "
        "(strings, integers, floats, booleans, timestamps, dates, lists of strings; nulls "
        "allowed), e.g. lang,year,tags.")
    lexical: bool = option(True, "Also build a BM25 index. Default: on.")
    lexical_unit: str = option(DEFAULT_LEXICAL_UNIT, "What one BM25 row is: a whole document "
                               "or a passage. Default: {default}.", choices=("document", "passage"))
    mode: str = option(DEFAULT_MODE, "The index's default search mode: dense (vectors), "
                       "lexical (BM25) or hybrid (fused). Default: {default}.", choices=MODES)
    fusion: str = option(DEFAULT_FUSION, "How hybrid mode fuses the two rankings. Default: "
                         "{default}.", choices=FUSIONS)
    lexical_weight: float | None = option(
        None, "The lexical side's share in hybrid mode, 0..1. Default: by the corpus' document "
        "length, 0.05 + 0.075 log2(mean BM25 terms per document) within 0.25..0.65 (about 0.26 "
        "for one-sentence documents, 0.5 for docstrings, 0.6 for abstracts); recorded in the "
        "index, and kept by its updates.", type=float)
    model: ModelConfig = field(default_factory=ModelConfig)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    def metadata_list(self) -> tuple[str, ...]:
        """``metadata_columns`` as a tuple of names ("a,b" or, from a config file, a list)."""
        value = self.metadata_columns
        if not value:
            return ()
        names = value if isinstance(value, (list, tuple)) else str(value).split(",")
        return tuple(n.strip() for n in names if str(n).strip())

    def passage_settings(self) -> PassageSettings:
        if self.passage_tokens == 0:
            return PassageSettings(None, 0)
        overlap = self.passage_overlap
        if overlap is None:
            overlap = int(self.passage_tokens * PASSAGE_OVERLAP_SHARE)
        return PassageSettings(self.passage_tokens, overlap)

    def transform_settings(self) -> TransformSettings:
        return TransformSettings(self.transform, self.transform_dim, self.query_examples,
                                 parse_filter(self.embed_filter), self.query_adapter,
                                 self.whiten_power)

    def default_mode(self) -> str:
        return self.mode if self.lexical else "dense"

    def fusion_settings(self, lexical: LexicalInfo | None = None,
                        kept_weight: float | None = None) -> FusionSettings:
        """The fusion an index built with these options records: the lexical weight given;
        unset, an incremental build's base weight (``kept_weight``: what its users have been
        searching with), else the one for its lexical index's mean unit length (``lexical``;
        :func:`tpsearch.fusion.lexical_weight_for`)."""
        weight = self.lexical_weight
        if weight is None:
            weight = kept_weight if kept_weight is not None else lexical_weight_for(
                lexical.mean_length if lexical is not None else None)
        return FusionSettings(self.fusion, weight)


#: The type each option must have in a config file (checked before anything runs).
_TYPES = {"int": int, "float": (int, float), "bool": bool, "str": str}


def check_types(cfg: Any, where: str = "config") -> None:
    """Refuse option values of the wrong type, naming the option (``batch_size: "many"``)."""
    hints = {f.name: f.type for f in fields(cfg)}
    for name, hint in hints.items():
        value = getattr(cfg, name)
        if name == "model" and isinstance(cfg, BuildConfig):
            check_types(value, where)
            continue
        if name in ("tp_layers", "compile_layers", "metadata_columns") or value is None:
            # checked in validate
            continue
        base = str(hint).split("|")[0].strip().split("[")[0]
        expected = _TYPES.get(base)
        if expected is None:
            continue
        if (isinstance(value, bool) and base != "bool") or not isinstance(value, expected):
            raise InputError(f"{where}: option {name!r} must be {'an' if base == 'int' else 'a'} "
                             f"{base}, got {short(value, 40)}")


def parse_size(text: str | None) -> int | None:
    """``"512MB"``, ``"2GB"``, ``"1.5G"`` -> bytes."""
    if text is None:
        return None
    s = str(text).strip().upper().removesuffix("B")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        if s and s[-1] in units:
            return int(float(s[:-1]) * units[s[-1]])
        return int(float(s))
    except ValueError:
        raise InputError(f"cannot read a memory size from {text!r} (try 512MB or 2GB)") from None


#: A run configuration is a short list of options; anything larger is refused unread.
MAX_CONFIG_BYTES = 1 << 20


class _NoAliasLoader(yaml.SafeLoader):
    """YAML's safe loader without anchors and aliases: a config needs none, and aliases are
    how a few lines expand into gigabytes (the 'billion laughs')."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a "
                                              "tpsearch config", event.start_mark)
        event = self.peek_event()
        if getattr(event, "anchor", None):
            raise yaml.composer.ComposerError(None, None, "anchors (&name) are not allowed in a "
                                              "tpsearch config", event.start_mark)
        return super().compose_node(parent, index)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Options from a YAML (.yaml/.yml) or TOML (.toml) file, keys as on the command line
    with dashes or underscores (``tp-layers``/``tp_layers``). A flat mapping of option names
    to plain values (a list of two numbers for ``tp_layers``); anything else is refused."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise InputError(f"{p}: {p.stat().st_size} bytes is too large for a config file")
        raw = p.read_text(encoding="utf8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: cannot read config file "
                         f"({getattr(exc, 'strerror', None) or 'not UTF-8 text'})") from None
    kind = "TOML" if p.suffix == ".toml" else "YAML"
    try:
        data = tomllib.loads(raw) if kind == "TOML" else yaml.load(raw, Loader=_NoAliasLoader)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"{p}: not valid {kind}: {' '.join(str(exc).split())[:200]}") from None
    except RecursionError:
        raise InputError(f"{p}: nested too deeply to be a tpsearch config") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{p}: expected a mapping of option names to values")
    options = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise InputError(f"{p}: option names must be strings, got {short(key, 40)}")
        name = key.replace("-", "_")
        plain = (str, int, float, bool, type(None))
        listed = name in ("tp_layers", "metadata_columns") and isinstance(value, list)
        if not (isinstance(value, plain) or (listed and all(isinstance(v, plain) for v in value))):
            raise InputError(f"{p}: option {key!r} must be a plain value, got "
                             f"{type(value).__name__} {short(value, 40)}")
        options[name] = value
    return options


def build_config_from(options: dict[str, Any]) -> BuildConfig:
    """A BuildConfig from flat options (file and command line merged); unknown keys refused."""
    model_keys = {f.name for f in fields(ModelConfig)}
    build_keys = {f.name for f in fields(BuildConfig)} - {"model"}
    unknown = set(options) - model_keys - build_keys
    if unknown:
        raise InputError(f"unknown option(s): {', '.join(short(u, 40) for u in sorted(unknown))}")
    m = {k: v for k, v in options.items() if k in model_keys}
    if "tp_layers" in m:
        m["tp_layers"] = parse_tp_layers(m["tp_layers"])
    b = {k: v for k, v in options.items() if k in build_keys}
    config = BuildConfig(model=ModelConfig(**m), **b)
    check_types(config)
    return config


def build_config_recorded(recorded: dict[str, Any], **overrides: Any) -> BuildConfig:
    """The BuildConfig a manifest's ``build.config`` records (``BuildConfig.to_dict()``), with
    ``overrides``: what an update of that index builds with. Keys this tpsearch does not know
    (a newer or older manifest's) are dropped, not refused."""
    model_keys = {f.name for f in fields(ModelConfig)}
    build_keys = {f.name for f in fields(BuildConfig)} - {"model"}
    flat = {k: v for k, v in recorded.items() if k in build_keys}
    model = recorded.get("model")
    flat.update({k: v for k, v in (model if isinstance(model, dict) else {}).items()
                 if k in model_keys})
    flat.update(overrides)
    return build_config_from(flat)

"""Run configuration as dataclasses, loadable from YAML or TOML files (``--config``)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from .errors import InputError
from .loading import DEFAULT_MODEL
from .passages import PassageSettings
from .transform import TransformSettings

AUTO = "auto"


@dataclass
class ModelConfig:
    """How texts become vectors; the same settings encode queries at search time."""

    model: str = DEFAULT_MODEL
    prompt: str | None = None  # None: the model's preset
    tp_layers: tuple[int, int] | None | str = AUTO  # "auto": preset; None: vanilla
    output_layer: int | None = None  # None: the model's preset
    placeholder_init: str | None = None  # "randn" or "mean"; None: the model's preset
    pooling: str = "last"  # "last" (the paper) or "mean" over the text's own tokens
    query_prompt: str | None = None  # a different prompt for queries; None: the same
    max_length: int = 256
    batch_size: int = 32
    max_batch_tokens: int | None = None  # token budget per batch (rows x longest row); None: no budget
    device: str = "auto"
    # "auto": bf16 on GPUs and on CPUs with bf16 matrix units (AMX), float32 on other CPUs:
    # on the dev sets bf16 moved STS-B dev, STS12 and scifact-dev by at most 0.07 (README).
    dtype: str | None = "auto"
    quantize: str | None = None  # "int8": dynamic int8 linear layers (CPU)
    # Batch shapes: "sorted", "bucketed", "graphs" (CUDA graphs) or "auto" (graphs on a GPU,
    # sorted on a CPU); compile_layers: torch.compile the decoder layers ("auto": on a GPU, and
    # for CPU builds in bfloat16 of 20,000 documents or more).
    # Speed only: the vectors are the same up to rounding.
    batching: str = "auto"
    compile_layers: bool | str = "auto"

    def encoder_kwargs(self) -> dict[str, Any]:
        return dict(model=self.model, prompt=self.prompt, tp_layers=self.tp_layers,
                    output_layer=self.output_layer, placeholder_init=self.placeholder_init,
                    pooling=self.pooling, max_length=self.max_length,
                    device=self.device, dtype=self.dtype, quantize=self.quantize,
                    batching=self.batching, compile_layers=self.compile_layers)


#: Defaults chosen on the dev sets (scifact-dev, STS-B dev/STS12, STS-B as retrieval); see the
#: README's "Retrieval on documents".
DEFAULT_PASSAGE_TOKENS = 256
#: The overlap, as a share of the passage budget, where it is not given.
PASSAGE_OVERLAP_SHARE = 0.25
DEFAULT_TRANSFORM = "center"
DEFAULT_TRANSFORM_DIM = 256
DEFAULT_LEXICAL_UNIT = "document"
DEFAULT_MODE = "hybrid"
DEFAULT_FUSION = "minmax"
DEFAULT_LEXICAL_WEIGHT = 0.7


@dataclass
class BuildConfig:
    """Everything ``tpsearch build`` takes."""

    corpus: str = ""
    out: str = ""
    text_column: str = "text"
    id_column: str = "id"
    title_column: str | None = None
    store_text: bool = True
    strict: bool = False
    index: str = AUTO  # auto | flat | hnsw | ivf | ivfpq | a FAISS factory string
    max_index_memory: str | None = None  # e.g. "2GB"; guides the "auto" choice
    shard_rows: int = 2048
    fresh: bool = False  # discard shards of an earlier, interrupted build
    passage_tokens: int = DEFAULT_PASSAGE_TOKENS  # 0: whole documents
    passage_overlap: int | None = None  # None: a quarter of passage_tokens
    transform: str = DEFAULT_TRANSFORM  # none | center | whiten
    transform_dim: int = DEFAULT_TRANSFORM_DIM
    query_examples: str | None = None  # text file of example queries (the query-side mean)
    lexical: bool = True  # also build a BM25 index
    lexical_unit: str = DEFAULT_LEXICAL_UNIT  # one BM25 row: a "document" or a "passage"
    mode: str = DEFAULT_MODE  # the index's default search mode: dense | lexical | hybrid
    fusion: str = DEFAULT_FUSION  # rrf | minmax
    lexical_weight: float = DEFAULT_LEXICAL_WEIGHT  # the lexical side's share in hybrid
    model: ModelConfig = field(default_factory=ModelConfig)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    def passage_settings(self) -> PassageSettings:
        if self.passage_tokens == 0:
            return PassageSettings(None, 0)
        overlap = self.passage_overlap
        if overlap is None:
            overlap = int(self.passage_tokens * PASSAGE_OVERLAP_SHARE)
        return PassageSettings(self.passage_tokens, overlap)

    def transform_settings(self) -> TransformSettings:
        return TransformSettings(self.transform, self.transform_dim, self.query_examples)

    def default_mode(self) -> str:
        return self.mode if self.lexical else "dense"

    def fusion_settings(self) -> dict:
        return {"method": self.fusion, "lexical_weight": self.lexical_weight}


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
        if name in ("tp_layers", "compile_layers") or value is None:  # checked in validate
            continue
        base = str(hint).split("|")[0].strip().split("[")[0]
        expected = _TYPES.get(base)
        if expected is None:
            continue
        if (isinstance(value, bool) and base != "bool") or not isinstance(value, expected):
            raise InputError(f"{where}: option {name!r} must be {'an' if base == 'int' else 'a'} "
                             f"{base}, got {value!r}")


def parse_tp_layers(value: str | list | tuple | None) -> tuple[int, int] | None | str:
    """``"1:7"``, ``[1, 7]``, ``"auto"``, or ``None``/``"none"``/``"vanilla"`` (no TP)."""
    if value is None or (isinstance(value, str) and value.lower() in ("none", "vanilla", "off")):
        return None
    if isinstance(value, str) and value.lower() == AUTO:
        return AUTO
    try:
        if isinstance(value, str):
            a, b = value.split(":")
        else:
            a, b = value
        return int(a), int(b)
    except (ValueError, TypeError):
        raise InputError(f"TP layers must look like START:EXIT (e.g. 1:7), got {value!r}") from None


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


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Options from a YAML (.yaml/.yml) or TOML (.toml) file, keys as on the command line
    with dashes or underscores (``tp-layers``/``tp_layers``)."""
    p = Path(path)
    try:
        raw = p.read_text(encoding="utf8")
    except OSError as exc:
        raise InputError(f"{p}: cannot read config file ({exc.strerror})") from None
    try:
        data = tomllib.loads(raw) if p.suffix == ".toml" else yaml.safe_load(raw)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"{p}: not valid {'TOML' if p.suffix == '.toml' else 'YAML'}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{p}: expected a mapping of option names to values")
    return {k.replace("-", "_"): v for k, v in data.items()}


def build_config_from(options: dict[str, Any]) -> BuildConfig:
    """A BuildConfig from flat options (file and command line merged); unknown keys refused."""
    model_keys = {f.name for f in fields(ModelConfig)}
    build_keys = {f.name for f in fields(BuildConfig)} - {"model"}
    unknown = set(options) - model_keys - build_keys
    if unknown:
        raise InputError(f"unknown option(s): {', '.join(sorted(unknown))}")
    m = {k: v for k, v in options.items() if k in model_keys}
    if "tp_layers" in m:
        m["tp_layers"] = parse_tp_layers(m["tp_layers"])
    b = {k: v for k, v in options.items() if k in build_keys}
    config = BuildConfig(model=ModelConfig(**m), **b)
    check_types(config)
    return config

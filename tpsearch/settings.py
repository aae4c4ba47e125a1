"""The encoder's settings, described once.

* :class:`EncoderOptions`: what a caller chooses (``TPEncoder.from_pretrained``, ``tpsearch
  build``/``eval`` options, config files, the searcher rebuilding an index's encoder). Each
  field's default and help text live here and nowhere else: the CLI options are generated from
  these fields, and the library reads the same defaults.
* :class:`EncoderSettings`: what an encoder resolved them to (presets applied, dtype known),
  recorded in manifests and compared field by field to refuse a mismatch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .errors import InputError
from .typed import from_dict

DEFAULT_MODEL = "gemma-3-270m"
AUTO = "auto"


def option(default: Any, help: str, **cli: Any) -> Any:
    """A dataclass field with its help text (``{default}`` is filled in) and click settings."""
    return field(default=default, metadata={"help": help, "cli": cli})


@dataclass
class EncoderOptions:
    """How texts become vectors. ``None`` for prompt, TP layers, output layer and placeholder
    init means the model's preset."""

    model: str = option(DEFAULT_MODEL, "Bundled model name (gemma-3-270m, smollm2-135m, "
                        "qwen2.5-coder-0.5b, qwen2.5-coder-1.5b), a .gguf file, a transformers directory or a hub id. "
                        "Default: {default} (offline).")
    prompt: str | None = option(None, "prompteol, pcot, ke, metaeol, or a template with "
                                "{{sentence}} (and optionally <PST> before it). Default: the "
                                "model's preset.")
    tp_layers: tuple[int, int] | None | str = option(
        AUTO, "Replace <PST> before layers START..EXIT-1. Default: the model's preset.",
        metavar="START:EXIT")
    output_layer: int | None = option(
        None, "Hidden state to pool, indexed like output_hidden_states (-1 = final, -2 = one "
        "before; layers after it are not run). Default: the model's preset.", type=int)
    placeholder_init: str | None = option(
        None, "<PST> embedding row: seeded standard normal (the paper) or the mean embedding "
        "row. Default: the model's preset.", choices=("randn", "mean"))
    placeholder_seed: int = option(0, "Seed of the <PST> row. Default: {default}.", type=int)
    pooling: str = option("last", "last: the prompt's last token (the paper); mean: the mean "
                          "over the text's own tokens (not the prompt or <PST>). Default: "
                          "{default}.", choices=("last", "mean"))
    max_length: int = option(256, "Tokens per prompted text; longer texts are truncated (the "
                             "prompt is kept) and counted. Default: {default}.", type=int)
    normalize_sentences: bool = option(True, "Normalise sentences as the paper's evaluation "
                                       "does (final punctuation, quotes). Default: on.")
    device: str = option(AUTO, "auto (cuda, then mps, then cpu), cpu, cuda:0, ... Default: "
                         "{default}.")
    dtype: str | None = option(
        AUTO, "float32, bfloat16, float16, or auto: bfloat16 on GPUs and on CPUs with bf16 "
        "dot products (AVX-512 BF16, AMX), float32 elsewhere (measured harmless on the dev "
        "sets). Default: "
        "{default}.")
    quantize: str | None = option(
        AUTO, "int8: int8 linear layers with per-token activation scales (CPU only; recorded "
        "in the index, and queries are encoded the same way). auto: int8 on CPUs with VNNI int8 "
        "units and no bf16 dot products (AVX-512 BF16, AMX), when --dtype is auto too, for models measured to "
        "keep their quality in int8 (the default model); none elsewhere. none: float layers. "
        "Default: {default}.", choices=("auto", "int8", "none"))
    batching: str = option(
        AUTO, "Batch shapes: sorted (by length, exact widths), bucketed (a few fixed shapes, "
        "masks built on the device), graphs (bucketed, replayed as CUDA graphs; GPU only), or "
        "auto (graphs on a GPU, sorted on a CPU). Speed only: vectors are the same up to "
        "rounding. Default: {default}.", choices=("auto", "sorted", "bucketed", "graphs"))
    compile_layers: bool | str = option(
        AUTO, "torch.compile the decoder layers (fuses their elementwise work; the first "
        "batches pay 5-20 s of compiling). Default: on a GPU, and for CPU builds in bfloat16 "
        "of many documents (see the README).")
    trust_remote_code: bool = option(False, "Allow the model directory's own Python code to "
                                     "run (never by default).")
    attn_implementation: str | None = option(None, "transformers attention implementation "
                                             "(eager, sdpa, ...). Default: transformers'.")

    def encoder_options(self) -> "EncoderOptions":
        """Just the encoder's part (a subclass adds build options)."""
        return EncoderOptions(**{f.name: getattr(self, f.name) for f in fields(EncoderOptions)})

    @classmethod
    def reproducing(cls, s: "EncoderSettings", **overrides: Any) -> "EncoderOptions":
        """Options that rebuild an encoder with exactly the recorded settings ``s``."""
        values = {name: getattr(s, name) for name in shared_fields()}
        values["dtype"] = s.dtype or AUTO  # unrecorded (tpsearch 0.2): the machine's choice
        values.update(overrides)
        return cls(**values)


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
        raise InputError(f"TP layers must look like START:EXIT (e.g. 1:7), got "
                         f"{str(value)[:40]!r}") from None


def shared_fields() -> tuple[str, ...]:
    """The fields an encoder's recorded settings and its options share (what a manifest must
    carry back into an encoder): every :class:`EncoderSettings` field that is also an
    :class:`EncoderOptions` field, so one added to both travels without further edits."""
    options = {f.name for f in fields(EncoderOptions)}
    return tuple(f.name for f in fields(EncoderSettings) if f.name in options)


def option_defaults(cls: type = EncoderOptions) -> dict[str, Any]:
    return {f.name: f.default for f in fields(cls)}


@dataclass(frozen=True)
class EncoderSettings:
    """The settings of a :class:`~tpsearch.encoder.TPEncoder`, as a manifest records them."""

    model: str  # the model spec as given (name, path or hub id)
    prompt: str  # method name or user template, as given
    templates: tuple[str, ...] = field(metadata={"non_empty": True})  # what the model is fed
    tp_layers: tuple[int, int] | None  # None = vanilla
    output_layer: int = field(metadata={"min": -4096, "max": 4096})  # as given
    n_layers: int = field(metadata={"min": 1, "max": 4096})
    max_length: int = field(metadata={"min": 8, "max": 1 << 22})
    normalize_sentences: bool
    placeholder_seed: int
    placeholder_init: str = field(metadata={"choices": ("randn", "mean")})
    pooling: str = field(default="last", metadata={"choices": ("last", "mean")})
    quantize: str | None = field(default=None, metadata={"choices": ("int8",)})
    # The weights' dtype while encoding (float32, bfloat16, ...): it changes the vectors.
    # None: not recorded (an index of tpsearch 0.2 without it in its build record).
    dtype: str | None = field(default=None, metadata={
        "choices": ("float32", "bfloat16", "float16")})

    #: Fields that name things rather than change the vectors (not compared).
    DESCRIPTIVE = ("model", "prompt")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["templates"] = list(self.templates)
        d["tp_layers"] = list(self.tp_layers) if self.tp_layers else None
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = "encoder") -> "EncoderSettings":
        """Parse and type-check a manifest's ``encoder`` object; name what is missing or wrong."""
        return from_dict(cls, d, where)

    def differences(self, other: "EncoderSettings") -> list[str]:
        """Fields (other than descriptive ones) where ``other`` differs, as 'name: a vs b'.
        An unrecorded dtype (None) matches any."""
        out = []
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name in self.DESCRIPTIVE or a == b or (f.name == "dtype" and None in (a, b)):
                continue
            out.append(f"{f.name}: {a!r} vs {b!r}")
        return out

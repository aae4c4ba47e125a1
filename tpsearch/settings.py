"""EncoderSettings: everything that decides an embedding. Written once, recorded in manifests,
read back to rebuild the query encoder, and compared field by field to refuse a mismatch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from .errors import IndexDamaged


@dataclass(frozen=True)
class EncoderSettings:
    """The settings of a :class:`~tpsearch.encoder.TPEncoder`, as a manifest records them."""

    model: str  # the model spec as given (name, path or hub id)
    prompt: str  # method name or user template, as given
    templates: tuple[str, ...]  # what is actually fed to the model
    tp_layers: tuple[int, int] | None  # None = vanilla
    output_layer: int  # output_hidden_states-style index, as given
    n_layers: int
    max_length: int
    normalize_sentences: bool
    placeholder_seed: int
    placeholder_init: str
    pooling: str = "last"
    quantize: str | None = None  # "int8": dynamic int8 linear layers (CPU)

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
        if not isinstance(d, dict):
            raise IndexDamaged(f"{where}: expected an object, got {type(d).__name__}")
        values = {}
        for f in fields(cls):
            if f.name not in d:
                if f.name in ("pooling", "quantize"):  # older manifests
                    values[f.name] = f.default
                    continue
                raise IndexDamaged(f"{where}.{f.name} is missing")
            values[f.name] = _check(f.name, d[f.name], where)
        return cls(**values)

    def differences(self, other: "EncoderSettings") -> list[str]:
        """Fields (other than descriptive ones) where ``other`` differs, as 'name: a vs b'."""
        return [f"{f.name}: {getattr(self, f.name)!r} vs {getattr(other, f.name)!r}"
                for f in fields(self) if f.name not in self.DESCRIPTIVE
                and getattr(self, f.name) != getattr(other, f.name)]


def _check(name: str, value: Any, where: str) -> Any:
    def bad(expected: str) -> IndexDamaged:
        return IndexDamaged(f"{where}.{name} must be {expected}, got {value!r}")

    if name in ("model", "prompt", "placeholder_init", "pooling"):
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if name == "templates":
        if not isinstance(value, list) or not value or not all(isinstance(t, str) for t in value):
            raise bad("a non-empty list of strings")
        return tuple(value)
    if name == "tp_layers":
        if value is None:
            return None
        if (not isinstance(value, list) or len(value) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            raise bad("null or [start, exit]")
        return (value[0], value[1])
    if name == "quantize":
        if value not in (None, "int8"):
            raise bad('null or "int8"')
        return value
    if name == "normalize_sentences":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if not isinstance(value, int) or isinstance(value, bool):
        raise bad("an integer")
    return value

"""Reading untrusted JSON objects into frozen dataclasses: one checker for every manifest section.

Each field's type hint says what it may hold (``str``, ``int``, ``float``, ``bool``, ``X | None``,
``tuple[str, ...]``, ``tuple[int, int]``, ``list[str]``, ``dict[str, X]``, another dataclass);
field metadata adds ranges (``min``, ``max``) and choices. Every refusal names the field, and
long values are shortened in messages.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import MISSING, fields, is_dataclass
from typing import Any, TypeVar

from .errors import IndexDamaged, InputError

T = TypeVar("T")
#: Items a dict or list field may hold (a manifest is small; a huge one is hostile).
MAX_ITEMS = 100_000


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (values in messages come from files)."""
    try:
        text = repr(value)
    except RecursionError:
        text = f"<deeply nested {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def from_dict(cls: type[T], d: Any, where: str) -> T:
    """An instance of the dataclass ``cls`` from the JSON object ``d``; absent fields take
    their defaults (absent and without a default: refused), unknown keys are ignored."""
    if not isinstance(d, dict):
        raise IndexDamaged(f"{where}: expected an object, got {short(d)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields(cls):
        if not f.init:
            continue
        name = f"{where}.{f.name}"
        if f.name not in d:
            if f.default is MISSING and f.default_factory is MISSING:
                raise IndexDamaged(f"{name} is missing")
            continue
        values[f.name] = check(d[f.name], hints[f.name], name, f.metadata)
    try:
        return cls(**values)
    except InputError as exc:  # the dataclass's own checks (ranges that involve two fields)
        raise IndexDamaged(f"{where}: {exc}") from None


def check(value: Any, hint: Any, name: str, meta: typing.Mapping = types.MappingProxyType({})) -> Any:
    """``value`` as the type ``hint`` wants it, or IndexDamaged naming ``name``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return check(value, inner[0], name, meta)

    def bad(expected: str) -> IndexDamaged:
        return IndexDamaged(f"{name} must be {expected}, got {short(value)}")

    if is_dataclass(hint):
        return from_dict(hint, value, name)
    if hint is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad("an integer")
        lo, hi = meta.get("min", 0), meta.get("max", 2**62)
        if not lo <= value <= hi:
            raise bad(f"an integer in {lo}..{hi}")
        return value
    if hint is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise bad("a finite number")
        lo, hi = meta.get("min", -math.inf), meta.get("max", math.inf)
        if not lo <= value <= hi:
            raise bad(f"a number in {lo}..{hi}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad("a string")
        if "choices" in meta and value not in meta["choices"]:
            raise bad(" or ".join(map(str, meta["choices"])))
        if len(value) > meta.get("max_length", 1 << 20):
            raise bad("a shorter string")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list) or len(value) > MAX_ITEMS:
            raise bad("a list")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise bad(f"a list of {len(args)}")
            return tuple(check(v, a, f"{name}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0]
        if meta.get("non_empty") and not value:
            raise bad("a non-empty list")
        out = [check(v, item, f"{name}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict) or len(value) > MAX_ITEMS:
            raise bad("an object")
        return {k: check(v, args[1], f"{name}.{k}") for k, v in value.items()}
    if hint is dict:  # free-form (informational) object: only its size and depth are checked
        if not isinstance(value, dict):
            raise bad("an object")
        _check_depth(value, name)
        return value
    raise TypeError(f"{name}: no checker for {hint!r}")  # a bug in a dataclass, not in the file


def _check_depth(value: Any, name: str, depth: int = 0) -> None:
    if depth > 8:
        raise IndexDamaged(f"{name} is nested more than 8 levels deep")
    if isinstance(value, dict):
        for v in value.values():
            _check_depth(v, name, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_depth(v, name, depth + 1)

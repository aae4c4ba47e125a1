"""Filters on metadata columns at search time.

The syntax is the JSON that Chroma, MongoDB and (in spirit) Qdrant users already write, so a
filter travels unchanged through the Python API, ``tpsearch search --filter`` and the server::

    {"lang": "en"}                             equality (short for {"lang": {"$eq": "en"}})
    {"year": {"$gte": 2020, "$lt": 2024}}      ranges: $gt, $gte, $lt, $lte; also $ne
    {"lang": {"$in": ["en", "de"]}}            membership: $in, $nin
    {"tags": {"$contains": "python"}}          a list-of-strings column holds the value
    {"reviewed_at": {"$null": true}}           null (false: not null)
    {"$and": [...]}, {"$or": [...]}, {"$not": {...}}

Several keys in one object must all hold. A null never satisfies a comparison ($ne and $nin
included); ask for it with $null. Timestamps and dates are given as ISO 8601 strings. A filter
is checked against the index's columns and their kinds before any search (an unknown column,
an operator the kind has not, a value of the wrong type: one-line :class:`InputError`), then
evaluated with pyarrow compute over the documents' metadata, giving the documents allowed.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import InputError
from .metadata import PREFIX

COMPARE = {"$eq": pc.equal, "$ne": pc.not_equal, "$gt": pc.greater, "$gte": pc.greater_equal,
           "$lt": pc.less, "$lte": pc.less_equal}
#: The operators each kind of column takes.
OPERATORS = {
    "string": (*COMPARE, "$in", "$nin", "$null"),
    "int": (*COMPARE, "$in", "$nin", "$null"),
    "float": (*COMPARE, "$in", "$nin", "$null"),
    "timestamp": (*COMPARE, "$in", "$nin", "$null"),
    "date": (*COMPARE, "$in", "$nin", "$null"),
    "bool": ("$eq", "$ne", "$in", "$nin", "$null"),
    "list[string]": ("$contains", "$null"),
}
MAX_NODES = 1000
MAX_DEPTH = 32
MAX_VALUES = 10_000

Node = Callable[[pa.Table], np.ndarray]


def parse(spec: Any) -> Any:
    """A filter given as JSON text (the CLI) or already as a dict."""
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except (ValueError, RecursionError) as exc:
            raise InputError(f"filter: not valid JSON ({str(exc)[:80]})") from None
    return spec


def compile_filter(spec: Any, kinds: dict[str, str]) -> Node:
    """Check ``spec`` against the columns (name -> kind) and return a function giving the
    boolean mask of rows allowed in a metadata table (columns ``meta.NAME``)."""
    spec = parse(spec)
    counter = [0]
    return _compile(spec, kinds, counter, 0, "filter")


def _compile(spec: Any, kinds: dict[str, str], counter: list, depth: int, where: str) -> Node:
    counter[0] += 1
    if counter[0] > MAX_NODES or depth > MAX_DEPTH:
        raise InputError(f"{where}: the filter is too large (at most {MAX_NODES} conditions, "
                         f"{MAX_DEPTH} levels)")
    if not isinstance(spec, dict) or not spec:
        raise InputError(f"{where}: expected a non-empty object such as {{\"lang\": \"en\"}}, "
                         f"got {_short(spec)}")
    parts: list[Node] = []
    for key, value in spec.items():
        if not isinstance(key, str):
            raise InputError(f"{where}: keys must be column names or $and/$or/$not")
        here = f"{where}.{key}"
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise InputError(f"{here}: expected a non-empty list of filters")
            subs = [_compile(v, kinds, counter, depth + 1, f"{here}[{i}]") for i, v in enumerate(value)]
            parts.append(_all(subs) if key == "$and" else _any(subs))
        elif key == "$not":
            sub = _compile(value, kinds, counter, depth + 1, here)
            parts.append(lambda t, sub=sub: ~sub(t))
        elif key.startswith("$"):
            raise InputError(f"{here}: unknown operator {key!r}; at the top: $and, $or, $not")
        else:
            parts.append(_column(key, value, kinds, here))
    return _all(parts)


def _all(nodes: list[Node]) -> Node:
    def run(t: pa.Table) -> np.ndarray:
        out = np.ones(t.num_rows, dtype=bool)
        for n in nodes:
            out &= n(t)
        return out
    return run


def _any(nodes: list[Node]) -> Node:
    def run(t: pa.Table) -> np.ndarray:
        out = np.zeros(t.num_rows, dtype=bool)
        for n in nodes:
            out |= n(t)
        return out
    return run


def _column(name: str, cond: Any, kinds: dict[str, str], where: str) -> Node:
    if name not in kinds:
        known = ", ".join(sorted(kinds)) or "none (build with --metadata-columns)"
        raise InputError(f"{where}: no metadata column {name!r} in this index; columns: {known}")
    kind = kinds[name]
    if not isinstance(cond, dict) or not any(k.startswith("$") for k in cond if isinstance(k, str)):
        cond = {"$eq": cond}
    parts = []
    for op, value in cond.items():
        if op not in OPERATORS[kind]:
            raise InputError(f"{where}: {op!r} does not apply to a {kind} column; it takes "
                             f"{', '.join(OPERATORS[kind])}")
        parts.append(_condition(PREFIX + name, kind, op, value, f"{where}.{op}"))
    return _all(parts)


def _condition(column: str, kind: str, op: str, value: Any, where: str) -> Node:
    if op == "$null":
        if not isinstance(value, bool):
            raise InputError(f"{where}: expected true or false, got {_short(value)}")
        return lambda t: _mask(pc.is_null(t.column(column)) if value else pc.is_valid(t.column(column)))
    if op == "$contains":
        item = _value(value, "string", where)

        def contains(t: pa.Table) -> np.ndarray:
            col = t.column(column).combine_chunks()
            hits = _mask(pc.equal(pc.list_flatten(col), item))
            parents = pc.list_parent_indices(col).to_numpy(zero_copy_only=False)
            out = np.zeros(t.num_rows, dtype=bool)
            out[parents[hits]] = True
            return out
        return contains
    if op in ("$in", "$nin"):
        if not isinstance(value, list) or len(value) > MAX_VALUES:
            raise InputError(f"{where}: expected a list of at most {MAX_VALUES} values")
        values = [_value(v, kind, f"{where}[{i}]") for i, v in enumerate(value)]

        def member(t: pa.Table) -> np.ndarray:
            col = t.column(column)
            found = _mask(pc.is_in(col, value_set=pa.array(values, type=col.type)))
            if op == "$in":
                return found
            return ~found & _mask(pc.is_valid(col))
        return member
    scalar = _value(value, kind, where)
    fn = COMPARE[op]
    return lambda t: _mask(fn(t.column(column), pa.scalar(scalar, type=t.column(column).type)))


def _value(value: Any, kind: str, where: str) -> Any:
    """``value`` as the Python value a column of ``kind`` compares with, or InputError."""
    def bad(expected: str) -> InputError:
        return InputError(f"{where}: expected {expected} for a {kind} column, got {_short(value)}")

    if kind in ("string", "list[string]"):
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int) or abs(value) >= 2**63:
            raise bad("an integer")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a finite number")
        try:
            number = float(value)  # an integer past float's range overflows
        except OverflowError:
            raise bad("a finite number") from None
        if not math.isfinite(number):
            raise bad("a finite number")
        return number
    if not isinstance(value, str):
        raise bad("an ISO 8601 string")
    try:
        if kind == "date":
            return dt.date.fromisoformat(value)
        stamp = dt.datetime.fromisoformat(value)
    except ValueError:
        raise bad("an ISO 8601 string") from None
    return stamp


def _mask(values) -> np.ndarray:
    """A boolean Arrow result as numpy, null counted as false."""
    return pc.fill_null(values, False).to_numpy(zero_copy_only=False).astype(bool)


def _short(value: Any) -> str:
    """``value`` for a message, at most 60 characters (a value nested too deeply to print, as
    a 10,000-level list, is named as such)."""
    try:
        text = repr(value)
    except RecursionError:
        return f"a {type(value).__name__} nested too deeply"
    return text if len(text) <= 60 else text[:57] + "..."

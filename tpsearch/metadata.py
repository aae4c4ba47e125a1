"""Metadata columns kept beside the vectors for filters at search time: which Parquet types
they may have, and the one Arrow type each kind is stored as (so files that store a column
with different widths, int32 here and int64 there, build one index).

Kinds: ``string``, ``int``, ``float``, ``bool``, ``timestamp``, ``date`` and ``list[string]``;
nulls are allowed in all of them. In shards and in the id map a metadata column ``c`` is
stored as ``meta.c``, so its name never clashes with tpsearch's own columns.
"""

from __future__ import annotations

import pyarrow as pa

from .errors import InputError

PREFIX = "meta."
KINDS = ("string", "int", "float", "bool", "timestamp", "date", "list[string]")


def kind_of(t: pa.DataType) -> str | None:
    """The kind of an Arrow type, or None where it cannot be a metadata column."""
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_timestamp(t):
        return "timestamp"
    if pa.types.is_date(t):
        return "date"
    if (pa.types.is_list(t) or pa.types.is_large_list(t)) and (
            pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type)):
        return "list[string]"
    return None


def storage_type(kind: str, example: pa.DataType) -> pa.DataType:
    """The Arrow type a kind is stored as (timestamps keep their time zone)."""
    if kind == "timestamp":
        return pa.timestamp("us", tz=example.tz)
    return {"string": pa.large_string(), "int": pa.int64(), "float": pa.float64(),
            "bool": pa.bool_(), "date": pa.date32(),
            "list[string]": pa.list_(pa.large_string())}[kind]


def unify(column: str, types: list[tuple[str, pa.DataType]]) -> tuple[str, pa.DataType]:
    """The kind and storage type of a column from its type in each file (file, type); refused
    naming the file where a type is unsupported or differs in kind (or time zone)."""
    kind, target = None, None
    for f, t in types:
        k = kind_of(t)
        if k is None:
            raise InputError(f"{f}: metadata column {column!r} has type {t}; supported: "
                             f"{', '.join(KINDS)}")
        if kind is not None and k != kind:
            raise InputError(f"{f}: metadata column {column!r} holds {k} values where another "
                             f"file holds {kind}")
        here = storage_type(k, t)
        if target is not None and here != target:
            raise InputError(f"{f}: metadata column {column!r} has type {t}, unlike {target} "
                             "in another file")
        kind, target = k, here
    return kind, target

"""The build job, one module per role: reader, mapper, writer, assembler, distributor, and the
runner that ties them (:class:`BuildParts` replaces any of them). The names below are imported
when first used, so the assembler alone loads no torch."""

from importlib import import_module

_EXPORTS = {"BuildParts": "runner", "BuildResult": "runner", "build_index": "runner"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tpsearch.pipeline' has no attribute {name!r}")

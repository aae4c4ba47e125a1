"""tpsearch: vector-search indexing with Token Prepending sentence embeddings from decoder LLMs.

The public names are imported when first used (PEP 562), so a process that only assembles or
searches an index of vectors (a build's assembly task, an on-disk index's reader) does not load
torch and transformers.
"""

from importlib import import_module

from .version import __version__

#: Public name -> the module that defines it.
_EXPORTS = {
    "TPEncoder": "encoder", "EncoderSettings": "encoder", "normalize_sentence": "prompts",
    "Searcher": "searcher", "SearchRequest": "searcher", "Hit": "searcher", "update": "updates",
    "IndexWriter": "index_writer",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tpsearch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

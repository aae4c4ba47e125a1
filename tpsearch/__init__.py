"""tpsearch: vector-search indexing with Token Prepending sentence embeddings from decoder LLMs.

The public names are imported when first used (PEP 562), so a process that only assembles or
searches an index of vectors (a build's assembly task, an on-disk index's reader) does not load
torch and transformers.
"""

from .lazy import lazy_exports
from .version import __version__

#: Public name -> the module that defines it.
_EXPORTS = {
    "TPEncoder": "encoder", "EncoderSettings": "encoder", "normalize_sentence": "prompts",
    "Searcher": "searcher", "SearchRequest": "searcher", "Hit": "searcher", "update": "updates",
    "IndexWriter": "index_writer",
}

__all__ = [*_EXPORTS, "__version__"]


__getattr__ = lazy_exports(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

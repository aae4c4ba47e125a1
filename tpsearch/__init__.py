"""tpsearch: vector-search indexing with Token Prepending sentence embeddings from decoder LLMs."""

from .version import __version__  # noqa: E402

from .encoder import EncoderSettings, TPEncoder  # noqa: E402
from .prompts import normalize_sentence  # noqa: E402
from .searcher import Hit, Searcher, SearchRequest  # noqa: E402
from .updates import update  # noqa: E402
from .index_writer import IndexWriter  # noqa: E402

__all__ = ["TPEncoder", "EncoderSettings", "Searcher", "SearchRequest", "Hit", "normalize_sentence",
           "update", "IndexWriter", "__version__"]

"""tpsearch: vector-search indexing with Token Prepending sentence embeddings from decoder LLMs."""

from .encoder import EncoderSettings, TPEncoder
from .prompts import normalize_sentence

__version__ = "0.1.0"

__all__ = ["TPEncoder", "EncoderSettings", "normalize_sentence", "__version__"]

"""``tpsearch serve``: an HTTP search service over index directories (``pip install
'tpsearch[serve]'``). See :mod:`tpsearch.serve.app`."""

from .config import ServeConfig

__all__ = ["ServeConfig"]

"""Errors the CLI reports as one line (no traceback) with a non-zero exit."""


class TPSearchError(Exception):
    """Base class for expected, user-facing failures."""


class InputError(TPSearchError, ValueError):
    """Bad input data: a missing file, a wrong column, duplicate ids, ... ``param`` names the
    request field at fault where there is one (the server answers with it)."""

    def __init__(self, message: str = "", param: str | None = None):
        super().__init__(message)
        self.param = param


class UnbuildableIndex(InputError):
    """The ``--index`` asked for cannot be trained on this corpus. The encoded shards are still
    good: the same build with another ``--index`` resumes without encoding."""


class ConfigMismatch(TPSearchError):
    """Existing work (shards, an index) was made with other settings than the ones given."""


class IndexDamaged(TPSearchError):
    """An index directory's files are missing, truncated, or do not match its manifest."""


class DiskError(TPSearchError):
    """The disk refused a write (full, read-only, no permission): nothing is wrong with the
    data, and a build's finished shards are kept for a resume."""

"""The build job, one module per role: reader, mapper, writer, assembler, distributor, and the
runner that ties them (:class:`BuildParts` replaces any of them). The names below are imported
when first used, so the assembler alone loads no torch."""

from ..lazy import lazy_exports

_EXPORTS = {"BuildParts": "runner", "BuildResult": "runner", "build_index": "runner"}
__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)

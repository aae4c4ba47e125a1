"""The build job, one module per role: reader, mapper, writer, assembler, distributor, and the
runner that ties them (:class:`BuildParts` replaces any of them)."""

from .runner import BuildParts, BuildResult, build_index

__all__ = ["BuildParts", "BuildResult", "build_index"]

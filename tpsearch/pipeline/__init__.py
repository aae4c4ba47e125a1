"""The build job, one module per role: reader, mapper, writer, runner."""

from .runner import BuildResult, build_index

__all__ = ["BuildResult", "build_index"]

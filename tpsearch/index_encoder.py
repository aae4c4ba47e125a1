"""The encoder an index needs: how a loaded encoder differs from what a manifest records
(settings, dimension, weights, configuration and tokenizer files). Used by the searcher before
it answers and by the build before an update encodes anything."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigMismatch, InputError

if TYPE_CHECKING:
    from .encoder import TPEncoder
    from .manifest import Manifest


def encoder_mismatches(manifest: Manifest, encoder: TPEncoder) -> list[str]:
    """How an encoder's settings, dimension or weights differ from the index's (empty: none)."""
    diffs = [f"index vs encoder {d}" for d in manifest.encoder.differences(encoder.settings)]
    if encoder.dim != manifest.dim:
        diffs.append(f"dim: index {manifest.dim}, encoder {encoder.dim}")
    recorded = manifest.model.weights_sha256
    actual = encoder.source.weights_sha256 if encoder.source else None
    if recorded and actual and recorded != actual:
        diffs.append(f"weights sha256: index {recorded[:12]}..., encoder {actual[:12]}...")
    recorded = manifest.model.definition_sha256
    actual = encoder.source.definition_sha256 if encoder.source else None
    if recorded and actual and recorded != actual:
        diffs.append(f"config/tokenizer files sha256: index {recorded[:12]}..., encoder "
                     f"{actual[:12]}... (config.json or a tokenizer file was changed)")
    return diffs


def check_encoder(manifest: Manifest, encoder: TPEncoder) -> None:
    """Refuse an encoder whose settings or weights differ from the index's."""
    diffs = encoder_mismatches(manifest, encoder)
    if diffs:
        raise ConfigMismatch("the encoder does not match the index: " + "; ".join(diffs))


def load_index_encoder(directory: Path, manifest: Manifest, device: str = "auto",
                       model: str | None = None, trust_remote_code: bool = False,
                       **options) -> TPEncoder:
    """Load the encoder an index was built with, from the manifest alone (``model``: where
    the weights are now, if they moved), checked against the recorded weights and
    configuration hashes. ``options``: further :class:`EncoderOptions` (batching, ...)."""
    from .encoder import TPEncoder
    from .loading import resolve_source
    from .settings import EncoderOptions

    m = manifest.model
    if model:
        spec = model
    elif m.kind in ("gguf", "directory"):
        spec = m.path or m.spec
    else:
        spec = m.spec
    if not m.weights_sha256:
        raise ConfigMismatch(f"{directory}: the manifest records no weights hash for "
                             f"model {m.spec!r}; refusing to load a model it cannot verify")
    try:
        source = resolve_source(spec)
    except InputError as exc:
        raise InputError(f"{directory}: the index was built with model {m.spec!r} at "
                         f"{spec!r}, which cannot be used here ({exc}); if the weights moved, "
                         "pass their new place (--model / Searcher.open(model=...)): they are "
                         "checked against the recorded hash") from None
    if source.weights_sha256 and source.weights_sha256 != m.weights_sha256:
        raise ConfigMismatch(
            f"{directory}: the index was built with model {m.spec!r} (weights sha256 "
            f"{m.weights_sha256[:12]}...), but {spec!r} now has weights "
            f"{source.weights_sha256[:12]}...; rebuild the index or pass the original model")
    if (m.definition_sha256 and source.definition_sha256
            and source.definition_sha256 != m.definition_sha256):
        raise ConfigMismatch(
            f"{directory}: the index was built with model {m.spec!r} whose config.json "
            f"and tokenizer files hashed {m.definition_sha256[:12]}..., but at {spec!r} they "
            f"now hash {source.definition_sha256[:12]}... (edited?); the same weights with "
            "another configuration encode differently: restore the files or rebuild")
    settings = EncoderOptions.reproducing(manifest.encoder, model=spec, device=device,
                                          trust_remote_code=trust_remote_code, **options)
    encoder = TPEncoder.load(settings, source=source)
    check_encoder(manifest, encoder)
    return encoder

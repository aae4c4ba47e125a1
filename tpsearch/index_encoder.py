"""The encoder an index needs: how a loaded encoder differs from what a manifest records
(settings, dimension, weights, configuration and tokenizer files). Used by the searcher before
it answers and by the build before an update encodes anything."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import ConfigMismatch

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

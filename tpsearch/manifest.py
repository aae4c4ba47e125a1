"""manifest.json: everything needed to encode queries exactly as the documents were encoded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ConfigMismatch, InputError

FORMAT = "tpsearch-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
ID_MAP_FILE = "ids.parquet"


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """Read and check an index directory's manifest; refuse what this version cannot honour."""
    d = Path(directory)
    if not d.is_dir():
        raise InputError(f"{d}: no such index directory")
    path = d / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{d}: not a tpsearch index (no {MANIFEST})") from None
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise ConfigMismatch(f"{path}: not a tpsearch manifest (format {manifest.get('format')!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ConfigMismatch(
            f"{path}: manifest format version {version!r} is not supported by this tpsearch "
            f"(supports {FORMAT_VERSION}); rebuild the index or use a matching tpsearch"
        )
    for key in ("model", "encoder", "dim", "index", "documents"):
        if key not in manifest:
            raise ConfigMismatch(f"{path}: manifest lacks {key!r}")
    for name in (manifest["index"].get("file", INDEX_FILE), manifest.get("id_map", ID_MAP_FILE)):
        if not (d / name).is_file():
            raise InputError(f"{d}: {name} is missing; the index directory is incomplete")
    return manifest


def diff_settings(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two nested settings dicts."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(diff_settings(a, b, f"{prefix}{key}."))
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} then, {b!r} now")
    return out

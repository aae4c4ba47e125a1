"""The integrity of an index version's files: every file a reader opens must be a regular
file inside the version directory (no absolute path, '..', link, FIFO or device), listed in
the manifest with its size and SHA-256, and a listed folder must hold nothing unlisted."""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .digest import sha256_file
from .errors import IndexDamaged
from .typed import short

if TYPE_CHECKING:
    from .manifest import Manifest


@dataclass(frozen=True)
class FileEntry:
    """Size and SHA-256 of one file of the index directory."""

    bytes: int
    sha256: str = field(metadata={"max_length": 64})


def inside_name(name: Any, where: str) -> str:
    """``name`` if it is a plain relative path (no absolute path, no '..', no empty part)."""
    if not isinstance(name, str) or not name or name.startswith("/") or "\\" in name or any(
            part in ("", ".", "..") for part in name.rstrip("/").split("/")):
        raise IndexDamaged(f"{where}: the manifest names {short(name)}, which is outside the "
                           "index directory; refusing to read it")
    return name


def inside(directory: Path, name: str) -> Path:
    """``directory/name``, refused unless it is a regular file reached through real
    directories inside ``directory`` (no absolute paths, no '..', no links, FIFOs or devices)."""
    inside_name(name, str(directory))
    path = directory
    parts = name.rstrip("/").split("/")
    for i, part in enumerate(parts):
        path = path / part
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            raise IndexDamaged(f"{directory}: {name} is missing") from None
        want_dir = i < len(parts) - 1 or name.endswith("/")
        if want_dir and not stat.S_ISDIR(mode) or not want_dir and not stat.S_ISREG(mode):
            raise IndexDamaged(f"{directory}: {'/'.join(parts[:i + 1])} is not a regular "
                               f"{'directory' if want_dir else 'file'} (a link, FIFO or "
                               "device?); refusing to read it")
    return path


def file_digests(directory: Path, names: list[str]) -> dict[str, FileEntry]:
    """Size and SHA-256 of each named file (every file, for a folder), as ``Manifest.files``."""
    out = {}
    for name in names:
        p = directory / name
        for f in sorted([p] if p.is_file() else [q for q in p.rglob("*") if q.is_file()]):
            out[f.relative_to(directory).as_posix()] = FileEntry(f.stat().st_size, sha256_file(f))
    return out


def verify_files(directory: Path, manifest: Manifest, checksums: bool = True) -> None:
    """Every file the searcher will open is listed and is what the manifest records: a
    regular file inside the directory (no link, FIFO or device) of the recorded size and (with
    ``checksums``) SHA-256. A listed folder (the lexical index) holds nothing unlisted: its
    reader opens whatever is there."""
    verify_entries(directory, manifest.files, manifest.named_files(), checksums)


def verify_entries(directory: Path, files: dict[str, FileEntry], names: list[str],
                   checksums: bool = True) -> None:
    """:func:`verify_files` of the listed ``files`` a reader opens (``names``: files or
    folders) of one directory (a version's, or a segment's)."""
    opened = [n.rstrip("/") for n in names]
    for name, want in files.items():
        if not any(name == n or name.startswith(n + "/") for n in opened):
            continue  # not read by a searcher (the update store): checked where it is read
        path = inside(directory, name)
        size = path.stat().st_size
        if size != want.bytes:
            raise IndexDamaged(f"{directory}: {name} has {size} bytes, the manifest records "
                               f"{want.bytes}; the index directory is damaged")
        if checksums and sha256_file(path) != want.sha256:
            raise IndexDamaged(f"{directory}: {name} does not match the checksum in the "
                               "manifest (changed or copied from another index)")
    for name in names:
        folder = directory / name
        if folder.is_dir() and not folder.is_symlink():
            inside(directory, name.rstrip("/") + "/")
            for entry in sorted(folder.rglob("*")):
                rel = entry.relative_to(directory).as_posix()
                if entry.is_dir() and not entry.is_symlink():
                    continue
                if rel not in files:
                    raise IndexDamaged(f"{directory}: {rel} is not listed in the manifest; "
                                       "refusing a folder with files nobody checked")

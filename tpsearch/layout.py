"""The index directory on disk: immutable versions and one pointer, swapped atomically.

Layout of an index directory ``OUT`` (format version 3)::

    OUT/CURRENT                   one line: the name of the version readers open
    OUT/versions/v000007-1a2b3c4d/manifest.json, index.faiss, ids.parquet, lexical/, ...

A build (or any later change) writes a complete new version directory beside the others and
then replaces ``CURRENT`` with ``os.replace`` (one atomic rename): a reader sees the old version
or the new one, never a mix, and a crash at any point leaves one of the two complete. A reader
reads ``CURRENT`` once and opens everything from that version, so a republish never changes
what an open :class:`~tpsearch.Searcher` answers from. The version a new one replaced is kept
(a reader that read the pointer just before the swap can still open it); older ones are
removed at the next publish.

Directories written by tpsearch 0.2 hold the files at the top (``OUT/manifest.json``, format
version 2): they are read as they are, and the first publish into one turns it into the
versioned layout in the same single rename (``CURRENT`` appears), then removes the old files.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import IndexDamaged, InputError

POINTER = "CURRENT"
VERSIONS = "versions"
SEGMENTS = "segments"  # immutable segments that versions refer to (tpsearch.segments)
MANIFEST = "manifest.json"
#: What ``CURRENT`` may name: a number (ordering) and a random tag (two builders never collide).
VERSION_NAME = re.compile(r"^v(\d{6,9})-([0-9a-f]{8})$")
SEGMENT_DIR = re.compile(r"^s(\d{6,9})-([0-9a-f]{8})$")  # as tpsearch.segments.SEGMENT_NAME
#: The old (tpsearch 0.2) publish moved OUT aside under this name before renaming the new one in.
LEGACY_ASIDE = re.compile(r"^\.(?P<name>.+)\.old-\d+$")
#: Files of a tpsearch 0.2 (flat) index directory, removed once a versioned one replaces it.
LEGACY_FILES = ("manifest.json", "index.faiss", "ids.parquet", "query_shift.npy", "lexical")


@dataclass(frozen=True)
class IndexLocation:
    """Where one version of an index lies: ``path`` holds its manifest and files."""

    root: Path  # the index directory the user names
    path: Path  # the version directory (``root`` itself for a flat, format 2 directory)
    version: str | None  # None for a flat directory


def version_number(name: str) -> int:
    m = VERSION_NAME.match(name)
    return int(m.group(1)) if m else -1


def next_name(folder: Path, pattern: re.Pattern, prefix: str) -> str:
    """``prefix`` + one more than the largest number of the names in ``folder`` matching
    ``pattern`` (its first group), and a random tag (two writers never collide)."""
    numbers = [int(m.group(1)) for p in (folder.iterdir() if folder.is_dir() else [])
               if (m := pattern.match(p.name))]
    return f"{prefix}{max(numbers, default=0) + 1:06d}-{secrets.token_hex(4)}"


def new_version_name(root: Path) -> str:
    """The name of the next version of ``root`` (one more than any version there)."""
    return next_name(root / VERSIONS, VERSION_NAME, "v")


def _version_dirs(root: Path) -> list[Path]:
    versions = root / VERSIONS
    if not versions.is_dir():
        return []
    return sorted((p for p in versions.iterdir() if VERSION_NAME.match(p.name)),
                  key=lambda p: version_number(p.name))


def read_pointer(root: Path) -> str | None:
    """The version ``CURRENT`` names, checked (a regular, small file naming a version that
    exists as a real directory); None where there is no pointer."""
    pointer = root / POINTER
    try:
        st = pointer.lstat()
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise IndexDamaged(f"{pointer} is not a regular file (a link, FIFO or device); refusing it")
    if st.st_size > 64:
        raise IndexDamaged(f"{pointer} holds {st.st_size} bytes; it should name one version")
    name = pointer.read_bytes().decode("ascii", errors="replace").strip()
    if not VERSION_NAME.match(name):
        raise IndexDamaged(f"{pointer} names {name[:40]!r}, which is not a version name")
    target = root / VERSIONS / name
    try:
        mode = target.lstat().st_mode
    except FileNotFoundError:
        raise IndexDamaged(f"{pointer} names version {name}, which is missing") from None
    if not stat.S_ISDIR(mode) or not stat.S_ISDIR((root / VERSIONS).lstat().st_mode):
        raise IndexDamaged(f"{target} is not a directory (a link?); refusing it")
    return name


def locate(directory: str | Path) -> IndexLocation:
    """The current version of an index directory (read once: the caller opens that version).

    A directory left without its index by a crash of tpsearch 0.2's two-rename publish (the
    index only in a hidden ``.OUT.old-PID`` beside it) is read from there."""
    root = Path(directory)
    if not root.is_dir():
        aside = legacy_aside(root)
        if aside is not None:
            return locate(aside)
        raise InputError(f"{root}: no such index directory")
    name = read_pointer(root)
    if name is not None:
        return IndexLocation(root, root / VERSIONS / name, name)
    if (root / MANIFEST).exists():
        return IndexLocation(root, root, None)
    raise InputError(f"{root}: not a tpsearch index (no {POINTER} or {MANIFEST})")


def legacy_aside(root: Path) -> Path | None:
    """The newest ``.OUT.old-PID`` beside a missing ``OUT`` that holds a complete index."""
    if not root.parent.is_dir():
        return None
    found = [p for p in root.parent.glob(f".{root.name}.old-*")
             if p.is_dir() and LEGACY_ASIDE.match(p.name) and is_index_dir(p)]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def restore_legacy_aside(root: Path) -> bool:
    """Put back an index that a crashed tpsearch 0.2 publish left aside; True if it did."""
    if root.exists():
        return False
    aside = legacy_aside(root)
    if aside is None:
        return False
    os.replace(aside, root)
    return True


def is_index_dir(path: Path) -> bool:
    """True where ``path`` is a tpsearch index directory (versioned, or a flat one whose
    manifest says so)."""
    if (path / POINTER).is_file() and (path / VERSIONS).is_dir():
        return True
    manifest = path / MANIFEST
    try:
        if manifest.is_file() and manifest.stat().st_size < 1 << 24:
            return json.loads(manifest.read_text(encoding="utf8")).get("format") == "tpsearch-index"
    except (OSError, ValueError, AttributeError, RecursionError):
        return False
    return False


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """Flush every file and folder of a version to disk before it is published."""
    for p in sorted(path.rglob("*"), key=lambda q: len(q.parts), reverse=True):
        if p.is_file() and not p.is_symlink():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        elif p.is_dir():
            fsync_dir(p)
    fsync_dir(path)


def write_pointer(root: Path, name: str) -> None:
    """Point ``root`` at version ``name``: a temporary file, flushed, renamed over CURRENT."""
    tmp = root / f".{POINTER}.tmp-{os.getpid()}-{secrets.token_hex(2)}"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / POINTER)
    fsync_dir(root)


def _move_segments(segments: Path | None, target: Path) -> None:
    """Move the finished segments in ``segments`` (folders named like one) into ``target``."""
    if segments is None:
        return
    target.mkdir(exist_ok=True)
    for p in sorted(segments.iterdir()):
        if p.is_dir() and not p.is_symlink() and SEGMENT_DIR.match(p.name):
            os.replace(p, target / p.name)
    fsync_dir(target)


def publish(root: Path, staged: Path, name: str, staging_area: Path,
            segments: Path | None = None) -> str | None:
    """Make the complete version directory ``staged`` the current version of ``root`` as
    ``name``; returns the version it replaced (None for a new or flat directory).

    A new ``root`` appears whole: it is assembled inside ``staging_area`` and renamed into
    place. An existing one gets the version beside its others, then the pointer swap. The
    finished segments in ``segments`` (a sharded build's) are moved in first."""
    fsync_tree(staged)
    if not root.exists():
        tree = staging_area / "publish"
        if tree.exists():
            shutil.rmtree(tree)
        (tree / VERSIONS).mkdir(parents=True)
        _move_segments(segments, tree / SEGMENTS)
        os.replace(staged, tree / VERSIONS / name)
        write_pointer(tree, name)
        os.replace(tree, root)
        fsync_dir(root.parent)
        return None
    previous = read_pointer(root)
    (root / VERSIONS).mkdir(exist_ok=True)
    _move_segments(segments, root / SEGMENTS)
    os.replace(staged, root / VERSIONS / name)
    fsync_dir(root / VERSIONS)
    write_pointer(root, name)  # the one step readers see
    prune(root, keep=(name, previous))
    return previous


def referenced_segments(root: Path, versions: tuple[str | None, ...]) -> set[str] | None:
    """The segment paths (``versions/...``, ``segments/...``) the manifests of ``versions``
    refer to (a version without a list: its own directory); None if one cannot be read (then
    nothing may be removed)."""
    out: set[str] = set()
    for name in versions:
        if name is None:
            continue
        out.add(f"{VERSIONS}/{name}")
        try:
            raw = json.loads((root / VERSIONS / name / MANIFEST).read_text(encoding="utf8"))
            for seg in raw.get("segments") or []:
                out.add(str(seg["path"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return None
    return out


def prune(root: Path, keep: tuple[str | None, ...]) -> None:
    """Remove versions other than ``keep`` (and those kept ones use as segments), segments no
    kept version refers to, and the files of a replaced flat directory."""
    used = referenced_segments(root, keep)
    if used is None:
        return
    for p in _version_dirs(root):
        if p.name not in keep and f"{VERSIONS}/{p.name}" not in used:
            shutil.rmtree(p, ignore_errors=True)
    segments = root / SEGMENTS
    if segments.is_dir():
        for p in segments.iterdir():  # also segments a killed writer left half-written
            if f"{SEGMENTS}/{p.name}" not in used and (p.is_dir() and not p.is_symlink()):
                shutil.rmtree(p, ignore_errors=True)
    for name in LEGACY_FILES:
        p = root / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists() or p.is_symlink():
            p.unlink(missing_ok=True)

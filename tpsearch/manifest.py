"""manifest.json, typed: everything needed to search an index directory exactly as it was built.

One home for the schema: the build writes a :class:`Manifest`, the searcher, ``tpsearch info``
and the evaluation read one. Reading validates the whole file and names what is missing or of
the wrong type. Version 1 directories (one vector per document, no transform, no lexical
index) are read as such.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .digest import sha256_file
from .errors import ConfigMismatch, IndexDamaged, InputError
from .fusion import MODES
from .settings import EncoderSettings

FORMAT = "tpsearch-index"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
ID_MAP_FILE = "ids.parquet"


@dataclass(frozen=True)
class ModelRef:
    """Which weights encoded the documents."""

    spec: str
    path: str | None
    kind: str  # bundled | gguf | directory | hub | object
    weights_sha256: str | None


@dataclass(frozen=True)
class IndexInfo:
    """The FAISS index: factory string, why it was chosen, tuned search parameters."""

    factory: str
    reason: str
    file: str = INDEX_FILE
    search_params: dict = field(default_factory=dict)
    recall_at_10: float = 1.0
    recall_queries: int = 0


@dataclass(frozen=True)
class TransformInfo:
    """The fitted transform inside the index (documents) and the query-side shift."""

    kind: str = "none"  # none | center | whiten
    dim: int | None = None  # output dimension (whiten)
    fitted_on: int = 0  # document vectors the transform was fitted on
    query_stats: str | None = None  # where the query mean came from
    query_samples: int = 0
    query_shift_file: str | None = None  # float32 vector added to query vectors before search
    note: str | None = None


@dataclass(frozen=True)
class Manifest:
    """The whole manifest. ``to_dict``/``from_dict`` are the only (de)serialisers."""

    model: ModelRef
    encoder: EncoderSettings
    dim: int
    index: IndexInfo
    documents: int
    vectors: int  # passages (= documents for whole-document indexes)
    id_type: str  # int | str
    store_text: bool
    passages: dict | None = None  # PassageSettings.to_dict(); None: whole documents
    transform: TransformInfo = field(default_factory=TransformInfo)
    lexical: dict | None = None  # LexicalBuilder.save(); None: no lexical index
    default_mode: str = "dense"
    fusion: dict = field(default_factory=dict)
    query_prompt: str | None = None
    query_templates: list | None = None
    skipped_rows: int = 0
    truncated_texts: int = 0
    tokens: int = 0
    corpus: dict = field(default_factory=dict)
    build: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)  # name -> {"bytes", "sha256"}
    id_map: str = ID_MAP_FILE
    normalized: bool = True
    metric: str = "inner_product"
    format_version: int = FORMAT_VERSION
    tpsearch_version: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = {"format": FORMAT, **asdict(self)}
        d["encoder"] = self.encoder.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = MANIFEST) -> "Manifest":
        if not isinstance(d, dict):
            raise IndexDamaged(f"{where}: expected a JSON object")
        if d.get("format") != FORMAT:
            raise ConfigMismatch(f"{where}: not a tpsearch manifest (format {d.get('format')!r})")
        version = d.get("format_version")
        if version not in READABLE_VERSIONS:
            raise ConfigMismatch(
                f"{where}: manifest format version {version!r} is not supported by this tpsearch "
                f"(reads {', '.join(map(str, READABLE_VERSIONS))}); rebuild the index or use a "
                "matching tpsearch")
        if version == 1:
            d = _upgrade_v1(d)
        r = _Reader(d, where)
        m = r.obj("model")
        ix = r.obj("index")
        tr = r.obj("transform", optional=True) or {}
        return cls(
            model=ModelRef(spec=r.str_("model.spec", m), path=r.str_("model.path", m, null=True),
                           kind=r.str_("model.kind", m),
                           weights_sha256=r.str_("model.weights_sha256", m, null=True)),
            encoder=EncoderSettings.from_dict(d.get("encoder"), f"{where}: encoder"),
            dim=r.int_("dim"),
            index=IndexInfo(factory=r.str_("index.factory", ix), reason=r.str_("index.reason", ix),
                            file=r.str_("index.file", ix),
                            search_params=r.obj("index.search_params", ix, optional=True) or {},
                            recall_at_10=float(r.num("index.recall_at_10", ix, default=1.0)),
                            recall_queries=r.int_("index.recall_queries", ix, default=0)),
            documents=r.int_("documents"),
            vectors=r.int_("vectors"),
            id_type=r.choice("id_type", ("int", "str")),
            store_text=r.bool_("store_text"),
            passages=r.obj("passages", optional=True),
            transform=TransformInfo(
                kind=r.choice("transform.kind", ("none", "center", "whiten"), tr, default="none"),
                dim=r.int_("transform.dim", tr, null=True, default=None),
                fitted_on=r.int_("transform.fitted_on", tr, default=0),
                query_stats=r.str_("transform.query_stats", tr, null=True, default=None),
                query_samples=r.int_("transform.query_samples", tr, default=0),
                query_shift_file=r.str_("transform.query_shift_file", tr, null=True, default=None),
                note=r.str_("transform.note", tr, null=True, default=None)),
            lexical=r.obj("lexical", optional=True),
            default_mode=r.choice("default_mode", MODES, default="dense"),
            fusion=r.obj("fusion", optional=True) or {},
            query_prompt=r.str_("query_prompt", null=True, default=None),
            query_templates=d.get("query_templates"),
            skipped_rows=r.int_("skipped_rows", default=0),
            truncated_texts=r.int_("truncated_texts", default=0),
            tokens=r.int_("tokens", default=0),
            corpus=r.obj("corpus", optional=True) or {},
            build=r.obj("build", optional=True) or {},
            files=r.obj("files", optional=True) or {},
            id_map=r.str_("id_map"),
            normalized=r.bool_("normalized", default=True),
            metric=r.str_("metric", default="inner_product"),
            format_version=version,
            tpsearch_version=r.str_("tpsearch_version", default=""),
        )

    def __post_init__(self) -> None:
        if self.default_mode != "dense" and not self.lexical:
            raise IndexDamaged(f"{MANIFEST}: default_mode {self.default_mode!r} needs a lexical index")

    def named_files(self) -> list[str]:
        """Every file (or folder) this manifest makes the searcher read, relative to the index."""
        names = [self.index.file, self.id_map]
        if self.transform.query_shift_file:
            names.append(self.transform.query_shift_file)
        if self.lexical:
            names.append(str(self.lexical.get("dir", "")))
        return names


def _upgrade_v1(d: dict) -> dict:
    """A version 1 manifest as version 2: one vector per document, nothing fitted."""
    d = dict(d)
    d.setdefault("vectors", d.get("documents"))
    d.setdefault("id_type", "str")
    d.setdefault("store_text", False)
    return d


class _Reader:
    """Typed access to a manifest dict; every failure names the field."""

    _MISSING = object()

    def __init__(self, d: dict, where: str):
        self.d, self.where = d, where

    def _typed(self, name, src, default, null, ok, expected: str):
        """The field ``name`` of ``src`` (the manifest by default), ``default`` where absent
        (absent and no default: refused), None where allowed, else it must pass ``ok``."""
        key = name.rsplit(".", 1)[-1]
        src = self.d if src is None else src
        if key in src:
            value = src[key]
        elif default is self._MISSING:
            raise IndexDamaged(f"{self.where}: {name} is missing")
        else:
            value = default
        if value is None and null:
            return None
        if not ok(value):
            raise IndexDamaged(f"{self.where}: {name} must be {expected}, got {value!r}")
        return value

    def obj(self, name, src=None, optional=False):
        return self._typed(name, src, None if optional else self._MISSING, optional,
                           lambda v: isinstance(v, dict), "an object")

    def str_(self, name, src=None, null=False, default=_MISSING):
        return self._typed(name, src, default, null, lambda v: isinstance(v, str), "a string")

    def int_(self, name, src=None, null=False, default=_MISSING):
        return self._typed(name, src, default, null,
                           lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                           "a non-negative integer")

    def num(self, name, src=None, default=_MISSING):
        return self._typed(name, src, default, False,
                           lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
                           "a number")

    def bool_(self, name, src=None, default=_MISSING):
        return self._typed(name, src, default, False, lambda v: isinstance(v, bool),
                           "true or false")

    def choice(self, name, options, src=None, default=_MISSING):
        return self._typed(name, src, default, False, lambda v: v in options, " or ".join(options))


def write_manifest(directory: Path, manifest: Manifest) -> None:
    (directory / MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")


def read_manifest(directory: str | Path) -> Manifest:
    """Read and validate an index directory's manifest; every named file must lie inside the
    directory and exist."""
    d = Path(directory)
    if not d.is_dir():
        raise InputError(f"{d}: no such index directory")
    path = d / MANIFEST
    try:
        raw = json.loads(path.read_text(encoding="utf8"))
    except FileNotFoundError:
        raise InputError(f"{d}: not a tpsearch index (no {MANIFEST})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise IndexDamaged(f"{path}: not valid JSON ({exc})") from None
    manifest = Manifest.from_dict(raw, str(path))
    for name in manifest.named_files():
        inside(d, name)
        if not (d / name).exists():
            raise IndexDamaged(f"{d}: {name} is missing; the index directory is incomplete")
    return manifest


def inside(directory: Path, name: str) -> Path:
    """``directory/name``, refused unless it stays inside ``directory`` (no absolute paths,
    no '..', no links leading out)."""
    root = directory.resolve()
    target = (directory / name).resolve()
    if not name or Path(name).is_absolute() or (target != root and root not in target.parents):
        raise IndexDamaged(f"{directory}: the manifest names {name!r}, which is outside the index "
                           "directory; refusing to read it")
    return target


def file_digests(directory: Path, names: list[str]) -> dict:
    """Size and SHA-256 of each named file (every file, for a folder), as ``Manifest.files``."""
    out = {}
    for name in names:
        p = directory / name
        for f in sorted([p] if p.is_file() else [q for q in p.rglob("*") if q.is_file()]):
            out[f.relative_to(directory).as_posix()] = {"bytes": f.stat().st_size,
                                                         "sha256": sha256_file(f)}
    return out


def verify_files(directory: Path, manifest: Manifest, checksums: bool = True) -> None:
    """Check each recorded file's size (and SHA-256) against the manifest."""
    for name, want in manifest.files.items():
        path = inside(directory, name)
        if not path.is_file():
            raise IndexDamaged(f"{directory}: {name} is missing")
        size = path.stat().st_size
        if size != want.get("bytes"):
            raise IndexDamaged(f"{directory}: {name} has {size} bytes, the manifest records "
                               f"{want.get('bytes')}; the index directory is damaged")
        if checksums and sha256_file(path) != want.get("sha256"):
            raise IndexDamaged(f"{directory}: {name} does not match the checksum in the "
                               "manifest (changed or copied from another index)")


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

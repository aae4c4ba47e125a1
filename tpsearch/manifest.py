"""manifest.json, typed: everything needed to search an index directory exactly as it was built.

One home for the schema: the build writes a :class:`Manifest`, the searcher, ``tpsearch info``
and the evaluation read one. Reading treats the directory as untrusted: every value is typed
and range-checked (:mod:`tpsearch.typed`), every file a reader opens must be listed with its
size and SHA-256 and be a regular file inside the directory, and any refusal is one
:class:`~tpsearch.errors.IndexDamaged` line naming the field or file.
"""

from __future__ import annotations

import json
import re
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigMismatch, IndexDamaged, InputError
from .fusion import LEGACY_FUSION, MODES, FusionSettings
from .index import check_search_params
from .layout import MANIFEST, IndexLocation, locate
from .metadata import KINDS as METADATA_KINDS
from .passages import PassageSettings
from .settings import EncoderSettings
from .transform import KINDS as TRANSFORM_KINDS
from .integrity import FileEntry, file_digests, inside, inside_name, verify_files
from .typed import from_dict, short

FORMAT = "tpsearch-index"
#: 3: the versioned layout (tpsearch.layout), dtype in the encoder settings, typed sections.
#: 4: BM25 as term frequencies (tpsearch.lexical), versions made of segments.
FORMAT_VERSION = 4
#: 2: a flat directory written by tpsearch 0.2 (read as it is; its files must be listed).
READABLE_VERSIONS = (2, 3, 4)
INDEX_FILE = "index.faiss"
ID_MAP_FILE = "ids.parquet"
STORE_DIR = "store"  # per segment: passages and raw vectors (tpsearch.pipeline.reuse)
#: A manifest is a few KiB; anything near this is not one.
MAX_MANIFEST_BYTES = 16 << 20
SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ModelRef:
    """Which weights encoded the documents."""

    spec: str
    path: str | None
    kind: str = field(metadata={"choices": ("bundled", "gguf", "directory", "hub", "object")})
    weights_sha256: str | None
    #: config.json and tokenizer files of a directory or hub model (absent: not recorded, as
    #: by tpsearch <= 0.4; GGUF: covered by the weights hash).
    definition_sha256: str | None = None


@dataclass(frozen=True)
class IndexInfo:
    """The FAISS index: factory string, why it was chosen, tuned search parameters."""

    factory: str = field(metadata={"max_length": 200})
    reason: str
    file: str
    search_params: dict[str, int] = field(default_factory=dict)
    recall_at_10: float = field(default=1.0, metadata={"min": 0.0, "max": 1.0})
    recall_queries: int = 0
    # the inverted lists' file beside ``file`` (an on-disk IVF index), memory-mapped; None: in RAM
    data_file: str | None = None


@dataclass(frozen=True)
class TransformInfo:
    """The fitted transform inside the index (documents) and the query-side shift."""

    kind: str = field(default="none", metadata={"choices": TRANSFORM_KINDS})
    dim: int | None = field(default=None, metadata={"min": 1, "max": 65536})  # whiten's output
    fitted_on: int = 0  # document vectors the transform was fitted on
    query_stats: str | None = None  # where the query mean came from
    query_samples: int = 0
    query_shift_file: str | None = None  # float32 vector added to query vectors before search
    note: str | None = None
    # EmbedFilter's (top, bottom) directions of the unembedding dropped after centering; the
    # index's dimension is then the model's minus top + bottom. None: no filter (0.3 indexes).
    embed_filter: list[int] | None = None
    out_dim: int | None = field(default=None, metadata={"min": 1, "max": 65536})
    # the query adapter (tpsearch.query_adapter): a (dim + 1, dim) float32 map applied to query
    # vectors after the shift, fitted on ``adapter_pairs`` (pseudo-query, document) pairs
    # (each sampled document's first sentences)
    query_map_file: str | None = None
    adapter_pairs: int = 0
    # partial whitening's power after the filter (tpsearch.transform.partial_whitening);
    # 0: none (indexes before 0.12, and 'whiten', which whitens fully)
    whiten_power: float = field(default=0.0, metadata={"min": 0.0, "max": 0.5})

    def query_files(self) -> list[str]:
        """The query side's files (shift, map) a version holds beside its segments."""
        return [f for f in (self.query_shift_file, self.query_map_file) if f]


@dataclass(frozen=True)
class LexicalInfo:
    """The BM25 index beside the vectors (bm25s, memory-mapped at search time)."""

    dir: str = "lexical"
    unit: str = field(default="document", metadata={"choices": ("document", "passage")})
    rows: int = 0
    vocabulary: int = 0
    k1: float = field(default=1.2, metadata={"min": 0.0, "max": 100.0})
    b: float = field(default=0.75, metadata={"min": 0.0, "max": 1.0})
    method: str = field(default="lucene", metadata={
        "choices": ("lucene", "robertson", "atire", "bm25l", "bm25+")})
    kind: str = field(default="bm25", metadata={"choices": ("bm25",)})
    # "tpsearch-tf": term frequencies per segment (tpsearch.lexical); "bm25s": tpsearch <= 0.4
    library: str = field(default="bm25s", metadata={"choices": ("bm25s", "tpsearch-tf")})
    stemmer: str = "english"
    stopwords: str = "en"
    #: its units' mean length in terms (after stemming and stop words): what the default
    #: lexical weight follows (0: not recorded, before 0.11)
    mean_length: float = field(default=0.0, metadata={"min": 0.0})


@dataclass(frozen=True)
class CorpusInfo:
    """What the index was built from."""

    path: str
    files: list[str]
    rows: int
    fingerprint: str
    text_column: str
    id_column: str
    title_column: str | None = None


@dataclass(frozen=True)
class BuildInfo:
    """How and when the build ran (informational: nothing here changes the vectors)."""

    started_at: str
    seconds: float = field(metadata={"min": 0.0})
    stage_seconds: dict[str, float] = field(default_factory=dict)
    encoded_now: dict[str, int] = field(default_factory=dict)  # documents, tokens
    device: str = "cpu"
    dtype: str = "float32"
    batching: str = "sorted"
    compiled: bool = False
    config: dict = field(default_factory=dict)  # the BuildConfig, as given


@dataclass(frozen=True)
class UpdateInfo:
    """What an incremental build changed, against the version it started from."""

    base: str | None  # the version it started from
    added: int
    changed: int
    removed: int
    kept: int  # documents whose stored vectors were reused
    transform: str = field(default="kept", metadata={"choices": ("kept", "fitted")})
    drift: float | None = None  # how far the documents' mean moved from the kept fit


@dataclass(frozen=True)
class SegmentInfo:
    """One immutable segment of a version (see :mod:`tpsearch.segments`): its own FAISS index
    (the version's fitted transform inside), id map, lexical term frequencies and store, in
    ``path`` (relative to the index directory), and which of its documents this version has
    deleted (a bit per document in ``deletions``, a file of the version)."""

    path: str = field(metadata={"max_length": 60})
    documents: int = field(metadata={"min": 0})  # documents it holds, deleted ones included
    vectors: int = field(metadata={"min": 0})
    index: IndexInfo
    files: dict[str, FileEntry]  # relative to ``path``
    lexical: LexicalInfo | None = None
    deleted: int = field(default=0, metadata={"min": 0})
    deletions: str | None = None  # this version's file of deleted documents (packed bits)


@dataclass(frozen=True)
class Manifest:
    """The whole manifest. ``to_dict``/``from_dict`` are the only (de)serialisers."""

    model: ModelRef
    encoder: EncoderSettings
    dim: int = field(metadata={"min": 1, "max": 65536})
    index: IndexInfo
    documents: int
    vectors: int  # passages (= documents for whole-document indexes)
    id_type: str = field(metadata={"choices": ("int", "str")})
    store_text: bool
    corpus: CorpusInfo
    build: BuildInfo
    files: dict[str, FileEntry]  # name -> size and SHA-256 (every file a reader opens)
    passages: PassageSettings | None = None  # None: whole documents
    transform: TransformInfo = field(default_factory=TransformInfo)
    lexical: LexicalInfo | None = None  # None: no lexical index
    metadata: dict[str, str] = field(default_factory=dict)  # column -> kind (id map: meta.NAME)
    default_mode: str = field(default="dense", metadata={"choices": MODES})
    # Absent from a manifest: the fusion tpsearch 0.2/0.3 used (not today's default).
    fusion: FusionSettings = field(default_factory=lambda: LEGACY_FUSION)
    query_prompt: str | None = None
    query_templates: tuple[str, ...] | None = None
    skipped_rows: int = 0
    truncated_texts: int = 0
    tokens: int = 0
    id_map: str = ID_MAP_FILE
    normalized: bool = True
    metric: str = field(default="inner_product", metadata={"choices": ("inner_product",)})
    format_version: int = FORMAT_VERSION
    tpsearch_version: str = ""
    version: str | None = None  # this version's name in the index directory (layout)
    replaces: str | None = None  # the version it replaced, if any
    store: str | None = None  # folder of the passages and raw vectors (incremental builds)
    update: UpdateInfo | None = None  # set when this version was built incrementally
    history: list[UpdateInfo] = field(default_factory=list)  # the earlier updates (the last 100)
    history_dropped: int = field(default=0, metadata={"min": 0})  # older updates not listed
    # None: the version's own files are its one segment (every full build). Else the segments
    # it is made of, in order; ``documents``/``vectors`` count their live documents.
    segments: list[SegmentInfo] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"format": FORMAT, **asdict(self)}
        d["encoder"] = self.encoder.to_dict()
        if self.query_templates is not None:
            d["query_templates"] = list(self.query_templates)
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = MANIFEST) -> "Manifest":
        if not isinstance(d, dict):
            raise IndexDamaged(f"{where}: expected a JSON object")
        if d.get("format") != FORMAT:
            raise ConfigMismatch(f"{where}: not a tpsearch manifest (format {short(d.get('format'))})")
        version = d.get("format_version")
        if version not in READABLE_VERSIONS:
            raise ConfigMismatch(
                f"{where}: manifest format version {short(version)} is not supported by this "
                f"tpsearch (reads {', '.join(map(str, READABLE_VERSIONS))}; version 1 "
                "directories record no checksums); rebuild the index with this tpsearch")
        if version == 2:
            d = _upgrade_v2(d)
        m = from_dict(cls, d, where)
        m.check(where)
        return m

    def check(self, where: str = MANIFEST) -> None:
        """Rules that involve several fields."""
        if self.encoder.quantize == "int8" and _release(self.tpsearch_version) < (0, 6):
            raise ConfigMismatch(
                f"{where}: encoded with tpsearch {self.tpsearch_version}'s int8 (one activation "
                "scale per batch), which 0.6 replaced with per-token scales: queries encoded "
                "now would not match its vectors; rebuild the index with this tpsearch")
        if self.default_mode != "dense" and self.lexical is None:
            raise IndexDamaged(f"{where}: default_mode {self.default_mode!r} needs a lexical index")
        if self.vectors < self.documents:
            raise IndexDamaged(f"{where}: {self.vectors} vectors for {self.documents} documents")
        try:
            check_search_params(self.index.factory, self.index.search_params)
        except InputError as exc:
            raise IndexDamaged(f"{where}: index.search_params: {exc}") from None
        if not self.files and self.segments is None:
            raise IndexDamaged(f"{where}: lists no files; refusing a directory it cannot verify")
        for name, kind in self.metadata.items():
            if kind not in METADATA_KINDS:
                raise IndexDamaged(f"{where}: metadata.{short(name, 40)} has kind {short(kind, 40)}")
        for name, entry in self.files.items():
            if not SHA256.match(entry.sha256):
                raise IndexDamaged(f"{where}: files.{short(name)}.sha256 is not a SHA-256")
        for name in self.named_files():
            inside_name(name, where)
            listed = name in self.files or any(f.startswith(name.rstrip("/") + "/") for f in self.files)
            if not listed:
                raise IndexDamaged(f"{where}: {name} is not among the files it lists")
        for n, seg in enumerate(self.segments or []):
            from .segments import check_segment_info

            check_segment_info(seg, self, f"{where}: segments[{n}]")
        if self.segments is not None and self.format_version < 4:
            raise IndexDamaged(f"{where}: segments in a format version {self.format_version} manifest")

    def summary(self) -> dict[str, Any]:
        """The facts a listing shows (the server's ``/indexes``; ``tpsearch info`` prints them
        among its rows): version, model, counts, index, search mode, segments, build time."""
        return {"version": self.version, "model": self.model.spec, "dim": self.dim,
                "documents": self.documents, "passages": self.vectors,
                "index": self.index.factory, "default_mode": self.default_mode,
                "lexical": self.lexical is not None,
                "segments": len(self.segments) if self.segments is not None else 1,
                "built_at": self.build.started_at, "tpsearch_version": self.tpsearch_version}

    def named_files(self) -> list[str]:
        """Every file (or folder) this manifest makes the searcher read, relative to the index."""
        if self.segments is not None:  # the segments' files are listed in each segment
            names = [s.deletions for s in self.segments if s.deletions]
        else:
            names = [self.index.file, self.id_map]
            if self.index.data_file:
                names.append(self.index.data_file)
            if self.lexical:
                names.append(self.lexical.dir)
        return names + self.transform.query_files()


def _release(version: str) -> tuple[int, ...]:
    """(major, minor) of a version string such as ``"0.5.0"``; () where it has none."""
    parts = []
    for piece in version.split(".")[:2]:
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)


def _upgrade_v2(d: dict) -> dict:
    """A flat tpsearch 0.2 manifest as version 3: the encoder's dtype from the build record;
    the empty objects it wrote for absent sections as absent."""
    d = dict(d)
    enc = d.get("encoder")
    build = d.get("build")
    if isinstance(enc, dict) and "dtype" not in enc and isinstance(build, dict):
        d["encoder"] = {**enc, "dtype": build.get("dtype")}
    if d.get("fusion") == {}:
        d.pop("fusion")
    if isinstance(build, dict) and "started_at" not in build:
        d["build"] = {"started_at": "", **build}
    return d


def write_manifest(directory: Path, manifest: Manifest) -> None:
    (directory / MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")


def read_manifest(directory: str | Path) -> Manifest:
    """Read and validate the manifest of one version directory (see :func:`open_manifest` for
    an index directory)."""
    d = Path(directory)
    path = d / MANIFEST
    try:
        st = path.lstat()
    except FileNotFoundError:
        raise InputError(f"{d}: not a tpsearch index (no {MANIFEST})") from None
    if not stat.S_ISREG(st.st_mode):
        raise IndexDamaged(f"{path} is not a regular file (a link, FIFO or device); refusing it")
    if st.st_size > MAX_MANIFEST_BYTES:
        raise IndexDamaged(f"{path} holds {st.st_size} bytes; a manifest is a few KiB")
    try:
        raw = json.loads(path.read_bytes().decode("utf8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise IndexDamaged(f"{path}: not valid JSON ({str(exc)[:120]})") from None
    except RecursionError:
        raise IndexDamaged(f"{path}: nested too deeply to be a manifest") from None
    manifest = Manifest.from_dict(raw, str(path))
    for name in manifest.named_files():
        if not (d / name).exists():
            raise IndexDamaged(f"{d}: {name} is missing; the index directory is incomplete")
    return manifest


def open_manifest(directory: str | Path) -> tuple[IndexLocation, Manifest]:
    """The current version of an index directory and its manifest (the pointer read once)."""
    location = locate(directory)
    return location, read_manifest(location.path)


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


#: ``inside``, ``verify_files`` and ``file_digests`` live in :mod:`tpsearch.integrity`.
__all__ = ["Manifest", "FileEntry", "open_manifest", "read_manifest", "write_manifest", "diff_settings",
           "inside", "inside_name", "verify_files", "file_digests"]

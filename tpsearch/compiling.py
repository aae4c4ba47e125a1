"""Regional ``torch.compile`` of a decoder's layers, and when to use it.

A small decoder's time goes less to its matrix products than to unfused elementwise kernels
(norms, activations, dtype casts, residual adds): on an H200, 15% of Gemma 3 270M's kernel time
was matrix products. Compiling each decoder layer's ``forward`` fuses that work; the layers
share one compiled graph (compiled about once per shape, then once with dynamic shapes). TP's
hooks run around ``forward``, outside the compiled region, unchanged. Measured (README,
"Throughput"): with CUDA graphs on an H200, 3.2-3.5x the documents/s of the eager sorted path
for Gemma 3 270M, 1.4x for a LLaMA-2-7B-shaped model; on a 2-core AMX CPU in bfloat16, 1.31x,
after 5-16 s of compiling; int8 (per-token, :mod:`tpsearch.int8`) on 2 AVX-512 VNNI cores, 1.90x.
"""

from __future__ import annotations

import shutil

import torch
from torch import nn

from .errors import InputError
from .tp import find_decoder_layers


def can_compile(device: torch.device) -> bool:
    """Whether torch.compile has a backend for ``device`` here: Triton on a CUDA GPU of compute
    capability 7.0 or more; a C++ compiler on a CPU."""
    if device.type == "cuda":
        import importlib.util

        return (importlib.util.find_spec("triton") is not None
                and torch.cuda.get_device_capability(device) >= (7, 0))
    if device.type == "cpu":
        return any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))
    return False


#: Documents from which a CPU build in bfloat16 compiles its layers under ``"auto"``: compiling
#: gave 1.31x there (96.8 -> 126.5 short documents/s) for 5-16 s of compiling, which pays from
#: about 7,000 documents; 20,000 leaves a margin for slower compilers.
CPU_COMPILE_MIN_DOCUMENTS = 20_000

#: The same for an int8 build (:mod:`tpsearch.int8`): compiled, its quantise and rescale steps
#: fuse around the integer products, 1.90x the eager int8 rate on 256 demo docstrings (30.6 ->
#: 58.0 documents/s on 2 AVX-512 VNNI cores; ``tpsearch bench --compile``) for about 11 s of
#: compiling, which pays from about 750 such documents; 2,000 leaves a margin (and takes the
#: 2,000-document demo).
CPU_INT8_COMPILE_MIN_DOCUMENTS = 2_000


def compile_pays_off(device: torch.device, dtype: torch.dtype, documents: int,
                     quantized: bool) -> bool:
    """Whether ``"auto"`` compiles a CPU build of ``documents`` documents: int8 (whose rescaling
    around each product is most of its eager time) or bfloat16 (where the matrix units leave the
    elementwise work exposed), and large corpora only."""
    if device.type != "cpu" or not can_compile(device):
        return False
    if quantized:
        return documents >= CPU_INT8_COMPILE_MIN_DOCUMENTS
    return dtype == torch.bfloat16 and documents >= CPU_COMPILE_MIN_DOCUMENTS


def resolve_compile(value: bool | str | None, device: torch.device, quantized: bool,
                    dtype: torch.dtype | None = None, documents: int | None = None) -> bool:
    """The one place the compile choice is made. ``"auto"`` (or None): on a CUDA GPU where it
    can; on a CPU only for a build of ``documents`` documents that :func:`compile_pays_off`
    (queries and small builds never compile there). ``True`` is checked."""
    if value in (None, "auto"):
        if device.type == "cuda":
            return not quantized and can_compile(device)
        return (documents is not None and dtype is not None
                and compile_pays_off(device, dtype, documents, quantized))
    if value is True or value == "true":
        if not can_compile(device):
            raise InputError(f"torch.compile has no backend for {device} here (a CUDA GPU needs "
                             "Triton and compute capability 7.0+; a CPU needs a C++ compiler)")
        return True
    if value is False or value == "false":
        return False
    raise InputError(f"compile must be auto, true or false, got {str(value)[:40]!r}")


def compile_decoder_layers(model: nn.Module, dynamic: bool | None = None) -> int:
    """Compile each decoder layer's ``forward`` in place, on the shared model (every encoder
    over it sees the compiled layers); returns the number of layers. A deep copy of the model
    made afterwards would still call the original layers: copy before compiling."""
    layers = find_decoder_layers(model)
    for layer in layers:
        if not getattr(layer, "_tpsearch_compiled", False):
            layer.forward = torch.compile(layer.forward, dynamic=dynamic)
            layer._tpsearch_compiled = True
    return len(layers)


def is_compiled(model: nn.Module) -> bool:
    return all(getattr(layer, "_tpsearch_compiled", False) for layer in find_decoder_layers(model))

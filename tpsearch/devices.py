"""Where a model runs and in which dtype: device names checked against this machine, and the
CPU's matrix units (AMX, AVX-512 BF16, VNNI) deciding what ``dtype="auto"`` and
``quantize="auto"`` mean."""

from __future__ import annotations

import os

import torch

from .errors import InputError


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; a named device must exist here."""
    if device != "auto":
        return check_device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device, refused in one line if torch cannot name it or this
    machine does not have it."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"unknown device {str(device)[:40]!r}; use auto, cpu, cuda, cuda:N "
                         "or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {str(device)!r}: CUDA is not available here (torch "
                             f"{torch.__version__}); use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {str(device)!r}: this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InputError(f"device {str(device)!r}: MPS is not available here")
    elif dev.type != "cpu":
        raise InputError(f"device {str(device)!r} is not supported; use auto, cpu, cuda or mps")
    return dev


def cpu_features() -> dict[str, object]:
    """What the CPU offers for matrix products: torch's kernel capability (AVX2, AVX512, ...)
    and the native bf16 / int8 matrix units (AMX tiles, AVX-512 BF16, VNNI)."""
    cpu = torch.cpu
    return {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "amx": bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)()),
        "avx512_bf16": bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()),
        "vnni": bool(getattr(cpu, "_is_vnni_supported", lambda: False)()),
    }


def native_bf16_cpu() -> bool:
    """True where the CPU multiplies bf16 matrices in hardware: AVX-512 BF16 dot products
    (AMD Zen 4 and later, Intel Cooper Lake), with or without AMX tiles (Intel Sapphire Rapids
    and later, which have both). Measured per CPU kind in docs/throughput.md: bfloat16 ran
    2.7x float32 on both kinds, and on AVX-512 BF16 without AMX as fast as int8 eager and 1.22x
    it compiled. ``TPSEARCH_NATIVE_BF16=0`` (or ``1``) overrides the detection, e.g. to keep
    ``dtype="auto"`` in float32 on such a CPU."""
    forced = os.environ.get("TPSEARCH_NATIVE_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return bool(cpu_features()["avx512_bf16"])


def int8_default_cpu() -> bool:
    """True where int8 pays on this CPU: VNNI int8 dot products and no bf16 dot products
    (where there are, ``dtype="auto"`` takes bfloat16 instead). Measured in docs/throughput.md."""
    return bool(cpu_features()["vnni"]) and not native_bf16_cpu()


def resolve_quantize(quantize: str | None, dtype: str | torch.dtype | None,
                     device: torch.device, model_measured: bool = False) -> str | None:
    """``None``/``"none"``: float layers; ``"int8"``: int8 (CPU only: refused on another device,
    before any model loads);
    ``"auto"``: int8 on a CPU where it pays (:func:`int8_default_cpu`) for a model whose int8
    quality was measured (``model_measured``: its preset says so), when the dtype is left to
    the machine too (``dtype="auto"``); an explicit dtype keeps float layers.
    ``TPSEARCH_INT8=1`` makes ``auto`` take int8 for any model on any CPU, ``0`` never."""
    if quantize is None or quantize == "none":
        return None
    if quantize == "int8":
        if device.type != "cpu":
            raise InputError("quantize='int8' runs on a CPU; on a GPU use bfloat16")
        return "int8"
    if quantize != "auto":
        raise InputError(f"unknown quantisation {str(quantize)[:40]!r}; use auto, int8 or none")
    if device.type != "cpu" or dtype != "auto":
        return None
    forced = os.environ.get("TPSEARCH_INT8", "").strip()
    if forced in ("0", "1"):
        return "int8" if forced == "1" else None
    return "int8" if model_measured and int8_default_cpu() else None


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None: float32 on a CPU (exact), bf16 on accelerators. ``auto``: bf16 also on CPUs with
    bf16 dot products (AVX-512 BF16, AMX), float32 on other CPUs. Names: float32/fp32, bfloat16/bf16,
    float16/fp16."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type != "cpu":
            return torch.bfloat16
        return torch.bfloat16 if dtype == "auto" and native_bf16_cpu() else torch.float32
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise InputError(f"unknown dtype {dtype!r}; use one of {', '.join(names)}")
    return names[dtype]

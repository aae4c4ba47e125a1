"""int8 linear layers with per-token activation scales, for CPU encoders.

Each linear layer of the decoder stack keeps its weight as int8 with one scale per output
channel; each input row (a token) is quantised with its own scale, the product runs in integer
arithmetic (``torch._int_mm``: VNNI/AMX-int8 kernels where the CPU has them) and is rescaled by
the two scales. Per-token scales are what keep quality on models with massive activations at a
few positions (Gemma 3): torch's ``quantize_dynamic`` shares one activation scale per batch, so
one outlier token flattens every other token to a few levels (STS-B dev 69.4 -> 24.0), while
per-token scales keep it (69.1 on 400 pairs against float32's 68.6; ``benchmarks/probe_int8.py``).

A token's result depends only on its own row: its scale is its own and the int32 accumulation is
exact, so int8 vectors are as independent of batch-mates and padding as float32 ones.
Eager, the quantise/rescale steps are separate kernels; compiled
(:mod:`tpsearch.compiling`) they fuse, which is where int8 is fast (measured in
docs/throughput.md).
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import InputError
from .tp import find_decoder_layers

#: The largest magnitude of a symmetric int8 code (-127..127; -128 is never used).
QMAX = 127


def _quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes, float32 scale per row) of a 2-D float tensor, symmetric per row."""
    scale = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / QMAX
    return torch.round(x / scale).clamp(-QMAX, QMAX).to(torch.int8), scale


class Int8Linear(nn.Module):
    """A linear layer with int8 weights (per output channel) and int8 activations (per token).
    Made from a float ``nn.Linear`` by :meth:`from_linear`; returns the input's dtype."""

    def __init__(self, weight_t: torch.Tensor, weight_scale: torch.Tensor,
                 bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = weight_t.shape
        self.register_buffer("weight_t", weight_t)  # int8, in x out (the layout _int_mm takes)
        self.register_buffer("weight_scale", weight_scale)  # float32, out
        self.register_buffer("bias", bias)  # float32 or None

    @classmethod
    def from_linear(cls, linear: nn.Module) -> "Int8Linear":
        """From an ``nn.Linear`` (weight out x in) or transformers' ``Conv1D`` (GPT-2's
        projections: weight in x out)."""
        w = linear.weight.detach().float()
        if not isinstance(linear, nn.Linear):
            w = w.t()
        codes, scale = _quantize_rows(w)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        return cls(codes.t().contiguous(), scale.squeeze(1).contiguous(), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        codes, scale = _quantize_rows(rows)
        y = torch._int_mm(codes, self.weight_t).float() * scale * self.weight_scale
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, int8 per-channel weights, per-token activations")


def _is_linear(module: nn.Module) -> bool:
    """A float ``nn.Linear``, or transformers' ``Conv1D`` (a linear layer with its weight
    transposed: GPT-2)."""
    if type(module) is nn.Linear:
        return True
    return (type(module).__name__ == "Conv1D" and hasattr(module, "nf")
            and getattr(module, "weight", None) is not None and module.weight.dim() == 2)


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every linear layer inside the decoder layers (``nn.Linear``, GPT-2's ``Conv1D``)
    with an :class:`Int8Linear`, in place; returns ``model``. The decoder layers themselves stay the same objects (TP's hooks
    are on them); embeddings, norms and any output head stay float."""
    if not hasattr(torch, "_int_mm"):  # torch's int8 product (2.1+; torchao's int8 rests on it)
        raise InputError(f"torch {torch.__version__} has no int8 matrix product "
                         "(torch._int_mm); int8 needs torch 2.1 or newer")
    for layer in find_decoder_layers(model):
        for parent in list(layer.modules()):
            for name, child in list(parent.named_children()):
                if _is_linear(child):
                    setattr(parent, name, Int8Linear.from_linear(child))
    model._tpsearch_int8 = True
    return model


def is_quantized(model: nn.Module) -> bool:
    """Whether :func:`quantize_int8` converted ``model``."""
    return bool(getattr(model, "_tpsearch_int8", False))


__all__ = ["Int8Linear", "QMAX", "is_quantized", "quantize_int8"]

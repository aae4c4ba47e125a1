"""int8 linear layers with per-token activation scales, for CPU encoders.

Each linear layer of the decoder stack keeps its weight as int8 with one scale per output
channel; each input row (a token) is quantised with its own scale, the product runs in integer
arithmetic (``torch._int_mm``: VNNI/AMX-int8 kernels where the CPU has them) and is rescaled by
the two scales. Per-token scales are what keep quality on models with massive activations at a
few positions (Gemma 3): torch's ``quantize_dynamic`` shares one activation scale per batch, so
one outlier token flattens every other token to a few levels (STS-B dev 69.4 -> 24.0), while
per-token scales keep it (69.1 on 400 pairs against float32's 68.6; ``benchmarks/probe_int8.py``).
What per-token scales cannot isolate, a few input channels of the MLP's down projection far
larger than the rest in many tokens, stays in float32: those channels are found once per load
on fixed calibration texts (:func:`activation_outliers`) and their products computed apart.

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
                 bias: torch.Tensor | None, float_channels: torch.Tensor | None = None,
                 float_weight_t: torch.Tensor | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = weight_t.shape
        self.register_buffer("weight_t", weight_t)  # int8, in x out (the layout _int_mm takes)
        self.register_buffer("weight_scale", weight_scale)  # float32, out
        self.register_buffer("bias", bias)  # float32 or None
        # Input channels kept in float32 (activation outliers) and their weight rows.
        self.register_buffer("float_channels", float_channels)  # int64 or None
        self.register_buffer("float_weight_t", float_weight_t)  # float32, kept x out, or None

    @classmethod
    def from_linear(cls, linear: nn.Module,
                    float_channels: torch.Tensor | None = None) -> "Int8Linear":
        """From an ``nn.Linear`` (weight out x in) or transformers' ``Conv1D`` (GPT-2's
        projections: weight in x out). ``float_channels``: input channels whose products stay
        in float32 (the layer's activation outliers; their weights leave the int8 part)."""
        w_t = _weight_t(linear).detach().float()
        float_weight_t = None
        if float_channels is not None and len(float_channels):
            float_channels = float_channels.to(torch.long).sort().values
            float_weight_t = w_t[float_channels].clone()
            w_t = w_t.index_fill(0, float_channels, 0.0)
        else:
            float_channels = None
        codes, scale = _quantize_rows(w_t.t())
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        return cls(codes.t().contiguous(), scale.squeeze(1).contiguous(), bias, float_channels,
                   float_weight_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        kept = None
        if self.float_channels is not None:
            kept = rows[:, self.float_channels] @ self.float_weight_t
            rows = rows.index_fill(1, self.float_channels, 0.0)
        codes, scale = _quantize_rows(rows)
        y = torch._int_mm(codes, self.weight_t).float() * scale * self.weight_scale
        if kept is not None:
            y = y + kept
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


#: Input channels kept in float32 in each decoder layer's widest linear layer (the MLP's down
#: projection, whose input carries the channel outliers): those with the largest activations
#: on the calibration texts. Gemma 3 270M, pydoc-dev nDCG@10 dense / hybrid: float32 52.94 /
#: 66.59; int8 per token 51.00 / 66.01; with 64 such channels (3% of its 2,048) 53.12 / 66.70;
#: with 64 in every linear layer 52.68 / 66.27, and slower (docs/throughput.md).
FLOAT_CHANNELS = 64

#: At most one input channel in this many stays float (a narrow layer keeps fewer).
MAX_FLOAT_SHARE = 10

#: Texts whose activations name each layer's outlier channels: prose, questions, code,
#: docstrings, numbers and the prompt shapes the encoder feeds, fixed so that every load of a
#: model picks the same channels (documents and queries are encoded alike).
CALIBRATION_TEXTS = (
    'This sentence : "A woman rides a bicycle along the river at dawn." means in one word:"',
    'This sentence : "How do I read a JSON file into a dictionary in Python?" means in one word:"',
    'This sentence : "Aspirin reduces the risk of heart attack in adults over fifty." means in one word:"',
    "Return the number of items in a container. Raises TypeError if the object has no length.",
    "def parse(text: str) -> dict:\n    return json.loads(text)",
    "The stock market fell sharply on Monday after the central bank raised interest rates.",
    "Mutations in the BRCA1 gene increase the lifetime risk of breast and ovarian cancer.",
    "Children are playing football in the park while their parents watch from a bench.",
    "What is the capital of France, and how many people live there?",
    "In 1969, Apollo 11 landed on the Moon; 600 million people watched the broadcast.",
    "Open the file at PATH for reading and return a stream; mode 'rb' reads bytes.",
    "The protein binds to the receptor with a dissociation constant of 3.2 nM (n = 12).",
    "She said 'hello' and left the room without closing the door.",
    "for i in range(10):\n    total += values[i] * weights[i]",
    "Download a file from a URL to disk, retrying twice on a timeout.",
    "The train to the airport leaves every twenty minutes.",
)


def _weight_t(linear: nn.Module) -> torch.Tensor:
    """The weight as in x out (a view): ``nn.Linear`` keeps out x in, ``Conv1D`` in x out."""
    return linear.weight.t() if isinstance(linear, nn.Linear) else linear.weight


def _in_features(linear: nn.Module) -> int:
    return _weight_t(linear).shape[0]


def activation_outliers(model: nn.Module, tokenizer, channels: int = FLOAT_CHANNELS,
                        texts: tuple[str, ...] = CALIBRATION_TEXTS) -> dict[nn.Module, torch.Tensor]:
    """For the widest linear layer of each decoder layer (its MLP down projection, by input
    width, whatever the architecture names it), the ``channels`` input channels (at most a
    tenth of its inputs) with the largest absolute activation over ``texts`` (each text run
    alone, full depth, float)."""
    peaks: dict[nn.Module, torch.Tensor] = {}

    def record(module: nn.Module, inputs: tuple) -> None:
        x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).abs().amax(0).float()
        peaks[module] = x if module not in peaks else torch.maximum(peaks[module], x)

    hooks = []
    for layer in find_decoder_layers(model):
        linears = [m for m in layer.modules() if _is_linear(m)]
        widest = max((_in_features(m) for m in linears), default=0)
        hooks += [m.register_forward_pre_hook(record) for m in linears if _in_features(m) == widest]
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            for text in texts:
                ids = tokenizer(text, return_tensors="pt")["input_ids"].to(device)
                model(input_ids=ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return {m: p.topk(min(channels, p.numel() // MAX_FLOAT_SHARE)).indices for m, p in peaks.items()}


def quantize_int8(model: nn.Module, tokenizer=None, float_channels: int = FLOAT_CHANNELS
                  ) -> nn.Module:
    """Replace every linear layer inside the decoder layers (``nn.Linear``, GPT-2's ``Conv1D``)
    with an :class:`Int8Linear`, in place; returns ``model``. With ``tokenizer``, the widest
    linear layer of each decoder layer keeps its ``float_channels`` largest input channels on
    the calibration texts in float32 (:func:`activation_outliers`; what the encoder does);
    without, none. The decoder layers themselves stay the same objects (TP's hooks are on
    them); embeddings, norms and any output head stay float."""
    if not hasattr(torch, "_int_mm"):  # torch's int8 product (2.1+; torchao's int8 rests on it)
        raise InputError(f"torch {torch.__version__} has no int8 matrix product "
                         "(torch._int_mm); int8 needs torch 2.1 or newer")
    kept = (activation_outliers(model, tokenizer, float_channels)
            if tokenizer is not None and float_channels > 0 else {})
    for layer in find_decoder_layers(model):
        for parent in list(layer.modules()):
            for name, child in list(parent.named_children()):
                if _is_linear(child):
                    setattr(parent, name, Int8Linear.from_linear(child, kept.get(child)))
    model._tpsearch_int8 = True
    return model


def is_quantized(model: nn.Module) -> bool:
    """Whether :func:`quantize_int8` converted ``model``."""
    return bool(getattr(model, "_tpsearch_int8", False))


__all__ = ["CALIBRATION_TEXTS", "FLOAT_CHANNELS", "Int8Linear", "QMAX", "activation_outliers",
           "is_quantized", "quantize_int8"]

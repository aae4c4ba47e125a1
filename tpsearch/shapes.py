"""Fixed-shape batches for accelerators: bucket plans, masks built on the device, CUDA graphs.

On a GPU a small decoder is bound by per-batch host work and kernel launches, not arithmetic
(transformers' mask preparation alone synchronises with the device once per forward pass).
``batching="bucketed"`` and ``"graphs"`` keep every batch to one of a few shapes:

* :func:`plan_buckets` pads each row to the next width of a fixed ladder (8-token steps up to
  128, 16 up to 256, 32 up to 512, then 64) and cuts each width's rows into batches of a fixed
  row count (a power of two within the batch size and token budget; a width's last batch is
  rounded up to a multiple of 8 rows): few shapes, padding near the length-sorted path's, and
  the same plan for the same lengths (ties broken by input position).
* A batch travels as one integer tensor (token ids, first real column, ``<PST>`` column). Left
  padding puts every row's last token at the last column; position ids and a 4-D additive mask
  are computed on the device. transformers passes an already prepared 4-D mask through untouched,
  so its own mask preparation (and its device synchronisation) is skipped.
* With ``"graphs"`` (CUDA only), each shape's forward pass, TP hooks and early exit included, is
  captured once as a CUDA graph and replayed; nothing in the batch loop waits for the device.

Compiling the decoder layers (:mod:`tpsearch.compiling`) is a separate choice; on a GPU the two
together are what makes a small model fast.

Exactness: the mask hides padding keys from every query and lets a padding query see only
itself (no fully masked row, so no NaN); position ids count real tokens; so a row's embedding
matches the length-sorted path up to kernel rounding. A prepared mask bypasses sliding windows,
so the widths stop at the model's smallest sliding window; longer rows take the sorted path.
"""

from __future__ import annotations

import bisect
import itertools
import warnings
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np
import torch

from .errors import InputError
from .tp import forward_with_tp, text_config



class PackedModel(Protocol):
    """What fixed-shape batching needs of an encoder (a :class:`~tpsearch.encoder.TPEncoder`
    is one; described here so this module never imports the encoder's)."""

    model: torch.nn.Module
    layers: Sequence[torch.nn.Module]
    plan: Any
    placeholder_id: int | None
    pad_id: int

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def device(self) -> torch.device: ...

BATCHING = ("sorted", "bucketed", "graphs")


def resolve_batching(value: str | None, device: torch.device) -> str:
    """``"auto"`` (or None): ``"graphs"`` on a CUDA GPU, ``"sorted"`` elsewhere (fixed shapes
    only add padding on a CPU); otherwise ``value``, checked."""
    if value in (None, "auto"):
        return "graphs" if device.type == "cuda" else "sorted"
    if value not in BATCHING:
        raise InputError(f"unknown batching {value!r}; use auto or one of {', '.join(BATCHING)}")
    return value


#: Most shapes one encoder captures as CUDA graphs; later shapes run eagerly.
MAX_GRAPHS = 256


@dataclass(frozen=True)
class ShapedBatch:
    """One fixed-shape batch: ``indices`` (input rows) padded to ``rows`` x ``width``."""

    rows: int
    width: int
    indices: tuple[int, ...]


def width_ladder(max_width: int) -> tuple[int, ...]:
    """Padded widths up to ``max_width`` (which is always the last one)."""
    widths: list[int] = []
    w = 0
    while w < max_width:
        w += 8 if w < 128 else 16 if w < 256 else 32 if w < 512 else 64
        widths.append(min(w, max_width))
    return tuple(widths)


def sliding_window(model: torch.nn.Module) -> int | None:
    """The model's smallest sliding attention window, or None if it attends to everything."""
    config = text_config(model)
    window = getattr(config, "sliding_window", None)
    if not window:
        return None
    types = getattr(config, "layer_types", None)
    if types is not None and "sliding_attention" not in types:
        return None
    if getattr(config, "use_sliding_window", True) is False:
        return None
    return int(window)


def _pow2_floor(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


def plan_buckets(lengths: Sequence[int], batch_size: int, max_batch_tokens: int | None,
                 widths: Sequence[int]) -> tuple[list[ShapedBatch], list[int]]:
    """Fixed-shape batches for rows of ``lengths``, and the rows longer than every width.

    Widest first; within a width, longest rows first, ties by input position. A full batch has
    ``rows`` = the largest power of two within ``batch_size`` and ``max_batch_tokens // width``
    (at least 1); the last batch of a width is rounded up to a multiple of 8 rows (filler).
    """
    if batch_size < 1 or (max_batch_tokens is not None and max_batch_tokens < 1):
        raise InputError("batch_size and max_batch_tokens must be positive")
    ladder = sorted(set(int(w) for w in widths))
    groups: dict[int, list[int]] = {}
    over: list[int] = []
    for j, n in enumerate(lengths):
        k = bisect.bisect_left(ladder, n)
        if k == len(ladder):
            over.append(j)
        else:
            groups.setdefault(ladder[k], []).append(j)
    batches: list[ShapedBatch] = []
    for w in sorted(groups, reverse=True):
        idx = sorted(groups[w], key=lambda j: (-lengths[j], j))
        budget_rows = batch_size if max_batch_tokens is None else max(1, max_batch_tokens // w)
        cap = _pow2_floor(min(batch_size, budget_rows))
        for s in range(0, len(idx), cap):
            chunk = tuple(idx[s:s + cap])
            step = min(8, cap)
            batches.append(ShapedBatch(rows=-(-len(chunk) // step) * step, width=w, indices=chunk))
    return batches, over


def canonical_width(length: int, ladder: Sequence[int] | None) -> int:
    """The width a row of ``length`` tokens is padded to in the length-sorted path: the
    ladder's first width at or above it (the row itself where it is longer than every width,
    or without a ladder). A function of the row alone, so its padding never depends on the
    other rows of its batch."""
    if not ladder:
        return length
    k = bisect.bisect_left(ladder, length)
    return ladder[k] if k < len(ladder) else length


def plan_batches(lengths: Sequence[int], batch_size: int, max_batch_tokens: int | None = None,
                 ladder: Sequence[int] | None = None) -> list[list[int]]:
    """Row indices grouped into batches of rows that share one canonical width
    (:func:`canonical_width`), longest first, ties in input order.

    Every row is padded to its own canonical width, whatever batch it is in, so a row's
    embedding does not depend on its batch-mates: the forward pass computes each row as it
    would alone, wherever the CPU's matrix kernels give a row the same result whatever the
    number of rows (:func:`kernels_row_invariant`; tests/test_encoder.py checks it bit for bit
    in float32 and bfloat16). Without a ladder, batches hold rows of one exact length.

    A batch holds at most ``batch_size`` rows and, with ``max_batch_tokens``, at most that many
    computed tokens (rows x width); a row over the budget is batched alone.
    """
    if batch_size < 1 or (max_batch_tokens is not None and max_batch_tokens < 1):
        raise InputError("batch_size and max_batch_tokens must be positive")
    widths = [canonical_width(n, ladder) for n in lengths]
    order = sorted(range(len(lengths)), key=lambda j: (-lengths[j], j))
    batches: list[list[int]] = []
    for j in order:
        if batches:
            cur = batches[-1]
            width = widths[cur[0]]
            fits = max_batch_tokens is None or (len(cur) + 1) * width <= max_batch_tokens
            if widths[j] == width and len(cur) < batch_size and fits:
                cur.append(j)
                continue
        batches.append([j])
    return batches


def padding_efficiency(lengths: Sequence[int], batches: Sequence[Sequence[int]],
                       ladder: Sequence[int] | None = None) -> float:
    """Real tokens / computed tokens (each batch computes rows x its canonical width)."""
    computed = sum(len(b) * canonical_width(max(lengths[j] for j in b), ladder) for b in batches)
    return sum(lengths) / computed if computed else 1.0


def kernels_row_invariant(dtype: torch.dtype = torch.float32, device: str = "cpu") -> bool:
    """Whether this machine's matrix kernels give rows the same bits alone as among other rows
    (what batch invariance rests on): a probe of linear layers in ``dtype``, one row of the
    narrowest width (8 tokens, the fewest rows a forward pass ever has here) and one of 16,
    alone against inside batches of 8 such rows. (Fewer than 8 rows may take other kernels:
    float32 on an AVX2 EPYC differs at 5.)"""
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for rows, k, n in ((8, 64, 96), (16, 256, 512)):
            x = torch.randn(8 * rows, k, generator=g).to(device=device, dtype=dtype)
            w = torch.randn(n, k, generator=g).to(device=device, dtype=dtype)
            if not torch.equal(torch.nn.functional.linear(x, w)[:rows],
                               torch.nn.functional.linear(x[:rows], w)):
                return False
    return True


def pad_rows(rows: Sequence[Sequence[int]], width: int, pad_id: int,
             left: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Token-id rows padded to ``width`` (vectorised): (ids, mask of real tokens, each row's
    first real column, each row's length)."""
    n = len(rows)
    lens = np.fromiter((len(r) for r in rows), dtype=np.int64, count=n)
    offsets = width - lens if left else np.zeros(n, dtype=np.int64)
    total = int(lens.sum())
    row_of = np.repeat(np.arange(n), lens)
    col = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens) + np.repeat(offsets, lens)
    ids = np.full((n, width), pad_id, dtype=np.int64)
    ids[row_of, col] = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=total)
    mask = np.zeros((n, width), dtype=bool)
    mask[row_of, col] = True
    return ids, mask, offsets, lens


def padded_inputs(rows: Sequence[Sequence[int]], width: int,
                  pad_id: int) -> tuple[dict[str, torch.Tensor], np.ndarray, np.ndarray]:
    """The model inputs of token-id rows left-padded by hand to ``width``: ``input_ids``,
    ``attention_mask`` and ``position_ids`` counting real tokens only (so a row's positions do
    not depend on its padding), on the CPU; and each row's first real column and length. The
    encoder and the reranker both feed the decoder through this."""
    ids_np, mask_np, offsets, lens = pad_rows(rows, width, pad_id, left=True)
    mask = torch.from_numpy(mask_np.astype(np.int64))
    inputs = {"input_ids": torch.from_numpy(ids_np), "attention_mask": mask,
              "position_ids": (mask.cumsum(dim=1) - 1).clamp(min=0)}
    return inputs, offsets, lens


def first_position(ids: np.ndarray, mask: np.ndarray, token: int) -> np.ndarray:
    """Per row, the column of the first real ``token`` (0 where there is none)."""
    return ((ids == token) & mask).argmax(axis=1)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; to a GPU through pinned memory, without waiting for the copy."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def pack_batch(rows: Sequence[Sequence[int]], shape_rows: int, width: int, pad_id: int,
               placeholder_id: int | None) -> torch.Tensor:
    """One (shape_rows, width + 2) int64 tensor: left-padded ids, first real column, <PST> column.

    Filler rows (beyond ``len(rows)``) hold one pad token in the last column and point both
    columns there, so TP's replacement is a no-op on them.
    """
    n = len(rows)
    lens = np.fromiter((len(r) for r in rows), dtype=np.int64, count=n)
    if n > shape_rows or (n and lens.max() > width) or (n and lens.min() < 1):
        raise ValueError(f"{n} rows of up to {lens.max() if n else 0} tokens do not fit "
                         f"{shape_rows} x {width}")
    out = np.full((shape_rows, width + 2), pad_id, dtype=np.int64)
    ids, mask, starts, _ = pad_rows(rows, width, pad_id)
    out[:n, :width] = ids
    out[:n, width] = starts
    out[n:, width] = width - 1
    out[:, width + 1] = width - 1
    if placeholder_id is not None and n:
        if not ((ids == placeholder_id) & mask).any(axis=1).all():
            raise ValueError("a row lacks the <PST> token")
        out[:n, width + 1] = first_position(ids, mask, placeholder_id)
    return torch.from_numpy(out)


def device_inputs(packed: torch.Tensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Model inputs of a packed batch, computed where ``packed`` lives (no host round trip)."""
    width = packed.shape[1] - 2
    ids, start = packed[:, :width], packed[:, width]
    col = torch.arange(width, device=packed.device)
    real = col.unsqueeze(0) >= start.unsqueeze(1)  # (B, W): real (not padding) columns
    positions = (col.unsqueeze(0) - start.unsqueeze(1)).clamp(min=0)
    causal = col.unsqueeze(0) <= col.unsqueeze(1)  # (query, key): key at or before query
    allowed = (causal.unsqueeze(0) & real.unsqueeze(1)) | torch.eye(
        width, dtype=torch.bool, device=packed.device).unsqueeze(0)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=packed.device)
    mask = mask.masked_fill(~allowed, torch.finfo(dtype).min).unsqueeze(1)
    return {"input_ids": ids, "position_ids": positions, "attention_mask": mask}


def forward_packed(encoder: PackedModel, packed: torch.Tensor) -> torch.Tensor:
    """Last-token states (rows, dim) at the output layer, in the model's dtype and device.

    Pure device work: safe to capture in a CUDA graph (the early exit's exception is caught
    inside the captured region, after the kernels it needs were recorded).
    """
    width = packed.shape[1] - 2
    inputs = device_inputs(packed, encoder.dtype)
    last = torch.full((packed.shape[0],), width - 1, dtype=torch.long, device=packed.device)
    pst = packed[:, width + 1] if encoder.placeholder_id is not None else None
    hidden = forward_with_tp(encoder.model, encoder.layers, encoder.plan, pst, last, **inputs)
    return hidden[:, width - 1]


class GraphedShape:
    """One captured CUDA graph of :func:`forward_packed` at a fixed (rows, width)."""

    def __init__(self, encoder: PackedModel, rows: int, width: int, pool) -> None:
        dev = encoder.device
        filler = pack_batch([], rows, width, encoder.pad_id, None)
        self.static_in = filler.to(dev)
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):  # warm-up: lazy library init stays out of the capture
            for _ in range(2):
                forward_packed(encoder, self.static_in)
        torch.cuda.current_stream(dev).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool, capture_error_mode="thread_local"):
            self.static_out = forward_packed(encoder, self.static_in)

    def __call__(self, packed: torch.Tensor) -> torch.Tensor:
        self.static_in.copy_(packed, non_blocking=True)
        self.graph.replay()
        return self.static_out.clone()


class ShapeRunner:
    """Runs packed batches for one encoder: eagerly, or through per-shape CUDA graphs."""

    def __init__(self, encoder: PackedModel, graphs: bool) -> None:
        if graphs and encoder.device.type != "cuda":
            raise InputError("batching 'graphs' needs a CUDA device; use 'bucketed' or 'sorted'")
        self.encoder = encoder
        self.graphs = graphs
        self._captured: dict[tuple[int, int], GraphedShape] = {}
        self._pool = torch.cuda.graph_pool_handle() if graphs else None
        self.capture_failures: dict[tuple[int, int], str] = {}

    def __call__(self, packed_host: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        shape = (packed_host.shape[0], packed_host.shape[1] - 2)
        packed = to_device(packed_host, enc.device)
        graph = self._graph(shape) if self.graphs else None
        if graph is not None:
            return graph(packed)
        return forward_packed(enc, packed)

    def _graph(self, shape: tuple[int, int]) -> GraphedShape | None:
        if shape in self._captured:
            return self._captured[shape]
        if shape in self.capture_failures or len(self._captured) >= MAX_GRAPHS:
            return None
        try:
            self._captured[shape] = GraphedShape(self.encoder, shape[0], shape[1], self._pool)
        except RuntimeError as err:  # e.g. an op that synchronises: that shape runs eagerly
            self.capture_failures[shape] = f"{type(err).__name__}: {err}"
            warnings.warn(f"CUDA graph capture failed for batch shape {shape[0]}x{shape[1]}; "
                          f"it runs eagerly (same vectors, slower): {err}", RuntimeWarning)
            return None
        return self._captured[shape]

    @property
    def shapes_captured(self) -> list[tuple[int, int]]:
        return sorted(self._captured)


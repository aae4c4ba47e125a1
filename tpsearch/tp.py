"""Token Prepending and early exit, for any transformers decoder, through module hooks.

Nothing here knows a model family. The decoder's layer stack is found as the ``nn.ModuleList``
that holds ``config.num_hidden_layers`` modules; a forward pre-hook on layer ``i`` sees the
hidden states that enter it (the previous layer's output, ``output_hidden_states[i]``):

* for ``start <= i < exit`` it overwrites the row at the ``<PST>`` position with the row at the
  sentence's last real token (Token Prepending, Fu et al. 2025);
* at the output layer ``k < L`` it captures those hidden states and stops the forward pass by
  raising :class:`EarlyExit`, so layers ``k..L-1`` never run.
"""

from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from .errors import InputError
from .prompts import PLACEHOLDER
from .torchstate import TORCH_STATE


class EarlyExit(Exception):
    """Raised from a hook to end the forward pass once the output layer's input is known."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__("early exit")
        self.hidden = hidden


def text_config(model: nn.Module):
    """The config of a transformers model's text decoder (its own for text-only models)."""
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def num_layers(model: nn.Module) -> int:
    """Number of decoder layers of a transformers model (text config for multimodal ones)."""
    return int(text_config(model).num_hidden_layers)


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The outermost ``nn.ModuleList`` holding exactly ``num_hidden_layers`` modules."""
    n = num_layers(model)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n and n > 0:
            return module
    raise InputError(
        f"cannot find the decoder layer stack of {type(model).__name__}: no nn.ModuleList of "
        f"{n} layers (config.num_hidden_layers)"
    )


def resolve_output_layer(output_layer: int, n_layers: int) -> int:
    """Map an ``output_hidden_states``-style index (negative allowed) to ``0..n_layers``."""
    k = output_layer if output_layer >= 0 else n_layers + 1 + output_layer
    if not 0 <= k <= n_layers:
        raise InputError(
            f"output layer {output_layer} is out of range for a model of {n_layers} layers "
            f"(valid: {-(n_layers + 1)}..{n_layers}, like output_hidden_states)"
        )
    return k


def validate_tp_layers(tp_layers: tuple[int, int], n_layers: int, output_index: int) -> None:
    """Refuse a TP range that is empty, outside the model, or that cannot reach the output."""
    start, stop = tp_layers
    if not 0 <= start < stop <= n_layers:
        raise InputError(
            f"TP layers {start}:{stop} are out of range for a model of {n_layers} layers "
            f"(need 0 <= start < exit <= {n_layers})"
        )
    if start >= output_index:
        raise InputError(
            f"TP layers {start}:{stop} start at or after the output layer (hidden state "
            f"{output_index}): Token Prepending would not change the embedding"
        )


@dataclass
class ForwardPlan:
    """Where TP acts and where the forward pass stops, for one model."""

    n_layers: int
    output_index: int  # 0..n_layers; n_layers means the final (normed) output
    tp_layers: tuple[int, int] | None

    def replaces_before(self, layer: int) -> bool:
        return self.tp_layers is not None and self.tp_layers[0] <= layer < self.tp_layers[1]


@dataclass
class BlockSlots:
    """Block summary slots beside TP's own (Hierarchical Token Prepending, arXiv 2511.14868):
    flat over the batch, slot ``k`` is position ``dst[k]`` of row ``rows[k]`` and takes the
    hidden state at ``src[k]`` (its block's last token) before each layer of the TP range."""

    rows: torch.Tensor
    dst: torch.Tensor
    src: torch.Tensor


def _split_hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _join_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden,) + tuple(args[1:]), kwargs
    kwargs = dict(kwargs)
    kwargs["hidden_states"] = hidden
    return args, kwargs


@contextmanager
def token_prepending(
    layers: nn.ModuleList,
    plan: ForwardPlan,
    pst_index: torch.Tensor | None,
    last_index: torch.Tensor,
    record: dict[int, torch.Tensor] | None = None,
    blocks: BlockSlots | None = None,
) -> Iterator[None]:
    """Arm the hooks for one forward pass over a batch.

    ``pst_index`` and ``last_index`` give, per row, the position of ``<PST>`` and of the last
    real token. The replacement is out of place, so tensors the model keeps are not mutated.
    ``record``, if given, names extra hidden-state indices (below the output layer) whose
    last-token rows are stored into it during the pass (for layer sweeps). ``blocks``, if
    given, adds block summary slots that the same layers fill from their blocks' last tokens.
    """
    last_rows = torch.arange(last_index.shape[0], device=last_index.device)
    rows, dst, src = last_rows, pst_index, last_index  # (row, slot, source) of each copy
    if blocks is not None and pst_index is not None:
        rows, dst, src = (torch.cat([rows, blocks.rows]), torch.cat([pst_index, blocks.dst]),
                          torch.cat([last_index, blocks.src]))
    handles = []

    def make_hook(i: int):
        replace = plan.replaces_before(i)
        capture = i == plan.output_index
        keep = record is not None and i in record

        def hook(module, args, kwargs):
            hidden = _split_hidden(args, kwargs)
            if replace:
                hidden = hidden.index_put((rows, dst), hidden[rows, src])
            if keep:
                record[i] = hidden[last_rows, last_index]
            if capture:
                raise EarlyExit(hidden)
            return _join_hidden(args, kwargs, hidden) if replace else None

        return hook

    if plan.tp_layers is not None and pst_index is None:
        raise ValueError("Token Prepending needs the <PST> position of every row")
    try:
        for i, layer in enumerate(layers):
            if plan.replaces_before(i) or i == plan.output_index or (record and i in record):
                handles.append(layer.register_forward_pre_hook(make_hook(i), with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


def forward_with_tp(model: nn.Module, layers: nn.ModuleList, plan: ForwardPlan,
                    pst_index: torch.Tensor | None, last_index: torch.Tensor,
                    record: dict[int, torch.Tensor] | None = None,
                    blocks: BlockSlots | None = None, **inputs) -> torch.Tensor:
    """One forward pass with the hooks armed (:func:`token_prepending`): the hidden states at
    the plan's output layer, every position (the pass stops there; later layers never run).
    The one place a forward pass of the encoder runs, for every batching path."""
    with token_prepending(layers, plan, pst_index, last_index, record, blocks):
        try:
            out = model(**inputs, use_cache=False)
            hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
            if plan.output_index != plan.n_layers:
                raise RuntimeError("the output layer's hook did not fire")
        except EarlyExit as stop:
            hidden = stop.hidden
    return hidden


# ------------------------------------------------------------------ model helpers
def output_head(model: nn.Module, keep: bool = True) -> torch.Tensor:
    """The decoder's unembedding matrix (vocab x dim): its output head, the input embeddings
    where the two are tied, or, for an untied model loaded as a bare decoder, the head read
    from its checkpoint (kept in memory after the first read unless ``keep`` is False). A
    bare decoder saved without its head and with untied embeddings cannot score tokens."""
    stored = getattr(model, "_tpsearch_output_head", None)
    if stored is not None:
        return stored.load(keep)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        return head.weight
    if getattr(text_config(model), "tie_word_embeddings", False):
        return model.get_input_embeddings().weight
    raise InputError(f"{type(model).__name__} was loaded without its output head and its "
                     "embeddings are not tied: it cannot score a query's tokens for reranking")


_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.Lock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


@contextmanager
def model_lock(model: nn.Module) -> Iterator[None]:
    """Held around every forward pass of ``model``: serialises passes of the same model (TP and
    early exit arm hooks on the model itself, so two threads or two encoders sharing it must
    not run it at once; on a CPU a pass already uses every core, so this costs no throughput),
    and shares :data:`~tpsearch.torchstate.TORCH_STATE` so no model loads meanwhile."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.Lock()
    with TORCH_STATE.shared(), lock:
        yield


def _pad_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def add_placeholder_token(model: nn.Module, tokenizer, seed: int = 0, init: str = "randn") -> int:
    """Add ``<PST>`` to the tokenizer and give it an embedding row; return its id.

    ``randn`` (the paper's choice) draws the row from a standard normal with a fixed seed;
    ``mean`` uses the mean of the existing rows. (The row's scale hardly matters: the first
    layer's RMSNorm/LayerNorm removes it; its direction does.) The embedding matrix only grows when the
    token's id is beyond it (some models carry spare rows).
    """
    if PLACEHOLDER not in tokenizer.get_vocab():
        tokenizer.add_tokens([PLACEHOLDER])
    pst = int(tokenizer.convert_tokens_to_ids(PLACEHOLDER))
    emb = model.get_input_embeddings()
    rows = emb.weight.shape[0]
    if pst >= rows:
        model.resize_token_embeddings(pst + 1, mean_resizing=False)
        emb = model.get_input_embeddings()
    weight = emb.weight
    with torch.no_grad():
        if init == "randn":
            gen = torch.Generator().manual_seed(seed)
            row = torch.randn(weight.shape[1], generator=gen)
        elif init == "mean":
            row = weight[: min(rows, pst)].float().mean(dim=0).cpu()
        else:
            raise InputError(f"unknown placeholder init {init!r}; use 'randn' or 'mean'")
        weight[pst] = row.to(weight.dtype).to(weight.device)
    return pst

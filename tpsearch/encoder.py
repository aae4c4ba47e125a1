"""TPEncoder: prompt-based sentence embeddings from a decoder LLM, with Token Prepending.

Usage::

    from tpsearch import TPEncoder
    enc = TPEncoder.from_pretrained("gemma-3-270m")       # bundled default, works offline
    X = enc.encode(["A man plays a guitar.", "..."])      # float32, L2-normalised rows

The embedding of a text is the hidden state of the prompt's last token at the output layer.
Inputs are padded by hand with position ids that skip the padding, so a text's embedding does
not depend on its batch-mates or on the padding side (up to fp32 rounding).
"""

from __future__ import annotations

import os
from dataclasses import fields, replace
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .devices import resolve_device, resolve_dtype, resolve_quantize
from .loading import DEFAULT_MODEL, ModelSource, load_model, resolve_source
from .errors import InputError
from .torchstate import TORCH_STATE
from .presets import fallback_preset, find_preset
from .prompts import PLACEHOLDER, PromptSpec, resolve_prompt
from .tokenizing import PromptTokenizer, Tokenized
from .settings import (AUTO, EncoderOptions, EncoderSettings, option_defaults, parse_tp_layers,
                       shared_fields)
from .compiling import compile_decoder_layers, is_compiled, resolve_compile
from .shapes import (BATCHING, ShapeRunner, canonical_width, first_position, pack_batch,
                     padded_inputs, plan_batches, plan_buckets, resolve_batching, sliding_window,
                     to_device, width_ladder)
from .int8 import is_quantized, quantize_int8
from .tp import (
    ForwardPlan,
    _pad_id,
    add_placeholder_token,
    find_decoder_layers,
    model_lock,
    num_layers,
    forward_with_tp,
    resolve_output_layer,
    validate_tp_layers,
)

_DEFAULTS = option_defaults()


class TPEncoder:
    """Sentence encoder over a transformers decoder, with optional Token Prepending."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        prompt: str = "prompteol",
        tp_layers: tuple[int, int] | None = (1, 7),
        output_layer: int = -2,
        max_length: int = _DEFAULTS["max_length"],
        normalize_sentences: bool = True,
        placeholder_seed: int = 0,
        placeholder_init: str = "randn",
        model_name: str = "custom",
        source: ModelSource | None = None,
        pooling: str = "last",
        quantize: str | None = None,
    ):
        if quantize not in (None, "int8"):
            raise InputError(f"unknown quantisation {quantize!r}; use 'int8' or none")
        if quantize and not is_quantized(model):
            raise InputError("quantize='int8' describes a model quantised by quantize_int8() "
                             "(TPEncoder.from_pretrained(..., quantize='int8') does it)")
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self.layers = find_decoder_layers(model)
        n = num_layers(model)
        output_index = resolve_output_layer(output_layer, n)
        if tp_layers is not None:
            tp_layers = (int(tp_layers[0]), int(tp_layers[1]))
            validate_tp_layers(tp_layers, n, output_index)
        self.plan = ForwardPlan(n_layers=n, output_index=output_index, tp_layers=tp_layers)
        self.prompt: PromptSpec = resolve_prompt(prompt, tp=tp_layers is not None,
                                                 normalize=normalize_sentences)
        self.placeholder_id: int | None = None
        if tp_layers is not None:
            self.placeholder_id = add_placeholder_token(
                model, tokenizer, seed=placeholder_seed, init=placeholder_init
            )
        if pooling not in ("last", "mean"):
            raise InputError(f"unknown pooling {pooling!r}; use 'last' or 'mean'")
        self.pooling = pooling
        if max_length < 8:
            raise InputError(f"max_length must be at least 8 tokens, got {max_length}")
        self.settings = EncoderSettings(
            model=model_name,
            prompt=prompt,
            templates=self.prompt.templates,
            tp_layers=tp_layers,
            output_layer=output_layer,
            n_layers=n,
            max_length=max_length,
            normalize_sentences=normalize_sentences,
            placeholder_seed=placeholder_seed,
            placeholder_init=placeholder_init,
            pooling=pooling,
            quantize=quantize,
            dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
        )
        self.prompter = PromptTokenizer(tokenizer, self.prompt, max_length, self.placeholder_id,
                                        pooling)
        self.pad_id = _pad_id(tokenizer)
        #: Widths rows are padded to in the length-sorted path (see shapes.plan_batches).
        self.row_ladder = width_ladder(max_length)
        self._runner = None
        self.batching = "sorted"
        #: The model's preset (what unset options were taken from), where it was looked up.
        self.preset = find_preset(model_name)

    @property
    def batching(self) -> str:
        """How batches are shaped: ``"sorted"`` (length-sorted, exact widths; the default),
        ``"bucketed"`` (a few fixed shapes, masks built on the device) or ``"graphs"`` (bucketed
        and replayed as CUDA graphs; CUDA only). The embeddings are the same up to rounding;
        see :mod:`tpsearch.shapes`."""
        return self._batching

    @batching.setter
    def batching(self, value: str) -> None:
        if value not in BATCHING:
            raise InputError(f"unknown batching {value!r}; use one of {', '.join(BATCHING)}")
        self._runner = None if value == "sorted" else ShapeRunner(self, graphs=value == "graphs")
        self._batching = value

    @property
    def shape_runner(self) -> ShapeRunner | None:
        """What runs fixed-shape batches (its captured CUDA graph shapes and any capture
        failures), or None with ``batching="sorted"``."""
        return self._runner

    @property
    def compiled(self) -> bool:
        """Whether the model's decoder layers run compiled (see :mod:`tpsearch.compiling`)."""
        return is_compiled(self.model)

    def compile_layers(self) -> "TPEncoder":
        """Compile the decoder layers with torch.compile, in place on the shared model (every
        encoder over it, variants included, then runs them compiled); same vectors up to
        rounding. The first batches of each new shape pay the compilation."""
        compile_decoder_layers(self.model)
        return self

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, model: str | os.PathLike = DEFAULT_MODEL, **options: Any) -> "TPEncoder":
        """Load ``model`` (bundled name, GGUF file, directory or hub id; a path may be a
        ``Path``) and set up TP.

        ``options`` are the fields of :class:`~tpsearch.settings.EncoderOptions` (their
        defaults are the CLI's): ``prompt``, ``tp_layers`` (``None``: vanilla embeddings, the
        same prompt without a placeholder; ``"auto"``: the model's preset), ``output_layer``,
        ``placeholder_init``, ``pooling``, ``max_length``, ``device``, ``dtype``,
        ``quantize``, ``batching``, ``compile_layers``, ``trust_remote_code``, ... A model
        without a preset gets TP 1..min(7, L-1) and output layer -2.
        """
        known = {f.name for f in fields(EncoderOptions)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown encoder option(s) {', '.join(unknown)}; known: "
                            f"{', '.join(sorted(known))}")
        return cls.load(EncoderOptions(model=os.fspath(model), **options))

    @classmethod
    def load(cls, options: EncoderOptions, source: ModelSource | None = None,
             documents: int | None = None, show_progress: bool = False) -> "TPEncoder":
        """An encoder as ``options`` describe it (``source``: the model, already resolved).
        ``documents``: how many a build will encode (``compile_layers="auto"`` compiles a
        large CPU build in bfloat16; see :func:`~tpsearch.compiling.resolve_compile`).
        Loads are exclusive of every forward pass in the process (:mod:`tpsearch.torchstate`).
        ``show_progress``: transformers' bars while it unpacks and loads the weights."""
        with TORCH_STATE.exclusive():
            return cls._load(options, source, documents, show_progress)

    @classmethod
    def _load(cls, options: EncoderOptions, source: ModelSource | None,
              documents: int | None, show_progress: bool) -> "TPEncoder":
        o = options.encoder_options()
        source = source or resolve_source(o.model)
        dev = resolve_device(o.device)
        named_preset = find_preset(source.spec) or find_preset(source.path)
        quantize = resolve_quantize(o.quantize, o.dtype, dev,
                                    bool(named_preset and named_preset.int8))
        net, tokenizer = load_model(source, dev, resolve_dtype(o.dtype, dev),
                                    o.attn_implementation, trust_remote_code=o.trust_remote_code,
                                    show_progress=show_progress)
        preset = named_preset or fallback_preset(num_layers(net))
        if quantize:
            quantize_int8(net, tokenizer)
        tp_layers = parse_tp_layers(o.tp_layers)
        encoder = cls(
            net,
            tokenizer,
            prompt=o.prompt or preset.prompt,
            tp_layers=preset.tp_layers if tp_layers == AUTO else tp_layers,
            output_layer=preset.output_layer if o.output_layer is None else o.output_layer,
            max_length=o.max_length,
            normalize_sentences=o.normalize_sentences,
            placeholder_seed=o.placeholder_seed,
            placeholder_init=o.placeholder_init or preset.placeholder_init,
            model_name=source.spec,
            source=source,
            pooling=o.pooling,
            quantize=quantize,
        )
        encoder.preset = preset
        encoder.batching = resolve_batching(o.batching, dev)
        if resolve_compile(o.compile_layers, dev, bool(quantize), encoder.dtype, documents):
            encoder.compile_layers()
        return encoder

    @classmethod
    def from_settings(cls, settings: EncoderSettings, model: nn.Module, tokenizer,
                      source: ModelSource | None = None) -> "TPEncoder":
        """An encoder with exactly ``settings`` on a loaded model and tokenizer (every shared
        field, :func:`~tpsearch.settings.shared_fields`, but the model's name and its dtype,
        which are the loaded model's)."""
        values = {name: getattr(settings, name) for name in shared_fields()
                  if name not in ("model", "dtype")}
        return cls(model, tokenizer, model_name=settings.model, source=source, **values)

    def variant(self, **changes) -> "TPEncoder":
        """Another encoder on the same loaded model and tokenizer, with some settings changed
        (``prompt``, ``tp_layers``, ``output_layer``, ``pooling``, ...); same ``batching``."""
        other = TPEncoder.from_settings(replace(self.settings, **changes), self.model,
                                        self.tokenizer, self.source)
        other.batching = self.batching
        return other

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def dim(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1])

    @property
    def placeholder_row(self) -> int | None:
        """The model's ``<PST>`` row, whether or not this encoder's prompt uses it (a vanilla
        :meth:`variant` of a TP encoder shares its model): statistics of the model's own
        vocabulary (EmbedFilter) leave it out."""
        if self.placeholder_id is not None:
            return self.placeholder_id
        return self.tokenizer.get_added_vocab().get(PLACEHOLDER)

    @property
    def tp_enabled(self) -> bool:
        return self.plan.tp_layers is not None

    # ------------------------------------------------------------------ tokenisation
    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text on its own (no prompt, no special tokens)."""
        return self.prompter.count_tokens(texts)

    @property
    def prompt_tokens(self) -> int:
        """Tokens the prompt adds around a text (the longest template, special tokens included)."""
        return self.prompter.prompt_tokens

    def tokenize(self, texts: Sequence[str]) -> Tokenized:
        """Prompt, normalise and tokenise ``texts``; over-long sentences are cut to fit."""
        return self.prompter.tokenize(texts)

    # ------------------------------------------------------------------ forward
    def _batch_tensors(self, rows: Sequence[Sequence[int]],
                       spans: Sequence[tuple[int, int]] | None = None) -> dict[str, torch.Tensor]:
        """Pad rows by hand (vectorised) on the left to the batch's canonical width (the same
        for every row of a planned batch); position ids count real tokens only."""
        width = canonical_width(max(len(r) for r in rows), self.row_ladder)
        inputs, offsets, lens = padded_inputs(rows, width, self.pad_id)
        last = torch.from_numpy(offsets + lens - 1)
        pst = torch.zeros(len(rows), dtype=torch.long)
        if self.placeholder_id is not None:
            pst = torch.from_numpy(first_position(inputs["input_ids"].numpy(),
                                                  inputs["attention_mask"].numpy().astype(bool),
                                                  self.placeholder_id))
        pool = None
        if spans is not None:
            pool = torch.zeros((len(rows), width), dtype=torch.float32)
            for b, (start, end) in enumerate(spans):
                off = int(offsets[b])
                pool[b, off + start:off + end] = 1.0 / (end - start)
        out = {**inputs, "last": last, "pst": pst}
        if pool is not None:
            out["pool"] = pool
        return {k: to_device(v, self.device) for k, v in out.items()}

    def forward_rows(
        self, rows: Sequence[Sequence[int]], also_layers: Sequence[int] = (),
        spans: Sequence[tuple[int, int]] | None = None,
    ) -> torch.Tensor:
        """Embeddings (float32, on CPU, not normalised) of one batch of token-id rows.

        With ``also_layers`` (hidden-state indices below the output layer), returns a tensor of
        shape (len(also_layers) + 1, batch, dim): those layers' last-token states, then the
        output layer's.
        """
        return self._forward(rows, also_layers, spans).float().cpu()

    @torch.inference_mode()
    def _forward(self, rows, also_layers=(), spans=None) -> torch.Tensor:
        """As forward_rows, but the result stays on the model's device in its dtype."""
        if self.pooling == "mean" and also_layers:
            raise ValueError("also_layers works with last-token pooling only")
        if self.pooling == "mean" and spans is None:
            raise ValueError("mean pooling needs the sentence spans (use tokenize())")
        t = self._batch_tensors(rows, spans if self.pooling == "mean" else None)
        pst = t["pst"] if self.placeholder_id is not None else None
        record = {i: None for i in also_layers}
        if any(not 0 <= i < self.plan.output_index for i in record):
            raise ValueError(f"also_layers must lie in 0..{self.plan.output_index - 1}")
        with model_lock(self.model):
            hidden = forward_with_tp(self.model, self.layers, self.plan, pst, t["last"],
                                     record or None, input_ids=t["input_ids"],
                                     attention_mask=t["attention_mask"],
                                     position_ids=t["position_ids"])
        if "pool" in t:  # mean over the sentence's own tokens
            final = torch.einsum("bt,btd->bd", t["pool"].to(hidden.dtype), hidden)
        else:
            rows_idx = torch.arange(hidden.shape[0], device=hidden.device)
            final = hidden[rows_idx, t["last"]]
        if not record:
            return final
        return torch.stack([record[i] for i in also_layers] + [final])

    def _encode_stack(
        self,
        tokenized: Tokenized,
        batch_size: int,
        show_progress: bool,
        also_layers: Sequence[int] = (),
        max_batch_tokens: int | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """(len(also_layers) + 1, num_texts, dim) float32, templates averaged, input order.
        ``on_batch(rows)`` is called after each forward pass (for progress bars)."""
        rows = tokenized.input_ids
        out = torch.empty((len(also_layers) + 1, len(rows), self.dim), dtype=torch.float32)
        bar = None
        if show_progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(rows), desc="encoding", unit="prompt")
        # Results stay on the device until the end: no host sync per batch, so on a GPU the
        # next batch's (pinned, non-blocking) upload overlaps the current batch's compute.
        pending: list[tuple[list[int], torch.Tensor]] = []
        for batch, got in self.forward_batches(tokenized, batch_size, max_batch_tokens, also_layers):
            pending.append((batch, got if also_layers else got.unsqueeze(0)))
            if bar is not None:
                bar.update(len(batch))
            if on_batch is not None:
                on_batch(len(batch))
        for batch, got in pending:
            out[:, batch] = got.float().cpu()
        if bar is not None:
            bar.close()
        if tokenized.n_templates > 1:
            out = out.view(out.shape[0], -1, tokenized.n_templates, out.shape[2]).mean(dim=2)
        return out

    def forward_batches(self, tokenized: Tokenized, batch_size: int, max_batch_tokens: int | None,
                 also_layers: Sequence[int]) -> Iterator[tuple[list[int], torch.Tensor]]:
        """(row indices, their states on the device) per forward pass, as ``batching`` says.
        Fixed shapes serve last-token pooling of the output layer alone; rows longer than the
        model's sliding window, mean pooling and extra layers take the sorted path."""
        rows, spans = tokenized.input_ids, tokenized.spans
        lengths = [len(r) for r in rows]
        todo = list(range(len(rows)))
        if self._runner is not None and self.pooling == "last" and not also_layers:
            batches, todo = plan_buckets(lengths, batch_size, max_batch_tokens, self.fixed_widths())
            for b in batches:
                packed = pack_batch([rows[j] for j in b.indices], b.rows, b.width, self.pad_id,
                                    self.placeholder_id)
                with torch.inference_mode(), model_lock(self.model):
                    got = self._runner(packed)
                yield list(b.indices), got[: len(b.indices)]
        for batch in plan_batches([lengths[j] for j in todo], batch_size, max_batch_tokens,
                                  self.row_ladder):
            batch = [todo[j] for j in batch]
            yield batch, self._forward([rows[j] for j in batch], also_layers,
                                       [spans[j] for j in batch] if spans is not None else None)

    def fixed_widths(self) -> tuple[int, ...]:
        """The padded widths fixed-shape batches use: the ladder up to ``max_length``, stopping
        at the model's smallest sliding window."""
        window = sliding_window(self.model)
        limit = self.settings.max_length if window is None else min(window, self.settings.max_length)
        return width_ladder(limit)

    def encode_tokenized(
        self,
        tokenized: Tokenized,
        batch_size: int = 32,
        normalize: bool = True,
        show_progress: bool = False,
        max_batch_tokens: int | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Embed pre-tokenised texts, length-sorted into batches, returned in input order."""
        out = self._encode_stack(tokenized, batch_size, show_progress,
                                 max_batch_tokens=max_batch_tokens, on_batch=on_batch)[0]
        if normalize:
            out = torch.nn.functional.normalize(out, dim=1)
        return out.numpy()

    def encode_layers(
        self, texts: Sequence[str], layers: Sequence[int], batch_size: int = 32
    ) -> dict[int, np.ndarray]:
        """Unnormalised embeddings at several hidden-state indices (each below the output
        layer) and at the output layer itself, from one forward pass per batch."""
        out_idx = self.plan.output_index
        extra = [k for k in layers if k != out_idx]
        stack = self._encode_stack(self.tokenize(list(texts)), batch_size, False, extra)
        result = {k: stack[i].numpy() for i, k in enumerate(extra)}
        result[out_idx] = stack[-1].numpy()
        return result

    def encode(
        self,
        texts: str | Sequence[str],
        batch_size: int = 32,
        normalize: bool = True,
        show_progress: bool = False,
        max_batch_tokens: int | None = None,
    ) -> np.ndarray:
        """Embed texts: a float32 array of shape (len(texts), dim), in input order.

        Texts are sorted by token length and cut into batches of at most ``batch_size`` texts
        and, if given, at most ``max_batch_tokens`` computed tokens (rows x longest row); a
        text longer than the token budget gets a batch of its own.
        """
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        if batch_size < 1:
            raise InputError(f"batch_size must be positive, got {batch_size}")
        vecs = self.encode_tokenized(self.tokenize(items), batch_size, normalize, show_progress,
                                     max_batch_tokens)
        return vecs[0] if single else vecs


#: Model helpers live in :mod:`tpsearch.tp` (re-exported: tpsearch 0.4 kept them here).
__all__ = ["TPEncoder", "EncoderSettings", "quantize_int8", "is_quantized", "model_lock",
           "add_placeholder_token", "plan_batches"]

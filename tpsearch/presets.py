"""Per-model default settings: the paper's, and the ones measured for the bundled models.

The paper's settings come from the official repository's ``config.yaml``. The default model's
setting was chosen by a sweep on STS-B dev only (``benchmarks/sweep_sts_dev.py``; table in
``docs/default-model-sweep.md``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """Settings used when the caller does not give them."""

    prompt: str
    tp_layers: tuple[int, int] | None
    output_layer: int
    source: str
    placeholder_init: str = "randn"
    #: The prompt queries get in a retrieval index (None: the documents' prompt).
    query_prompt: str | None = None
    #: int8 (tpsearch.int8) measured to keep this model's quality on the dev sets, so that
    #: ``quantize="auto"`` may take it on CPUs where int8 pays.
    int8: bool = False


# Matched against the lower-cased model spec (path, hub id or bundled name), first match wins.
PRESETS: list[tuple[tuple[str, ...], Preset]] = [
    (("llama-2-7b",), Preset("prompteol", (1, 7), 27, "paper: official config.yaml")),
    (("llama-3-8b", "meta-llama-3-8b"), Preset("pcot", (1, 3), -2, "paper: official config.yaml")),
    (("qwen2-7b",), Preset("pcot", (1, 6), -2, "paper: official config.yaml")),
    (("gemma-2-9b", "gemma2-9b"), Preset("pcot", (1, 6), -2, "paper: official config.yaml")),
    (("gemma-3-270m", "gemma3-270m"),
     Preset("prompteol", (1, 5), -1, "STS-B dev sweep (docs/default-model-sweep.md); query "
            "prompt: scifact-dev + pydoc-dev probe (README)", "mean", query_prompt="question",
            int8=True)),  # int8 >= float32 on scifact-dev, pydoc-dev, STS (docs/throughput.md)
    (("smollm2-135m",), Preset("prompteol", (1, 3), -2, "STS-B dev probe")),
    (("qwen2.5-coder-0.5b",), Preset("prompteol", (1, 7), -2, "STS-B dev probe; query prompt: "
                                     "pydoc-dev probe", query_prompt="question")),
    (("qwen2.5-coder-1.5b",), Preset("prompteol", (1, 7), -2, "not tuned on a dev set: the "
                                     "0.5B's setting (README, 'Larger bundled models')",
                                     query_prompt="question")),
]


def find_preset(spec: str) -> Preset | None:
    """The preset whose name pattern occurs in ``spec``, if any."""
    key = spec.lower().replace("_", "-")
    for patterns, preset in PRESETS:
        if any(p in key for p in patterns):
            return preset
    return None


def fallback_preset(n_layers: int) -> Preset:
    """For a model without a preset: PromptEOL, TP 1..min(7, L-1), output layer -2."""
    stop = max(2, min(7, n_layers - 1))
    return Preset("prompteol", (1, stop), -2, "generic default")

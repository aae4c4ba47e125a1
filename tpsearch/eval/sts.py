"""STS evaluation over SentEval's data layout: Spearman x 100 of cosine similarity.

Accepted layout under ``data_dir`` (either directly or under ``STS/`` and ``SICK/`` as in
SentEval's ``data/downstream``):

* ``STS12-en-test`` .. ``STS16-en-test``: ``STS.input.X.txt`` (two tab-separated sentences a
  line) with ``STS.gs.X.txt`` (gold score a line; pairs without one are skipped). The task
  score is Spearman over the concatenation of all subsets (SentEval's ``all``).
* ``STSBenchmark/sts-dev.csv`` and ``sts-test.csv``: tab-separated, score in column 5,
  sentences in columns 6 and 7. ``STSBenchmark`` is the test split, ``STSBenchmark-dev`` dev.
* ``SICK/SICK_test_annotated.txt``: tab-separated with a header (``SICKRelatedness``).

Sentences are whitespace-tokenised and re-joined, as SentEval hands them to its batcher.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy.stats import spearmanr

from ..errors import InputError

STS_TASKS = ["STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark", "SICKRelatedness"]
ALL_TASKS = STS_TASKS + ["STSBenchmark-dev"]


@dataclass
class StsPairs:
    """Sentence pairs with gold scores."""

    name: str
    left: list[str]
    right: list[str]
    gold: np.ndarray

    def __len__(self) -> int:
        return len(self.gold)


def _clean(s: str) -> str:
    return " ".join(s.split())


def _find(data_dir: Path, *candidates: str) -> Path | None:
    for rel in candidates:
        p = data_dir / rel
        if p.exists():
            return p
    return None


def _read_semeval(folder: Path, name: str) -> StsPairs:
    left, right, gold = [], [], []
    inputs = sorted(folder.glob("STS.input.*.txt"))
    if not inputs:
        raise InputError(f"{folder}: no STS.input.*.txt files")
    for inp in inputs:
        gs = folder / inp.name.replace("STS.input.", "STS.gs.")
        if not gs.is_file():
            raise InputError(f"{gs}: gold scores missing for {inp.name}")
        pairs = inp.read_text(encoding="utf8").splitlines()
        scores = gs.read_text(encoding="utf8").splitlines()
        if len(pairs) != len(scores):
            raise InputError(f"{inp}: {len(pairs)} pairs but {len(scores)} gold lines in {gs.name}")
        for lineno, (pair, score) in enumerate(zip(pairs, scores), start=1):
            if not score.strip():
                continue
            cols = pair.split("\t")
            if len(cols) < 2:
                raise InputError(f"{inp}:{lineno}: expected two tab-separated sentences")
            left.append(_clean(cols[0]))
            right.append(_clean(cols[1]))
            gold.append(float(score))
    return StsPairs(name, left, right, np.asarray(gold))


def _read_tsv(path: Path, name: str, cols: tuple[int, int, int], header: bool, what: str) -> StsPairs:
    """Tab-separated pairs: ``cols`` = (sentence 1, sentence 2, score) column numbers."""
    left, right, gold = [], [], []
    lines = path.read_text(encoding="utf8").splitlines()
    first = 2 if header else 1
    for lineno, line in enumerate(lines[first - 1:], start=first):
        fields = line.strip().split("\t")
        if len(fields) <= max(cols):
            raise InputError(f"{path}:{lineno}: expected {what}")
        left.append(_clean(fields[cols[0]]))
        right.append(_clean(fields[cols[1]]))
        gold.append(float(fields[cols[2]]))
    return StsPairs(name, left, right, np.asarray(gold))


def load_task(data_dir: str | Path, task: str) -> StsPairs | None:
    """Read one task's pairs; None when its files are absent."""
    d = Path(data_dir)
    if task in ("STS12", "STS13", "STS14", "STS15", "STS16"):
        folder = _find(d, f"{task}-en-test", f"STS/{task}-en-test")
        return _read_semeval(folder, task) if folder else None
    if task in ("STSBenchmark", "STSBenchmark-dev"):
        split = "sts-test.csv" if task == "STSBenchmark" else "sts-dev.csv"
        path = _find(d, f"STSBenchmark/{split}", f"STS/STSBenchmark/{split}")
        return _read_tsv(path, task, (5, 6, 4), False,
                         "at least 7 tab-separated columns") if path else None
    if task == "SICKRelatedness":
        path = _find(d, "SICK/SICK_test_annotated.txt", "SICK_test_annotated.txt")
        return _read_tsv(path, task, (1, 2, 3), True,
                         "pair_ID, sentence_A, sentence_B, score") if path else None
    raise InputError(f"unknown STS task {task!r}; known: {', '.join(ALL_TASKS)}")


def spearman_x100(pairs: StsPairs, vectors: dict[str, np.ndarray]) -> float:
    """Spearman x 100 between gold scores and cosine similarities of the pairs."""
    a = np.stack([vectors[s] for s in pairs.left])
    b = np.stack([vectors[s] for s in pairs.right])
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(spearmanr((a * b).sum(axis=1), pairs.gold).correlation * 100)


def unique_sentences(tasks: Sequence[StsPairs]) -> list[str]:
    """Each distinct sentence once, in first-seen order (each is encoded once)."""
    seen: dict[str, None] = {}
    for t in tasks:
        for s in (*t.left, *t.right):
            seen.setdefault(s, None)
    return list(seen)


def evaluate(
    embed: Callable[[list[str]], np.ndarray],
    data_dir: str | Path,
    tasks: Sequence[str] = STS_TASKS,
) -> dict:
    """Score ``embed`` (texts -> vectors) on ``tasks``.

    Returns ``{"tasks": {name: score}, "missing": [names], "avg": mean of present tasks,
    "pairs": {name: count}}``.
    """
    loaded = {t: load_task(data_dir, t) for t in tasks}
    present = [p for p in loaded.values() if p is not None]
    sentences = unique_sentences(present)
    vectors = dict(zip(sentences, embed(sentences))) if sentences else {}
    scores = {p.name: spearman_x100(p, vectors) for p in present}
    return {
        "tasks": scores,
        "missing": [t for t, p in loaded.items() if p is None],
        "avg": float(np.mean(list(scores.values()))) if scores else None,
        "pairs": {p.name: len(p) for p in present},
    }


def evaluate_fitted(embed: Callable[[list[str]], np.ndarray], data_dir: str | Path,
                    tasks: Sequence[str], fit_file: str | Path, kind: str = "center",
                    dim: int = 256, embed_filter: tuple[int, int] | None = None,
                    unembedding=None, whiten_power: float = 0.0) -> dict:
    """``evaluate`` after a transform fitted on the unlabeled sentences of ``fit_file`` (one a
    line; none of them should be test sentences). Adds ``transform`` and ``fit_sentences``."""
    from ..transform import TransformSettings, fit_transform, read_example_queries

    fit = read_example_queries(str(fit_file))
    fitted = fit_transform(embed(fit), None, TransformSettings(
        kind, dim, None, embed_filter, whiten_power=whiten_power), unembedding)
    result = evaluate(lambda s: fitted.apply(embed(s)), data_dir, tasks)
    label = fitted.kind + (f" to {fitted.out_dim} dims" if fitted.kind == "whiten" else "")
    if fitted.filtered:
        label += f" + embed filter {embed_filter[0]}:{embed_filter[1]}"
    if fitted.whiten_power:
        label += f" + partial whitening {fitted.whiten_power:g}"
    return {**result, "transform": label, "fit_sentences": len(fit), "note": fitted.note}


def format_table(result: dict, tasks: Sequence[str]) -> str:
    """A paper-style table: one column per task, then Avg. Missing tasks show as '-'."""
    names = list(tasks) + ["Avg."]
    cells = [f"{result['tasks'][t]:.2f}" if t in result["tasks"] else "-" for t in tasks]
    cells.append(f"{result['avg']:.2f}" if result["avg"] is not None else "-")
    widths = [max(len(n), len(c)) for n, c in zip(names, cells)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    head = "|" + "|".join(f" {n:^{w}} " for n, w in zip(names, widths)) + "|"
    row = "|" + "|".join(f" {c:^{w}} " for c, w in zip(cells, widths)) + "|"
    return "\n".join([line, head, line, row, line])

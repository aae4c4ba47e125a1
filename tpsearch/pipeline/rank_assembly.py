"""Assembly on every rank: a sharded build's ranks each turn their shards into one segment of
the version, in parallel, instead of rank 0 assembling everything.

1. Rank 0 fits the transform once, on a sample of every rank's shards (they lie in the shared
   work directory), and writes it there as a kept transform (a FAISS index holding the chain,
   the query shift, its description); an incremental build keeps its base's instead. For an
   IVF index it also trains one coarse quantizer (by the whole corpus's size) that every
   segment starts from.
2. Every rank assembles the shards it owns (every ``world_size``-th complete shard, whoever
   encoded it, so a rerun after a kill divides them the same way) into a segment with that
   transform: FAISS index (its own type by its size, trained and recall-tuned on its own
   vectors), id map, BM25 term frequencies, store. It writes the segment under
   ``.OUT.partial/segments/`` and its description beside it.
3. Rank 0 moves the segments into the index directory and publishes the version that lists
   them (:mod:`tpsearch.segments`: search spans segments as one index would).

A rank killed mid-assembly leaves its shards; the rerun assembles again (a half-written
segment is a temporary folder, removed).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

import faiss

from ..manifest import INDEX_FILE, SegmentInfo, TransformInfo
from ..segments import new_segment_name, seal_segment
from ..typed import from_dict
from ..index import IndexPlan, new_index
from .assembler import (QUERY_MAP_FILE, QUERY_SHIFT_FILE, Assembled, AssemblyOptions,
                        KeptTransform, QueryEncoder, _fit, drop_query_files, gather_many,
                        index_plan, sample_rows, save_query_files, train_index)
from .mapper import StageTimes
from .reuse import STORE_DIR, fill_store
from .workdir import WorkDir
from ..transform import FIT_SAMPLE
from .writer import shard_rows

if TYPE_CHECKING:  # Ray's assembly tasks import this module without torch
    from .distributor import Distributor

TRANSFORM_DIR = "transform"
TRAINED_FILE = "trained.faiss"
SEGMENTS_DIR = "segments"


def owned(shards: list[Path], d: Distributor) -> list[Path]:
    """The shards this rank assembles: every ``world_size``-th, from its rank on."""
    return shards[d.rank::d.world_size]


def prepare_shared(work: WorkDir, shards: list[Path], opts: AssemblyOptions,
                   encode_queries: QueryEncoder) -> None:
    """Rank 0: what every rank's segment shares, from a sample of all shards: the transform
    (fitted here unless ``opts`` keeps the base's) and, for an IVF index, one coarse quantizer
    trained once (so the segments' lists could later be merged list by list)."""
    counts = [shard_rows(p) for p in shards]
    n = sum(counts)
    sample = gather_many(shards, counts, [sample_rows(n, FIT_SAMPLE)])[0]
    fitted, _, info, _, _ = _fit(shards, sample, opts, encode_queries)
    out = work.root / TRANSFORM_DIR
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    if opts.keep_transform is None:
        faiss.write_index(fitted.wrap(faiss.IndexFlatIP(fitted.out_dim)), str(out / INDEX_FILE))
        save_query_files(fitted, out)
        (out / "transform.json").write_text(json.dumps({"info": asdict(info),
                                                        "dim": int(sample.shape[1])}))
    plan = index_plan(opts, n, fitted.out_dim)
    if "IVF" in plan.factory:
        trained = fitted.wrap(new_index(plan, fitted.out_dim))
        train_index(trained, plan, sample, lambda rows: gather_many(shards, counts, [rows])[0], n)
        faiss.write_index(trained, str(out / TRAINED_FILE))
        (out / "trained.json").write_text(json.dumps(asdict(plan)))


def shared_index(work: WorkDir) -> tuple[Path, IndexPlan] | None:
    """The index trained once for every rank's segment, and its plan (None: none needed)."""
    out = work.root / TRANSFORM_DIR
    if not (out / TRAINED_FILE).exists():
        return None
    return out / TRAINED_FILE, IndexPlan(**json.loads((out / "trained.json").read_text()))


def shared_transform(work: WorkDir) -> KeptTransform:
    """The transform rank 0 fitted for this build (see :func:`prepare_shared`)."""
    out = work.root / TRANSFORM_DIR
    raw = json.loads((out / "transform.json").read_text())
    shift, qmap = out / QUERY_SHIFT_FILE, out / QUERY_MAP_FILE
    return KeptTransform(out / INDEX_FILE, shift if shift.exists() else None,
                         from_dict(TransformInfo, raw["info"], "transform.json"), raw["dim"],
                         map_path=qmap if qmap.exists() else None)


def assemble_own_segment(work: WorkDir, shards: list[Path], opts: AssemblyOptions,
                         times: StageTimes, encode_queries: QueryEncoder, corpus: str,
                         text_column: str, rank: int) -> None:
    """Assemble this rank's shards into a segment under the work dir; describe it beside."""
    from .assembler import assemble

    segments = work.root / SEGMENTS_DIR
    segments.mkdir(exist_ok=True)
    (segments / f"rank-{rank}.json").unlink(missing_ok=True)
    if not shards:
        return
    name = new_segment_name(work.out if work.out.is_dir() else work.root)
    tmp = segments / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    part = assemble(shards, tmp, replace(opts, segment=True), times, encode_queries, corpus,
                    text_column)
    drop_query_files(tmp)  # the version holds them
    # the shards stay in the work dir until the publish (a rerun needs them)
    fill_store(shards, tmp / STORE_DIR, opts.store_text, keep=True)
    info = seal_segment(tmp, segments, name, SegmentInfo(
        path="", documents=part.documents, vectors=part.vectors, index=part.index, files={},
        lexical=part.lexical))
    described = {"segment": asdict(info), "assembled": _plain(part)}
    tmp_json = segments / f".rank-{rank}.json"
    tmp_json.write_text(json.dumps(described))
    os.replace(tmp_json, segments / f"rank-{rank}.json")


def _plain(part: Assembled) -> dict:
    d = asdict(part)
    return {k: v for k, v in d.items() if k not in ("index", "transform", "lexical")}


def collect(work: WorkDir, world: int, transform: KeptTransform, fitted_here: bool) -> tuple[
        list[SegmentInfo], Assembled]:
    """Rank 0: every rank's segment (in rank order) and what the manifest needs of them."""
    segments, parts = [], []
    for rank in range(world):
        path = work.root / SEGMENTS_DIR / f"rank-{rank}.json"
        if not path.exists():  # a rank with no shards (fewer windows than ranks)
            continue
        raw = json.loads(path.read_text())
        segments.append(from_dict(SegmentInfo, raw["segment"], str(path)))
        parts.append(raw["assembled"])
    main = max(segments, key=lambda s: s.documents)
    total = lambda key: sum(int(p.get(key) or 0) for p in parts)
    lexical = None
    if main.lexical is not None:
        lexical = replace(main.lexical, rows=sum(s.lexical.rows for s in segments),
                          vocabulary=max(s.lexical.vocabulary for s in segments))
    part = Assembled(index=main.index, transform=transform.info, lexical=lexical,
                     dim=max(int(p["dim"]) for p in parts), documents=total("documents"),
                     vectors=total("vectors"), skipped=total("skipped"),
                     truncated=total("truncated"), tokens=total("tokens"),
                     transform_source="fitted" if fitted_here else "kept",
                     drift=None if fitted_here else parts[0].get("drift"),
                     reused=total("reused"), changed=total("changed"), added=total("added"))
    return segments, part


__all__ = ["owned", "prepare_shared", "shared_transform", "shared_index",
           "assemble_own_segment", "collect"]

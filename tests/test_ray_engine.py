"""The Ray engine on a local Ray instance against a one-process build of the same corpus."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import numpy as np

from helpers import assert_same_hits, config, write_corpus

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'tpsearch[ray]')")

ROOT = Path(__file__).resolve().parents[1]
QUERIES = ["river stone", "A man is playing a guitar. alpha 7", "the kitchen onion", "3"]


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the module: 4 logical CPUs (a prepare actor and two encoder
    actors take one each, so Ray Data never waits for a free CPU; they share the real cores)."""
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("ray")
    corpus = write_corpus(tmp / "c.parquet", 120, row_group_size=20)
    return tmp, corpus, tiny_model_dir("llama")


def _config(tmp, model, corpus, out, **kw):
    kw = {"passage_tokens": 48, "transform": "center", "lexical": True, "mode": "hybrid", **kw}
    cfg = config(tmp, model, corpus, shard_rows=16, **kw)
    return replace(cfg, out=str(tmp / out), model=replace(cfg.model, batch_size=4))


@pytest.mark.parametrize("index", ["flat", "hnsw", "ivf"])
def test_ray_build_equals_one_process_build(setup, local_ray, index):
    """Two encoder actors (two segments) give the same documents and, in every mode, the same
    hits as one process (IVF: every list probed; HNSW: a search breadth above the passages)."""
    from tpsearch import Searcher
    from tpsearch.pipeline import build_index
    from tpsearch.pipeline.ray_engine import RayOptions, build_with_ray

    tmp, corpus, model = setup
    one = _config(tmp, model, corpus, f"one-{index}", index=index)
    build_index(one)
    two = _config(tmp, model, corpus, f"ray-{index}", index=index)
    result = build_with_ray(two, RayOptions(actors=2))
    assert result.encoded_documents == 120
    sa, sb = Searcher.open(one.out), Searcher.open(two.out)
    assert len(sb.manifest.segments) == 2
    assert sorted(sa.document_ids()) == sorted(sb.document_ids())
    assert sa.manifest.transform == sb.manifest.transform
    kw = {}
    if index == "ivf":
        import faiss

        kw = {"nprobe": faiss.extract_index_ivf(sa.index).nlist}
    elif index == "hnsw":  # a graph per segment: searched wide enough to be exact
        kw = {"efSearch": 1024}
    for q in QUERIES:
        for mode in ("dense", "lexical", "hybrid"):
            assert_same_hits(sb.search(q, k=10, mode=mode, **kw),
                             sa.search(q, k=10, mode=mode, **kw))
    assert not Path(two.out + ".partial").exists()


def test_ray_build_resumes_from_the_shards_left(setup, local_ray):
    """Shards already in the work directory are not encoded again; the result is the same."""
    from tpsearch import Searcher
    from tpsearch.pipeline import build_index
    from tpsearch.pipeline.ray_engine import RayOptions, build_with_ray
    from tpsearch.pipeline.workdir import WorkDir

    tmp, corpus, model = setup
    one = _config(tmp, model, corpus, "one-resume")
    build_index(one, keep_shards=True)
    cfg = _config(tmp, model, corpus, "ray-resume")
    kept = sorted((WorkDir(Path(one.out)).root / "shards").glob("shard-*.parquet"))[:3]
    shards = WorkDir(Path(cfg.out).resolve()).root / "shards"
    # a build interrupted after its first three windows (same settings: the work dir's own)
    import shutil

    shutil.copytree(WorkDir(Path(one.out)).root, WorkDir(Path(cfg.out).resolve()).root)
    for extra in sorted(shards.glob("shard-*.parquet"))[3:]:
        extra.unlink()
    assert [p.name for p in sorted(shards.glob("shard-*.parquet"))] == [p.name for p in kept]
    result = build_with_ray(cfg, RayOptions(actors=1))
    assert result.encoded_documents == 120 - 3 * 16
    sa, sb = Searcher.open(one.out), Searcher.open(cfg.out)
    for q in QUERIES:
        assert_same_hits(sb.search(q, k=10, mode="hybrid"), sa.search(q, k=10, mode="hybrid"))


def test_ray_engine_refuses_to_update_an_index(setup, local_ray):
    from tpsearch.errors import InputError
    from tpsearch.pipeline import build_index
    from tpsearch.pipeline.ray_engine import build_with_ray

    tmp, corpus, model = setup
    cfg = _config(tmp, model, corpus, "exists")
    build_index(cfg)
    with pytest.raises(InputError, match="--engine ray builds a new index"):
        build_with_ray(cfg)


def test_cli_build_with_ray_engine(setup):
    """``tpsearch build --engine ray`` starts its own local Ray and reports the build."""
    tmp, corpus, model = setup
    out = tmp / "cli-ray"
    proc = subprocess.run(
        [sys.executable, "-c", "from tpsearch.cli import main; main()", "build", str(corpus), "--out", str(out), "--model",
         str(model), "--device", "cpu", "--dtype", "float32", "--shard-rows", "32",
         "--no-progress", "--engine", "ray", "--ray-actors", "2"],
        capture_output=True, text=True, timeout=600,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "built" in proc.stderr and "120 documents" in proc.stderr
    from tpsearch import Searcher

    assert len(Searcher.open(out).manifest.segments) == 2


@pytest.mark.parametrize("index", ["ivf", "ivf-disk"])
def test_ivf_segments_of_a_sharded_build_merge_list_by_list(setup, local_ray, index):
    """The two IVF segments of a Ray build share one quantizer: compacting them (after a
    deletion) copies their lists into one segment with that same quantizer, and it answers
    as the two did (every list probed). Lists on disk are copied into a new lists file."""
    import faiss

    from tpsearch import IndexWriter, Searcher
    from tpsearch.pipeline.ray_engine import RayOptions, build_with_ray

    tmp, corpus, model = setup
    cfg = _config(tmp, model, corpus, f"ray-{index}-merge", index=index)
    build_with_ray(cfg, RayOptions(actors=2))
    gone = sorted(Searcher.open(cfg.out).document_ids())[::40]
    with IndexWriter(cfg.out, merge_policy=False) as w:
        w.delete(gone)
        w.commit(merge=False)
    before = Searcher.open(cfg.out)
    assert len(before.segments) == 2
    centroids = faiss.extract_index_ivf(before.segments[0].index).quantizer
    nlist = faiss.extract_index_ivf(before.segments[0].index).nlist
    with IndexWriter(cfg.out) as w:
        w.compact()
    after = Searcher.open(cfg.out)
    (seg,) = after.manifest.segments
    assert "merged list by list" in seg.index.reason
    merged = faiss.extract_index_ivf(after.segments[0].index)
    lists = faiss.downcast_InvertedLists(merged.invlists)
    if index == "ivf-disk":
        assert seg.index.data_file == "index.ivfdata"
        assert isinstance(lists, faiss.OnDiskInvertedLists)
    else:
        assert seg.index.data_file is None and isinstance(lists, faiss.ArrayInvertedLists)
    np.testing.assert_array_equal(
        faiss.rev_swig_ptr(faiss.downcast_index(merged.quantizer).get_xb(), nlist * merged.d),
        faiss.rev_swig_ptr(faiss.downcast_index(centroids).get_xb(), nlist * merged.d))
    assert len(after) == len(before) and sorted(after.document_ids()) == sorted(before.document_ids())
    for q in QUERIES:
        for mode in ("dense", "hybrid"):
            assert_same_hits(after.search(q, k=10, mode=mode, nprobe=nlist),
                             before.search(q, k=10, mode=mode, nprobe=nlist))


def test_bad_input_in_an_actor_is_the_one_process_error_and_leaves_nothing(setup, local_ray):
    """--strict and a null text: the error raised inside a prepare actor reaches the caller as
    the same InputError naming the row, and no work directory is left behind."""
    from tpsearch.errors import InputError
    from tpsearch.pipeline.ray_engine import build_with_ray
    from tpsearch.pipeline.workdir import WorkDir

    tmp, _, model = setup
    corpus = write_corpus(tmp / "bad.parquet", 40, row_group_size=20,
                          texts=[f"text {i}" if i != 21 else None for i in range(40)])
    cfg = _config(tmp, model, corpus, "ray-bad", strict=True)
    with pytest.raises(InputError, match="corpus row 21"):
        build_with_ray(cfg)
    assert not Path(cfg.out).exists() and not WorkDir(Path(cfg.out).resolve()).root.exists()

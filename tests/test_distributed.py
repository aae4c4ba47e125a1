"""A real torchrun build on CPU (gloo, 2 processes) against a one-process build."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from helpers import assert_same_hits, write_corpus
from tpsearch.pipeline.workdir import WorkDir


def work_dir_for(out):
    return WorkDir(out).root

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = shutil.which("torchrun")
pytestmark = pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not on PATH")


def _args(corpus, out, model_dir):
    return [str(corpus), "--out", str(out), "--model", str(model_dir), "--device", "cpu", "--dtype", "float32",
            "--shard-rows", "16", "--batch-size", "4", "--no-progress"]


def _torchrun(args, tag: str) -> subprocess.Popen:
    env = dict(os.environ, TPSEARCH_TEST_TAG=tag, OMP_NUM_THREADS="1")
    return subprocess.Popen([TORCHRUN, "--standalone", "--nproc_per_node=2",
                             str(ROOT / "pipelines" / "build_index.py"), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _same_index(a: Path, b: Path, **search) -> None:
    """The same documents, and for every query in every mode the same hits with the same
    scores: the torchrun build is a version of one segment per rank, the one-process build one
    segment, and search over segments answers as one index (``search``: parameters that make an
    approximate index exhaustive)."""
    from tpsearch import Searcher

    sa, sb = Searcher.open(a), Searcher.open(b)
    assert sorted(sa.document_ids()) == sorted(sb.document_ids())
    assert sa.manifest.transform == sb.manifest.transform
    for q in ["river stone", "A man is playing a guitar. alpha 7", "the kitchen onion", "3"]:
        for mode in ("dense", "lexical", "hybrid"):
            assert_same_hits(sa.search(q, k=10, mode=mode, **search),
                             sb.search(q, k=10, mode=mode, **search))


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("dist")
    corpus = write_corpus(tmp / "c.parquet", 200, row_group_size=20)
    model = tiny_model_dir("llama")
    single = tmp / "single"
    subprocess.run([sys.executable, str(ROOT / "pipelines" / "build_index.py"), *_args(corpus, single, model)],
                   check=True, capture_output=True)
    return tmp, corpus, model, single


@pytest.mark.parametrize("index", ["auto", "hnsw"])
def test_two_process_build_equals_one_process(setup, index):
    """Flat (what auto picks for 200 documents) and HNSW, one segment per rank (IVF: below).
    HNSW is searched with a beam wider than the corpus: hybrid ranking standardises the dense
    side's 100-deep list, which a narrow beam fills approximately, differently in one graph of
    200 vectors than in two of 100."""
    tmp, corpus, model, single = setup
    extra = [] if index == "auto" else ["--index", index]
    if extra:
        single = tmp / f"single-{index}"
        subprocess.run([sys.executable, str(ROOT / "pipelines" / "build_index.py"),
                        *_args(corpus, single, model), *extra], check=True, capture_output=True)
    out = tmp / f"two-{index}"
    proc = _torchrun([*_args(corpus, out, model), *extra], uuid.uuid4().hex)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    _same_index(single, out, **({"efSearch": 256} if extra else {}))
    from tpsearch import Searcher

    manifest = Searcher.open(out).manifest
    assert manifest.index.factory.startswith("HNSW" if extra else "Flat"), manifest.index.factory
    segments = manifest.segments
    assert len(segments) == 2 and all(s.path.startswith("segments/") for s in segments)
    assert not work_dir_for(out).exists()


def _rank_pid(tag: str, rank: int) -> int | None:
    for env_file in Path("/proc").glob("[0-9]*/environ"):
        try:
            env = env_file.read_bytes().split(b"\0")
        except OSError:
            continue
        if f"TPSEARCH_TEST_TAG={tag}".encode() in env and f"RANK={rank}".encode() in env:
            return int(env_file.parent.name)
    return None


def test_killed_rank_rerun_completes_with_same_result(setup):
    tmp, corpus, model, single = setup
    out = tmp / "killed"
    tag = uuid.uuid4().hex
    # One text per forward pass, so the build is still running when rank 1 is killed.
    proc = _torchrun([*_args(corpus, out, model), "--batch-size", "1"], tag)
    shards = work_dir_for(out) / "shards"
    deadline = time.time() + 300
    while len(list(shards.glob("shard-*.parquet"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    pid = _rank_pid(tag, 1)
    assert pid is not None, "rank 1 not found"
    os.kill(pid, signal.SIGKILL)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0, "torchrun must report the dead rank"
    assert not out.exists()
    left = len(list(shards.glob("shard-*.parquet")))
    assert 2 <= left < 13
    proc = _torchrun(_args(corpus, out, model), uuid.uuid4().hex)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    _same_index(single, out)


DIE_IN_ASSEMBLY = """
import os, sys
import tpsearch.pipeline.assembler as assembler
real = assembler.assemble
def dying(*args, **kwargs):
    if os.environ.get("RANK") == "1":  # rank 1 dies in the middle of its segment
        os._exit(9)
    return real(*args, **kwargs)
assembler.assemble = dying
sys.argv[0] = "tpsearch"
from tpsearch.cli import main
main(["build", *sys.argv[1:]])
"""


def test_a_rank_killed_mid_assembly_and_the_rerun_publishes_a_complete_version(setup):
    tmp, corpus, model, single = setup
    out = tmp / "killed-assembly"
    script = tmp / "die_in_assembly.py"
    script.write_text(DIE_IN_ASSEMBLY)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node=2", str(script),
                           *_args(corpus, out, model)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode != 0, "torchrun must report the dead rank"
    assert not out.exists()  # nothing published
    assert len(list((work_dir_for(out) / "shards").glob("shard-*.parquet"))) == 13  # all kept
    proc = _torchrun(_args(corpus, out, model), uuid.uuid4().hex)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    _same_index(single, out)
    assert not [p for p in (out / "segments").iterdir() if p.name.startswith(".")]


def test_ivf_segments_of_the_ranks_share_one_coarse_quantizer(setup):
    """An IVF index on 2 ranks: rank 0 trains the quantizer once (on the whole corpus's sample,
    as one process does), both segments start from it; all lists probed, the hits equal the
    one-process build's."""
    import faiss

    from tpsearch import Searcher

    tmp, corpus, model, _ = setup
    single = tmp / "single-ivf"
    subprocess.run([sys.executable, str(ROOT / "pipelines" / "build_index.py"),
                    *_args(corpus, single, model), "--index", "ivf"], check=True,
                   capture_output=True)
    out = tmp / "two-ivf"
    proc = _torchrun([*_args(corpus, out, model), "--index", "ivf"], uuid.uuid4().hex)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    one, two = Searcher.open(single), Searcher.open(out)
    centroids = []
    for index in [one.index] + [s.index for s in two.segments]:
        ivf = faiss.extract_index_ivf(index)
        centroids.append(faiss.rev_swig_ptr(faiss.downcast_index(ivf.quantizer).get_xb(),
                                            ivf.nlist * ivf.d).copy())
    assert len(centroids) == 3
    np.testing.assert_array_equal(centroids[1], centroids[2])  # one quantizer for both
    np.testing.assert_allclose(centroids[0], centroids[1], atol=1e-6)  # = one process's
    nlist = faiss.extract_index_ivf(one.index).nlist
    for q in ["river stone", "A man is playing a guitar. alpha 7"]:
        assert_same_hits(two.search(q, k=10, mode="dense", nprobe=nlist),
                         one.search(q, k=10, mode="dense", nprobe=nlist))

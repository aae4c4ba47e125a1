"""Index choice over document count x dimension x memory budget, as autofaiss tests its own."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from tpsearch.errors import InputError
from tpsearch.index import FLAT_MAX_DOCS, choose_index, fit_plan, new_index


@pytest.mark.parametrize("n", [10, FLAT_MAX_DOCS, FLAT_MAX_DOCS + 1, 1_000_000])
@pytest.mark.parametrize("dim", [64, 640, 2304])
@pytest.mark.parametrize("budget", [None, 2**30, 50 * 2**20])
def test_auto_choice_fits_the_budget_and_builds(n, dim, budget):
    plan = choose_index("auto", n, dim, budget)
    flat, hnsw = n * dim * 4, n * dim * 4 + n * 32 * 2 * 4
    if n <= FLAT_MAX_DOCS and (budget is None or flat <= budget):
        assert plan.factory == "Flat" and plan.is_exact
    elif budget is None or hnsw <= budget:
        assert plan.factory == "HNSW32,Flat"
    else:
        assert plan.factory.startswith("IVF") and ",PQ" in plan.factory
        m = int(plan.factory.split("PQ")[1])
        assert dim % m == 0 and n * (m + 8) * 1.1 <= budget  # the codes fit the budget
    assert new_index(plan, dim).d == dim  # a valid factory string for this dimension


def test_a_budget_no_codes_fit_puts_the_lists_on_disk():
    plan = choose_index("auto", 10_000_000, 640, 1 * 2**20)
    assert plan.ondisk and plan.factory.startswith("IVF") and plan.factory.endswith(",PQ64")
    assert "on disk" in plan.reason
    assert fit_plan(plan, 10_000_000).ondisk  # kept through the fit
    with pytest.raises(InputError, match="fits a memory budget"):  # an explicit ivfpq: refused
        choose_index("ivfpq", 10_000_000, 640, 1 * 2**20)


@pytest.mark.parametrize("spec, factory", [("flat", "Flat"), ("hnsw", "HNSW32,Flat"),
                                           ("IVF256,Flat", "IVF256,Flat")])
def test_named_choices(spec, factory):
    assert choose_index(spec, 50_000, 64).factory == factory


def test_ivf_and_ivfpq_scale_their_list_count():
    small, big = choose_index("ivf", 10_000, 64), choose_index("ivf", 1_000_000, 64)
    n_small = int(small.factory[3:].split(",")[0])
    n_big = int(big.factory[3:].split(",")[0])
    assert n_small < n_big and n_small <= 10_000 // 39
    assert choose_index("ivfpq", 1_000_000, 640).factory.endswith(",PQ128")
    with pytest.raises(InputError, match="not a FAISS factory string"):
        choose_index("IVF,Nonsense", 100, 64)


def test_fit_plan_lowers_the_list_count_and_refuses_untrainable_pq():
    plan = fit_plan(choose_index("IVF1024,Flat", 100, 16), 100)
    assert plan.factory == "IVF2,Flat" and "lowered" in plan.reason
    index = new_index(plan, 16)
    index.train(np.random.default_rng(0).standard_normal((100, 16)).astype(np.float32))
    assert faiss.extract_index_ivf(index).nlist == 2
    with pytest.raises(InputError, match="product quantisation"):
        fit_plan(choose_index("IVF16,PQ8", 200, 16), 200)
    assert fit_plan(choose_index("flat", 3, 16), 3).factory == "Flat"


def test_one_parser_for_index_strings_before_and_after_the_model_loads(tmp_path):
    """The build's early check accepts what choose_index builds (0.4's refused 'PQ16') and
    refuses what it cannot, in one line naming --index."""
    from tpsearch.config import BuildConfig, ModelConfig
    from tpsearch.index import check_index_spec
    from tpsearch.pipeline.validate import validate_build

    corpus = tmp_path / "c.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["a"], "text": ["x"]}), corpus)
    for spec in ("PQ16", "OPQ16,IVF256,PQ16", "HNSW32,Flat", "IVF4,Flat", "Flat", "hnsw"):
        cfg = BuildConfig(corpus=str(corpus), out=str(tmp_path / "idx"), index=spec,
                          model=ModelConfig(device="cpu"))
        validate_build(cfg, False)
        assert choose_index(spec, 1000, 64).factory
    for spec in ("bogus", "IVF,Nonsense", "", "  "):
        with pytest.raises(InputError, match="--index") as err:
            check_index_spec(spec)
        assert "\n" not in str(err.value)


def test_an_index_with_its_lists_on_disk_searches_as_the_one_in_memory(tmp_path, tiny_model_dir):
    """ivf-disk: the same coarse quantizer and codes as ivf, its inverted lists in a file
    beside the index (written by ListWriter in sorted chunks, memory-mapped when read)."""
    from helpers import assert_same_hits, config, write_corpus
    from tpsearch import Searcher
    from tpsearch.index import ONDISK_FILE
    from tpsearch.pipeline import build_index
    from tpsearch.pipeline import assembler

    corpus = write_corpus(tmp_path / "c.parquet", 400)
    model = tiny_model_dir("llama")
    built = {}
    for spec in ("ivf", "ivf-disk"):
        cfg = config(tmp_path, model, corpus, index=spec)
        cfg.out = str(tmp_path / spec)
        if spec == "ivf-disk":  # lists written out in chunks of ~50 entries: several chunks
            old, assembler.ONDISK_CHUNK_BYTES = assembler.ONDISK_CHUNK_BYTES, 50 * (64 * 4 + 16)
            writers = []

            class Recorded(assembler.ListWriter):
                def __init__(self, *args, **kw):
                    super().__init__(*args, **kw)
                    writers.append(self)

            real, assembler.ListWriter = assembler.ListWriter, Recorded
            try:
                built[spec] = build_index(cfg).out
            finally:
                assembler.ONDISK_CHUNK_BYTES = old
                assembler.ListWriter = real
            assert len(writers) == 1 and writers[0].n == 400 and writers[0].chunks_written >= 3
            assert not (tmp_path / spec / ".lists").exists()
        else:
            built[spec] = build_index(cfg).out
    mem, disk = Searcher.open(built["ivf"]), Searcher.open(built["ivf-disk"])
    assert disk.manifest.index.data_file == ONDISK_FILE and mem.manifest.index.data_file is None
    assert disk.manifest.index.factory == mem.manifest.index.factory
    lists = faiss.extract_index_ivf(disk.index).invlists
    assert isinstance(faiss.downcast_InvertedLists(lists), faiss.OnDiskInvertedLists)
    assert (disk.location.path / ONDISK_FILE).stat().st_size > 0
    nlist = faiss.extract_index_ivf(mem.index).nlist
    assert mem.dense.mapped == [None]
    account = disk.dense.mapped[0]
    account.cap = account.per_list * nlist * 2  # released every second query here
    for q in ("river stone", "A man is playing a guitar.", "kitchen 17"):
        a = mem.search(q, k=10, mode="dense", nprobe=nlist)
        b = disk.search(q, k=10, mode="dense", nprobe=nlist)
        assert_same_hits(a, b)
    assert account.releases == 1  # and the third query read the released lists back
    # FAISS prints the path it maps when it reads such an index: never onto --json output
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "tpsearch.cli", "search", str(built["ivf-disk"]),
                           "river", "-k", "2", "--json"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["hits"]) == 2


def test_an_index_with_its_lists_on_disk_takes_updates(tmp_path, tiny_model_dir, capfd):
    """An update keeps the fitted transform, read from the first segment's index file: that
    file names its lists file where the build wrote it, before publishing moved it, so it is
    read as the searcher reads it (lists file beside the index), and as quietly: FAISS's
    note of the path it maps never reaches standard output."""
    import tpsearch
    from helpers import config, write_corpus
    from tpsearch import Searcher
    from tpsearch.pipeline import build_index

    cfg = config(tmp_path, tiny_model_dir("llama"), write_corpus(tmp_path / "c.parquet", 300),
                 index="ivf-disk", transform="center")
    out = build_index(cfg).out
    tpsearch.update(out, upsert=[{"id": "late", "text": "a late river note."}])
    s = Searcher.open(out)
    assert "late" in s.document_ids() and len(s.manifest.segments) == 2
    assert s.manifest.transform.kind == "center"
    with tpsearch.IndexWriter(out) as w:
        w.compact()
    assert "late" in Searcher.open(out).document_ids()
    assert capfd.readouterr().out == ""

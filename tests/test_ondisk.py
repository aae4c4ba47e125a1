"""Inverted lists written to disk by tpsearch.ondisk.ListWriter, and their mapped pages released."""

from __future__ import annotations

import os
import sys

import faiss
import numpy as np
import pytest

from tpsearch.index import read_index_file, release_mapped_lists
from tpsearch.ondisk import ListWriter, MappedLists


def _vectors(n, d=32, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _trained(factory, d=32):
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    index.train(_vectors(4000, d, seed=1))
    return index


@pytest.mark.parametrize("factory", ["IVF16,Flat", "IVF16,PQ8", "PCA16,IVF16,Flat"])
def test_lists_written_in_chunks_answer_as_the_index_filled_in_memory(tmp_path, factory):
    trained = _trained(factory)
    batches = [_vectors(n, seed=s) for n, s in ((700, 2), (1, 3), (0, 4), (900, 5))]
    memory = faiss.clone_index(trained)
    writer = ListWriter(faiss.clone_index(trained), tmp_path / "work", chunk_bytes=2_000)
    for x in batches:
        if len(x):
            memory.add(x)
        writer.add(x)
    index = writer.finish(tmp_path / "index.ivfdata")
    assert writer.chunks_written >= 10  # the run file came back in many sorted chunks
    assert not (tmp_path / "work").exists()
    faiss.write_index(index, str(tmp_path / "index.faiss"))
    reread = read_index_file(tmp_path / "index.faiss", lists_on_disk=True)
    ivf_mem = faiss.extract_index_ivf(memory)
    for got in (index, reread):
        ivf = faiss.extract_index_ivf(got)
        assert isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists)
        assert got.ntotal == memory.ntotal == 1601
        for j in range(ivf.nlist):  # each list: the same ids, in the order added, same codes
            m = ivf.invlists.list_size(j)
            assert m == ivf_mem.invlists.list_size(j)
            ids = faiss.rev_swig_ptr(ivf.invlists.get_ids(j), m)
            np.testing.assert_array_equal(ids, faiss.rev_swig_ptr(ivf_mem.invlists.get_ids(j), m))
            np.testing.assert_array_equal(
                faiss.rev_swig_ptr(ivf.invlists.get_codes(j), m * ivf.code_size),
                faiss.rev_swig_ptr(ivf_mem.invlists.get_codes(j), m * ivf.code_size))
        q = _vectors(20, seed=9)
        ivf.nprobe = ivf_mem.nprobe = 4
        np.testing.assert_array_equal(got.search(q, 10)[1], memory.search(q, 10)[1])


def test_a_writer_refuses_an_untrained_or_filled_index_and_abort_leaves_no_run_file(tmp_path):
    with pytest.raises(ValueError, match="trained"):
        ListWriter(faiss.index_factory(32, "IVF16,Flat"), tmp_path / "a")
    filled = _trained("IVF16,Flat")
    filled.add(_vectors(10))
    with pytest.raises(ValueError, match="holds 10 vectors"):
        ListWriter(filled, tmp_path / "b")
    writer = ListWriter(_trained("IVF16,Flat"), tmp_path / "c")
    writer.add(_vectors(50))
    writer.abort()
    assert list((tmp_path / "c").iterdir()) == []


def test_a_writer_given_nothing_makes_an_empty_index_that_reads_back(tmp_path):
    writer = ListWriter(_trained("IVF16,Flat"), tmp_path / "work")
    writer.add(np.zeros((0, 32), np.float32))
    faiss.write_index(writer.finish(tmp_path / "index.ivfdata"), str(tmp_path / "index.faiss"))
    index = read_index_file(tmp_path / "index.faiss", lists_on_disk=True)
    assert index.ntotal == 0
    assert (index.search(_vectors(2), 3)[1] == -1).all()


def _mapped_kib(path) -> int:
    """KiB of ``path`` resident in this process's page tables, from /proc/self/smaps (walked
    page by page when read; the RssFile counter of /proc/self/status is approximate and lags
    on busy machines)."""
    name, total, inside = os.path.realpath(path), 0, False
    for line in open("/proc/self/smaps"):
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:
            inside = len(fields) >= 6 and fields[5] == name  # a mapping's header line
        elif inside and fields[:1] == ["Rss:"]:
            total += int(fields[1])
    return total


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps (Linux)")
def test_released_lists_leave_the_resident_set_and_still_answer(tmp_path):
    """Searching every list of a 16 MiB lists file maps its pages into the process; releasing
    them gives that memory back, and the next search reads the same lists again."""
    trained = _trained("IVF16,Flat", d=256)
    writer = ListWriter(faiss.clone_index(trained), tmp_path / "work")
    x = _vectors(16_000, d=256, seed=3)
    writer.add(x)
    lists_file = (tmp_path / "index.ivfdata").resolve()
    faiss.write_index(writer.finish(lists_file), str(tmp_path / "index.faiss"))
    index = read_index_file(tmp_path / "index.faiss", lists_on_disk=True)
    faiss.extract_index_ivf(index).nprobe = 16
    q = x[:5]
    before = _mapped_kib(lists_file)
    first = index.search(q, 10)[1]
    touched = _mapped_kib(lists_file)
    release_mapped_lists(index)
    released = _mapped_kib(lists_file)
    assert touched - before > 12_000  # KiB: most of the file was mapped in by the search
    assert touched - released > 12_000
    np.testing.assert_array_equal(index.search(q, 10)[1], first)
    np.testing.assert_array_equal(first[:, 0], np.arange(5))
    release_mapped_lists(faiss.IndexFlatIP(4))  # not IVF: nothing to do
    release_mapped_lists(trained)  # lists in memory: nothing to do
    # a searcher's account releases them once searches have read about its cap
    assert MappedLists.of(trained) is None and MappedLists.of(faiss.IndexFlatIP(4)) is None
    account = MappedLists.of(index, cap=8 << 20)
    index.search(q, 10)
    assert _mapped_kib(lists_file) - released > 12_000  # read again through the map
    account.searched(1, 16)  # one query read every list: the whole 16 MiB file
    assert account.releases == 1 and _mapped_kib(lists_file) - released < 4_000
    account.searched(1, 1)  # a list's worth, 1 MiB: kept
    assert account.releases == 1


def test_recall_tuning_on_disk_in_query_batches_equals_tuning_in_memory(tmp_path, monkeypatch):
    """Tuning an on-disk index searches its queries a few at a time, releasing the mapped
    lists between batches; the tuned nprobe and recall are those of the same index in memory."""
    import tpsearch.index as index_module
    from tpsearch.index import IndexPlan, exact_topk, tune_search

    trained = _trained("IVF16,Flat")
    x = _vectors(3000, seed=4)
    memory = faiss.clone_index(trained)
    memory.add(x)
    writer = ListWriter(faiss.clone_index(trained), tmp_path / "work")
    writer.add(x)
    disk = writer.finish(tmp_path / "index.ivfdata")
    queries = _vectors(40, seed=5)
    truth = exact_topk(queries, [x], 10)
    plan = IndexPlan("IVF16,Flat", "test")
    want = tune_search(memory, plan, queries, truth)
    released = []
    real = index_module.release_mapped_lists
    monkeypatch.setattr(index_module, "release_mapped_lists",
                        lambda ix: released.append(1) or real(ix))
    monkeypatch.setattr(index_module, "TUNE_MAPPED_BYTES", 1)  # one query per batch
    assert tune_search(disk, plan, queries, truth) == want
    assert len(released) >= len(queries)

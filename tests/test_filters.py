"""Metadata columns and filters: every kind and operator against a brute-force reference, in
dense, lexical and hybrid modes and in passage mode, on flat, HNSW and IVF indexes."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from helpers import config, corpus_texts
from tpsearch import Searcher
from tpsearch.cli import main
from tpsearch.errors import InputError
from tpsearch.pipeline import build_index

N = 120
LANGS = ["en", "de", "fr", None]
UTC = dt.timezone.utc


def rows() -> list[dict]:
    out = []
    for i in range(N):
        out.append({
            "id": f"d{i}",
            "lang": LANGS[i % 4],
            "year": None if i % 11 == 0 else 2000 + i % 25,
            "score": float(i % 7) / 2,
            "flag": i % 3 == 0,
            "ts": dt.datetime(2024, 1, 1, tzinfo=UTC) + dt.timedelta(days=i),
            "day": dt.date(2020, 1, 1) + dt.timedelta(days=i),
            "tags": None if i % 13 == 0 else [["a", "b"], ["b"], [], ["c", "a"]][i % 4],
        })
    return out


def write(path, part: list[dict], texts: list[str], int_type=pa.int64()):
    cols = {k: [r[k] for r in part] for k in part[0]}
    table = pa.table({
        "id": cols["id"], "text": texts, "lang": pa.array(cols["lang"], pa.string()),
        "year": pa.array(cols["year"], int_type), "score": cols["score"], "flag": cols["flag"],
        "ts": pa.array(cols["ts"], pa.timestamp("ms", tz="UTC")),
        "day": pa.array(cols["day"], pa.date32()),
        "tags": pa.array(cols["tags"], pa.list_(pa.string()))})
    pq.write_table(table, path)


META = "lang,year,score,flag,ts,day,tags"

# (filter, reference predicate on a row)
CASES = [
    ({"lang": "en"}, lambda r: r["lang"] == "en"),
    ({"lang": {"$ne": "en"}}, lambda r: r["lang"] is not None and r["lang"] != "en"),
    ({"lang": {"$in": ["de", "fr"]}}, lambda r: r["lang"] in ("de", "fr")),
    ({"lang": {"$nin": ["de", "fr"]}}, lambda r: r["lang"] is not None and r["lang"] not in ("de", "fr")),
    ({"lang": {"$null": True}}, lambda r: r["lang"] is None),
    ({"year": {"$gte": 2010, "$lt": 2015}}, lambda r: r["year"] is not None and 2010 <= r["year"] < 2015),
    ({"year": {"$gt": 2020}}, lambda r: r["year"] is not None and r["year"] > 2020),
    ({"year": {"$lte": 2002}}, lambda r: r["year"] is not None and r["year"] <= 2002),
    ({"year": {"$null": False}, "score": {"$gt": 2.0}},
     lambda r: r["year"] is not None and r["score"] > 2.0),
    ({"score": 1.5}, lambda r: r["score"] == 1.5),
    ({"flag": True}, lambda r: r["flag"]),
    ({"ts": {"$gte": "2024-03-01T00:00:00+00:00"}},
     lambda r: r["ts"] >= dt.datetime(2024, 3, 1, tzinfo=UTC)),
    ({"day": {"$lt": "2020-01-10"}}, lambda r: r["day"] < dt.date(2020, 1, 10)),
    ({"tags": {"$contains": "a"}}, lambda r: r["tags"] is not None and "a" in r["tags"]),
    ({"$or": [{"lang": "en"}, {"flag": True}]}, lambda r: r["lang"] == "en" or r["flag"]),
    ({"$and": [{"lang": "de"}, {"$not": {"year": {"$lt": 2010}}}]},
     lambda r: r["lang"] == "de" and not (r["year"] is not None and r["year"] < 2010)),
    ({"year": 2003}, lambda r: r["year"] == 2003),
]


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("filters")
    data = rows()
    texts = corpus_texts(N)
    (tmp / "c").mkdir()
    # two files: year stored as int32 in one and int64 in the other
    write(tmp / "c" / "a.parquet", data[:60], texts[:60], pa.int32())
    write(tmp / "c" / "b.parquet", data[60:], texts[60:])
    out = {}
    for index in ("flat", "hnsw", "ivf"):
        cfg = config(tmp, tiny_model_dir("llama"), tmp / "c", lexical=True, mode="hybrid",
                     metadata_columns=META, index=index, passage_tokens=24, passage_overlap=4,
                     transform="center")
        cfg.out = str(tmp / index)
        out[index] = build_index(cfg).out
    return out, data, texts


@pytest.mark.parametrize("index", ["flat", "hnsw", "ivf"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_filters_against_brute_force(built, index, case):
    out, data, texts = built
    spec, keep = CASES[case]
    allowed = {r["id"] for r in data if keep(r)}
    s = Searcher.open(out[index])
    assert s.manifest.metadata == {"lang": "string", "year": "int", "score": "float",
                                   "flag": "bool", "ts": "timestamp", "day": "date",
                                   "tags": "list[string]"}
    mask = s.allowed_documents(spec)
    assert {s.idmap.ids[s.idmap.doc_rows[d][0]] for d in np.flatnonzero(mask)} == allowed
    query = texts[5]
    k = 10
    for mode in ("dense", "hybrid"):
        hits = s.search(query, k=k, mode=mode, filter=spec)
        assert {h.id for h in hits} <= allowed, (mode, spec)
        assert len(hits) == min(k, len(allowed)), (mode, spec)  # pre-filtering: k hits
    # dense: the filtered ranking is the unfiltered exact ranking restricted to allowed ones
    if index == "flat":
        everything = [h.id for h in s.search(query, k=N, mode="dense")]
        want = [d for d in everything if d in allowed][:k]
        assert [h.id for h in s.search(query, k=k, mode="dense", filter=spec)] == want
    lex = s.search("river stone alpha", k=k, mode="lexical", filter=spec)
    assert {h.id for h in lex} <= allowed and all(h.score > 0 for h in lex)
    unfiltered = [h.id for h in s.search("river stone alpha", k=N, mode="lexical")]
    assert [h.id for h in lex] == [d for d in unfiltered if d in allowed][:k]
    ps = s.search(query, k=k, mode="dense", passages=True, filter=spec)
    assert {h.id for h in ps} <= allowed and len(ps) == min(k, sum(
        len(s.idmap.doc_rows[d]) for d in np.flatnonzero(mask)))


def test_a_filter_matching_nothing_returns_no_hits(built):
    s = Searcher.open(built[0]["flat"])
    assert s.search("river", k=5, filter={"year": 1900}) == []


def _nested(levels: int) -> list:
    value: list = []
    for _ in range(levels):
        value = [value]
    return value


NESTED = _nested(10_000)


@pytest.mark.parametrize("spec, needle", [
    ({"nope": 1}, "no metadata column 'nope'"),
    ({"year": "2020"}, "expected an integer"),
    ({"year": {"$contains": "a"}}, "'$contains' does not apply to a int column"),
    ({"lang": {"$in": "en"}}, "expected a list"),
    ({"flag": {"$gt": True}}, "does not apply to a bool column"),
    ({"$or": []}, "non-empty list"),
    ({"$xor": [{"lang": "en"}]}, "unknown operator"),
    ({"ts": {"$gte": "yesterday"}}, "ISO 8601"),
    ({"score": float("nan")}, "finite number"),
    ([], "non-empty object"),
    ("{not json", "not valid JSON"),
    ({"tags": {"$contains": 3}}, "expected a string"),
    ({"score": 10 ** 400}, "finite number"),  # 0.4: OverflowError
    ({"score": {"$in": [1.5, -10 ** 400]}}, "finite number"),
    ({"lang": NESTED}, "nested too deeply"),  # 0.4: RecursionError
])
def test_malformed_filters_are_refused_before_any_search(built, spec, needle):
    s = Searcher.open(built[0]["flat"])
    with pytest.raises(InputError, match=None) as err:
        s.search("river", k=3, filter=spec)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_an_index_without_metadata_refuses_filters(tmp_path, tiny_model_dir):
    from helpers import write_corpus

    res = build_index(config(tmp_path, tiny_model_dir("llama"), write_corpus(tmp_path / "c.parquet", 10)))
    with pytest.raises(InputError, match="no metadata column 'lang'.*--metadata-columns"):
        Searcher.open(res.out).search("river", filter={"lang": "en"})


def test_cli_filter_and_metadata_build_errors(built, tmp_path, tiny_model_dir):
    out = built[0]["flat"]
    r = CliRunner().invoke(main, ["search", str(out), "river", "-k", "3", "--json", "--filter",
                                  json.dumps({"lang": "fr"})])
    assert r.exit_code == 0, r.output
    ids = [h["id"] for h in json.loads(r.output.strip().splitlines()[-1])["hits"]]
    assert ids and all(int(i[1:]) % 4 == 2 for i in ids)
    r = CliRunner().invoke(main, ["search", str(out), "river", "--filter", '{"lang": 1}'])
    assert r.exit_code == 1 and "expected a string" in r.output and "Traceback" not in r.output
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"id": ["a"], "text": ["x"], "blob": [b"\x00"]}), bad)
    r = CliRunner().invoke(main, ["build", str(bad), "--out", str(tmp_path / "o"), "--model",
                                  str(tiny_model_dir("llama")), "--metadata-columns", "blob"])
    assert r.exit_code == 1 and "'blob' has type binary" in r.output
    r = CliRunner().invoke(main, ["build", str(bad), "--out", str(tmp_path / "o"), "--model",
                                  str(tiny_model_dir("llama")), "--metadata-columns", "text"])
    assert r.exit_code == 1 and "already the text, id or title column" in r.output

"""Paired tests between two systems' per-query scores (tpsearch.eval.significance)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tpsearch.errors import InputError
from tpsearch.eval.retrieval import against_reference
from tpsearch.eval.significance import describe, paired_difference


def test_identical_systems_differ_by_nothing():
    a = np.random.default_rng(1).random(50)
    d = paired_difference(a, a)
    assert d.mean == 0 and d.low == 0 and d.high == 0
    assert d.p_value == 1.0 and not d.significant()


def test_a_consistent_gain_is_significant_and_its_interval_holds_it():
    rng = np.random.default_rng(2)
    b = rng.random(200)
    a = np.clip(b + 0.05 + rng.normal(0, 0.05, 200), 0, 1)
    d = paired_difference(a, b)
    assert d.mean == pytest.approx(np.mean(a - b))
    assert 0 < d.low < d.mean < d.high
    assert d.p_value < 0.001 and d.significant()
    # the other way round: the same difference, negated
    e = paired_difference(b, a)
    assert e.mean == pytest.approx(-d.mean) and e.p_value == pytest.approx(d.p_value, abs=0.01)
    assert e.high < 0


def test_p_value_matches_the_exact_sign_flip_test():
    x = np.array([0.3, -0.1, 0.2, 0.25, -0.05, 0.1, 0.15])
    # all 2^7 sign assignments: the share at least as extreme as the observed mean
    flips = [np.mean(np.array(s) * x) for s in itertools.product((-1, 1), repeat=len(x))]
    exact = np.mean(np.abs(flips) >= abs(x.mean()) - 1e-12)
    d = paired_difference(x, np.zeros_like(x))
    assert d.p_value == pytest.approx(exact, abs=0.015)


def test_a_noise_difference_is_not_significant():
    rng = np.random.default_rng(3)
    b = rng.random(300)
    a = b + rng.normal(0, 0.1, 300)  # no real shift
    d = paired_difference(a, b, seed=4)
    assert d.low < 0 < d.high and d.p_value > 0.05


def test_seeded_so_reports_repeat():
    rng = np.random.default_rng(5)
    a, b = rng.random(40), rng.random(40)
    assert paired_difference(a, b) == paired_difference(a, b)


def test_describe_in_points():
    assert describe(0.0042, -0.0031, 0.0118, 0.2712) == "+0.42 [-0.31, +1.18] p 0.271"


@pytest.mark.parametrize("a, b, message", [
    ([0.1, 0.2], [0.1], "one value per query"),
    ([0.1, 0.2], [0.1, 0.2, 0.3], "one value per query"),
    ([0.1], [0.2], "at least 2 queries"),
])
def test_bad_input_is_refused(a, b, message):
    with pytest.raises(InputError, match=message):
        paired_difference(a, b)


def _row(label, mode, scores, reference=False):
    return {"label": label, "mode": mode, "reference": reference,
            "per_query_ndcg@10": dict(zip(["q1", "q2", "q3", "q4"], scores))}


def test_compare_rows_are_set_against_the_defaults_of_their_own_mode():
    rows = against_reference([
        _row("old, dense", "dense", [0.2, 0.4, 0.6, 0.8]),
        _row("old, lexical", "lexical", [1, 1, 1, 1]),
        _row("defaults, dense", "dense", [0.5, 0.5, 0.5, 0.5], reference=True),
        _row("defaults, hybrid", "hybrid", [1, 0, 1, 0], reference=True),
        _row("other, hybrid", "hybrid", [1, 1, 1, 1]),
    ])
    vs = [r["vs_reference"] for r in rows]
    assert vs[0]["reference"] == "defaults, dense" and vs[0]["mean"] == pytest.approx(0.0)
    assert vs[1] is None  # no defaults row in lexical mode: nothing to set it against
    assert vs[2] is None and vs[3] is None  # the defaults themselves
    assert vs[4]["reference"] == "defaults, hybrid" and vs[4]["mean"] == pytest.approx(0.5)


def test_one_judged_query_gets_no_paired_test_instead_of_an_error():
    one = [{"label": x, "mode": "dense", "reference": x == "defaults",
            "per_query_ndcg@10": {"q1": v}} for x, v in (("a", 0.3), ("defaults", 0.5))]
    assert [r["vs_reference"] for r in against_reference(one)] == [None, None]

"""Every case of the hostile probe (tests/hostile_cases.py, tests/hostile_writes.py) as a test."""

from __future__ import annotations

import pytest

import hostile_writes  # noqa: F401 - registers the second part's cases
from hostile_cases import CASES, Env


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_model_dir):
    return Env(tmp_path_factory.mktemp("hostile"), model=tiny_model_dir("llama"))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile(env, case):
    case.run(env)

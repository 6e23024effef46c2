"""The test tiers are chosen by marker: `make test-fast` deselects every marker of ``tests.tiers.HEAVY_MARKERS``,
each declared in pyproject.toml, and no test that runs Snakemake, a server, Slurm or Chromium lacks one."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from tests.helpers import ROOT
from tests.tiers import HEAVY_MARKERS, unmarked_heavy


def _recipe(makefile: str, target: str) -> str:
    """The recipe lines of ``target`` (continuation lines joined)."""
    m = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert m, f"no `{target}` target in the Makefile"
    return m[1].replace("\\\n", " ")


def _selects(expression: str, marks: set[str]) -> bool:
    """Whether ``pytest -m EXPRESSION`` selects a test carrying ``marks`` (and/or/not over marker names: Python's
    own boolean syntax, so eval with the names bound does what pytest does)."""
    names = set(re.findall(r"\b(?!and\b|or\b|not\b)\w+\b", expression))
    return eval(expression, {"__builtins__": {}}, {n: n in marks for n in names})  # noqa: S307 - our Makefile


def test_make_test_fast_deselects_every_heavy_marker_and_make_test_prints_the_slowest():
    makefile = (ROOT / "Makefile").read_text()
    fast = _recipe(makefile, "test-fast")
    assert '-m "$(FAST)"' in fast, fast
    expression = re.search(r"^FAST := (.+)$", makefile, re.M)[1]
    assert _selects(expression, set()) and _selects(expression, {"real"})  # real: skipped where absent
    for marker in HEAVY_MARKERS:
        assert not _selects(expression, {marker}), marker
    full = _recipe(makefile, "test")
    assert "pytest -m" not in full and "--durations=15" in full  # every test
    for recipe in (fast, full):  # exit 5 (nothing collected) is a failure, never a pass
        assert "$(BIN)/python -m pytest" in recipe and "if [ $$rc -eq 5 ]" in recipe and "exit 1" in recipe


def test_every_tier_marker_is_declared():
    ini = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    declared = {m.split(":")[0] for m in ini["markers"]}
    assert declared == {*HEAVY_MARKERS, "real"} and "--strict-markers" in ini["addopts"]


def test_every_test_running_snakemake_a_server_slurm_or_chromium_carries_a_tier_marker():
    assert unmarked_heavy(ROOT / "tests") == []


def test_the_check_finds_an_unmarked_test_through_its_fixtures(tmp_path: Path):
    tests = tmp_path / "tests"
    (tests / "sub").mkdir(parents=True)
    run = "snake" + "make"  # split, so that this test's own source does not read as running it
    (tests / "conftest.py").write_text(
        f"import pytest\nfrom tests.helpers import {run}\n\n@pytest.fixture(scope='session')\n"
        f"def demo(tmp_path_factory):\n    return {run}('.', '.', '--cores', '2')\n"
    )
    module = (
        "import pytest\n\n"
        "@pytest.fixture\ndef results(demo):\n    return demo\n\n"
        "def _helper():\n    return _run()\n\n"
        f"def _run():\n    return {run.upper()}\n\n"
        "def test_reads_the_run(results):\n    assert results\n\n"
        "@pytest.mark.dag\ndef test_marked(results):\n    assert results\n\n"
        "def test_calls_a_helper():\n    _helper()\n\n"
        "def test_unit():\n    assert 1 + 1 == 2\n"
    )
    (tests / "sub" / ("test_" + "a.py")).write_text(module)
    name = "test_" + "a.py"  # split: a made-up file, not a path the docs check
    assert unmarked_heavy(tests) == [
        f"tests/sub/{name}::test_reads_the_run",
        f"tests/sub/{name}::test_calls_a_helper",
    ]
    (tests / "sub" / ("test_" + "a.py")).write_text("import pytest\npytestmark = pytest.mark.slow\n" + module)
    assert unmarked_heavy(tests) == []


def test_the_long_units_exist_and_are_handed_out_first_in_their_order():
    """tests/conftest.py's LONG_UNITS name real files (a renamed one would silently lose its place), and
    unit_order puts their tests first, in LONG_UNITS' order, then the rest by test count, each unit kept whole."""
    from tests.conftest import LONG_UNITS, SHARED_DIRS, unit_of, unit_order

    for unit in LONG_UNITS:
        assert (ROOT / unit).exists(), f"tests/conftest.py LONG_UNITS names {unit}, which does not exist"
    a, b, shared = "tests/" + "a.py", "tests/" + "b.py", SHARED_DIRS[0]  # made-up files (built: test_docs)
    ids = [
        f"{a}::t1",
        f"{b}::t1",
        f"{b}::t2",
        f"{LONG_UNITS[1]}::t1",
        f"{shared}x.py::t1",
        f"{LONG_UNITS[0]}::t1",
        f"{shared}y.py::t1",
        f"{LONG_UNITS[1]}::t2",
    ]
    ordered = [ids[i] for i in unit_order(ids)]
    assert sorted(ordered) == sorted(ids)
    units = [unit_of(i) for i in ordered]
    assert units[:3] == [LONG_UNITS[0], LONG_UNITS[1], LONG_UNITS[1]]
    assert ordered[1:3] == [f"{LONG_UNITS[1]}::t1", f"{LONG_UNITS[1]}::t2"]  # collection order within a unit
    assert units[3:5] == [shared, shared] and shared == LONG_UNITS[2]  # a shared directory is one unit
    assert units[5:] == [b, b, a]  # most tests first, as xdist orders them

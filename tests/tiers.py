"""The test tiers: the markers that keep a test out of ``make test-fast``, and a static check that every test which
runs Snakemake, a server, Slurm or Chromium carries one of them (tests/pipeline/test_tiers.py runs it).

The check reads the test files' syntax only (no import, no collection: well under a second). A test is heavy when
its own code, a module-level function or class it names, or a fixture it takes (its module's, else the nearest
conftest.py's, followed through the fixtures that one takes) matches ``HEAVY_CODE``."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

HEAVY_MARKERS = ("slow", "dag", "server", "cluster", "browser")
# The Snakemake CLI (tests.helpers.snakemake, the modules' _snakemake, SNAKEMAKE, a "snakemake" executable, the
# serve tests' reduced demo run, test_rerun's Dag), the `serve` subprocess fixture, a real Slurm, Chromium.
HEAVY_CODE = re.compile(
    r"(?<!\w)_?snakemake\w*\(|\bSNAKEMAKE\b|[\"/']snakemake[\"']|\brun_reduced\(|\bDag\(|\bstart_server\b"
    r"|\bmake_cluster\(|\bsync_playwright\b|[\"']chromium[\"']"
)


@dataclass(frozen=True)
class _Def:
    """A module-level function or class: its source, the names it uses, and the fixtures it takes (tests and
    fixtures only)."""

    source: str
    names: frozenset[str]
    fixtures: tuple[str, ...]
    is_fixture: bool
    marks: frozenset[str]  # a test's markers, its module's ``pytestmark`` included


def _marks(node: ast.AST) -> set[str]:
    """The ``pytest.mark.<name>`` names written in ``node`` (a decorator, a ``pytestmark`` value)."""
    return {
        n.attr
        for n in ast.walk(node)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute) and n.value.attr == "mark"
    }


def _parse(path: Path) -> dict[str, _Def]:
    text = path.read_text()
    tree, lines = ast.parse(text), text.splitlines(keepends=True)
    module_marks = set().union(
        *(
            _marks(n.value)
            for n in tree.body
            if isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in n.targets)
        )
    )
    defs = {}
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            continue
        is_fixture = any("fixture" in ast.unparse(d) for d in node.decorator_list)
        is_test = isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
        defs[node.name] = _Def(
            source="".join(lines[node.lineno - 1 : node.end_lineno]),
            names=frozenset(n.id for n in ast.walk(node) if isinstance(n, ast.Name)),
            fixtures=tuple(a.arg for a in node.args.args) if is_fixture or is_test else (),
            is_fixture=is_fixture,
            marks=frozenset(set().union(*map(_marks, node.decorator_list)) | module_marks),
        )
    return defs


def unmarked_heavy(tests_dir: Path) -> list[str]:
    """``path::test`` of every test under ``tests_dir`` that is heavy but carries none of ``HEAVY_MARKERS``."""
    tests_dir = Path(tests_dir)
    modules = {p: _parse(p) for p in sorted(tests_dir.rglob("*.py"))}

    def fixture(name: str, path: Path) -> tuple[Path, str] | None:
        """Where pytest finds fixture ``name`` for a test or fixture in ``path``: its module, else a conftest.py."""
        if name in modules[path] and modules[path][name].is_fixture:
            return path, name
        for d in [path.parent, *path.parent.parents]:
            conf = modules.get(d / "conftest.py", {})
            if name in conf and conf[name].is_fixture and d / "conftest.py" != path:
                return d / "conftest.py", name
            if d == tests_dir:
                return None
        return None

    memo: dict[tuple[Path, str], bool] = {}

    def heavy(path: Path, name: str) -> bool:
        if (path, name) not in memo:
            memo[path, name] = False  # while visiting: a cycle adds nothing
            d = modules[path][name]
            uses = [(path, n) for n in d.names if n in modules[path] and n != name]
            uses += [hit for f in d.fixtures if (hit := fixture(f, path)) is not None and hit != (path, name)]
            memo[path, name] = bool(HEAVY_CODE.search(d.source)) or any(heavy(*u) for u in uses)
        return memo[path, name]

    return [
        f"{path.relative_to(tests_dir.parent).as_posix()}::{name}"
        for path, defs in modules.items()
        if path.name.startswith("test_")
        for name, d in defs.items()
        if name.startswith("test_") and not d.is_fixture and not d.marks & set(HEAVY_MARKERS) and heavy(path, name)
    ]

"""Code fingerprints (carvana_seg.pipeline.codedeps), module by module: comments, docstrings and formatting never
change a stage's fingerprint; a changed statement changes exactly the fingerprints of the stages importing it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from carvana_seg.pipeline import codedeps
from carvana_seg.pipeline.stages import STAGES

PKG = Path(codedeps.PACKAGE_DIR)
MODULES = sorted(p.relative_to(PKG).as_posix() for p in PKG.rglob("*.py"))


@pytest.fixture(scope="module")
def copy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pkg") / "carvana_seg"
    shutil.copytree(PKG, root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _fingerprints(root: Path) -> dict[str, str]:
    codedeps.module_closure.cache_clear()
    codedeps.normalized_source.cache_clear()
    return {stage: codedeps.stage_fingerprint(stage, root) for stage in STAGES}


def _cosmetic(text: str) -> str:
    """The same code with a comment, blank lines, and every docstring's text changed."""
    text = text.replace('"""', '"""Edited. ', 1) if text.lstrip().startswith('"""') else text
    return "# a leading comment\n\n" + text.replace("\n\n\n", "\n\n\n# comment between definitions\n\n\n") + "\n\n"


@pytest.mark.parametrize("rel", MODULES)
def test_cosmetic_edits_leave_each_module_unchanged(tmp_path, rel):
    """A fingerprint is a hash of (module name, normalized source) pairs: each module's normalized source is blind
    to comments, blank lines and docstrings."""
    original = (PKG / rel).read_text()
    edited = tmp_path / "m.py"
    edited.write_text(_cosmetic(original))
    assert edited.read_text() != original
    assert codedeps.normalized_source(edited) == codedeps.normalized_source(PKG / rel)


def test_cosmetic_edits_everywhere_change_no_stage_fingerprint(copy):
    before = _fingerprints(copy)
    originals = {p: p.read_text() for p in copy.rglob("*.py")}
    try:
        for path, text in originals.items():
            path.write_text(_cosmetic(text))
        assert _fingerprints(copy) == before
    finally:
        for path, text in originals.items():
            path.write_text(text)


@pytest.mark.parametrize("rel", ["training/losses.py", "core/masks.py", "inference/threshold.py", "data/folds.py"])
def test_a_code_change_changes_the_importing_stages_only(copy, rel):
    path = copy / rel
    original = path.read_text()
    before = _fingerprints(copy)
    module = "carvana_seg." + rel.removesuffix(".py").replace("/", ".")
    importers = {s for s in STAGES if module in codedeps.stage_modules(s, copy)}
    path.write_text(original + "\nEDITED = 1\n")
    try:
        after = _fingerprints(copy)
    finally:
        path.write_text(original)
    assert importers and {s for s in STAGES if after[s] != before[s]} == importers


def test_fingerprints_hold_no_path(tmp_path):
    other = tmp_path / "moved" / "carvana_seg"
    shutil.copytree(PKG, other, ignore=shutil.ignore_patterns("__pycache__"))
    assert _fingerprints(other) == _fingerprints(PKG)

"""docs/architecture.md's package table matches the tree: every subpackage and module of ``src/carvana_seg/`` has
its row and its name there, every name there exists, and each stage sits in the package of its module."""

from __future__ import annotations

import re
from pathlib import Path

from carvana_seg.pipeline.stages import STAGES
from tests.helpers import ROOT

PKG_ROOT = ROOT / "src" / "carvana_seg"
ROW = re.compile(r"^\| `(\w+)/` \|([^|]*)\|([^|]*)\|$", re.M)


def tree() -> dict[str, set[str]]:
    """Subpackage -> its modules (``__init__`` left out), as on disk."""
    return {
        p.name: {m.stem for m in p.glob("*.py") if m.stem != "__init__"}
        for p in sorted(PKG_ROOT.iterdir())
        if (p / "__init__.py").is_file()
    }


def table(text: str) -> dict[str, tuple[set[str], set[str]]]:
    """Subpackage -> (stages, modules) named in the rows of the package table."""
    section = text[text.index("## Packages") :]
    section = section[: section.index("\n## ", 1)] if "\n## " in section[1:] else section
    return {
        pkg: (set(re.findall(r"`([\w-]+)`", stages)), set(re.findall(r"`([a-z_]+)`", modules)))
        for pkg, stages, modules in ROW.findall(section)
    }


def mismatches(text: str) -> list[str]:
    found, rows = tree(), table(text)
    wrong = [f"no row for {p}/" for p in sorted(set(found) - set(rows))]
    wrong += [f"row for missing package {p}/" for p in sorted(set(rows) - set(found))]
    for pkg in sorted(set(found) & set(rows)):
        stages, modules = rows[pkg]
        wrong += [f"{pkg}/{m}.py not named" for m in sorted(found[pkg] - modules)]
        wrong += [f"{pkg}/{m} named but absent" for m in sorted(modules - found[pkg])]
        wrong += [
            f"stage {s} is not in {pkg}/"
            for s in sorted(stages)
            if s not in STAGES or not STAGES[s][0].startswith(f"carvana_seg.{pkg}.")
        ]
    listed = {s for stages, _ in rows.values() for s in stages}
    wrong += [f"stage {s} not listed" for s in sorted(set(STAGES) - listed)]
    return wrong


def test_architecture_names_every_package_module_and_stage(repo_root: Path):
    wrong = mismatches((repo_root / "docs" / "architecture.md").read_text())
    assert wrong == [], f"docs/architecture.md and src/carvana_seg/ differ: {wrong}"


def test_the_check_sees_a_missing_row_module_and_stage(repo_root: Path):
    text = (repo_root / "docs" / "architecture.md").read_text()
    assert any("no row for plan/" in w for w in mismatches(re.sub(r"(?m)^\| `plan/`.*\n", "", text)))
    assert "training/optim.py not named" in mismatches(text.replace("`optim` (optimizer, schedule), ", ""))
    assert "stage plan not listed" in mismatches(text.replace("| `plan/` | `plan` |", "| `plan/` |  |"))
    assert "core/nowhere named but absent" in mismatches(text.replace("`rle`,", "`rle`, `nowhere`,"))

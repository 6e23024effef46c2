"""The documentation names only things that exist: make targets, stages, modules, repo paths and link targets.

Scans README.md, config/README.md, CHANGELOG.md and docs/*.md. A path counts when it starts with a top-level
entry of the repository (``docs/``, ``src/``, ``tests/``, ``Snakefile``, ...) or with ``carvana_seg/`` (read as
``src/carvana_seg/``); the part before a placeholder (``<name>``, ``*``, ``{...}``) must match something.
"""

from __future__ import annotations

import glob
import importlib.util
import re
from pathlib import Path

import pytest

from carvana_seg.pipeline.stages import STAGES
from tests.helpers import ROOT

README_LIMIT = 15_000
TOP = (
    "Snakefile",
    "Makefile",
    "LICENSE",
    "CHANGELOG.md",
    "README.md",
    "pyproject.toml",
    "requirements.txt",
    "requirements-dev.txt",
    "environment.yml",
    "environment.post-deploy.sh",
    ".snakemake-workflow-catalog.yml",
    ".ci/",
    "benchmarks/",
    "config/",
    "docs/",
    "profiles/",
    "src/",
    "tests/",
    "workflow/",
    "carvana_seg/",
)
# Paths a changelog entry names because they are gone ("moved from ... to ..."): never links.
HISTORIC = {"CHANGELOG.md": {"workflow/profiles/*"}}
PATH_RE = re.compile(r"(?<![\w./<-])(" + "|".join(re.escape(t) for t in TOP) + r")([\w./-]*)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
# ``inference/threshold.py``, ``pipeline/config.stage_config``: a module named by its subpackage
PACKAGES = sorted(p.name for p in (ROOT / "src" / "carvana_seg").iterdir() if (p / "__init__.py").is_file())
MODULE_RE = re.compile(r"(?<![\w./<-])(" + "|".join(PACKAGES) + r")/(\w+)(?:\.py\b|\.(?=[a-z_]))")


def doc_files() -> list[Path]:
    return [
        ROOT / "README.md",
        ROOT / "config" / "README.md",
        ROOT / "CHANGELOG.md",
        *sorted((ROOT / "docs").glob("*.md")),
    ]


def code_text(text: str) -> str:
    """Code spans and fenced blocks of a Markdown text, one per line (commands and paths live there)."""
    blocks = re.findall(r"```[^\n]*\n(.*?)```", text, re.S)
    prose = re.sub(r"```[^\n]*\n.*?```", "", text, flags=re.S)
    return "\n".join(blocks + CODE_SPAN.findall(prose))


def named_paths(text: str) -> set[str]:
    found = set()
    for m in PATH_RE.finditer(code_text(text)):
        path = (m.group(1) + m.group(2)).rstrip(".,:;")
        nxt = m.string[m.end() : m.end() + 1]
        found.add(path + "*" if nxt in ("<", "*", "{") else path)
    return found


def exists(path: str) -> bool:
    rel = "src/" + path if path.startswith("carvana_seg/") else path
    return bool(glob.glob(str(ROOT / rel))) if "*" in rel else (ROOT / rel).exists()


def make_targets() -> set[str]:
    makefile = (ROOT / "Makefile").read_text()
    return set(re.findall(r"(?m)^([a-z][\w-]*):", makefile))


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {slug(h) for h in re.findall(r"(?m)^#+ (.+)$", text)}


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_path_a_doc_names_exists(doc):
    historic = HISTORIC.get(doc.name if doc.parent == ROOT else "", set())
    missing = sorted(p for p in named_paths(doc.read_text()) if p not in historic and not exists(p))
    assert missing == [], f"{doc.relative_to(ROOT)} names paths that do not exist: {missing}"


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_a_doc_names_exists(doc):
    names = {f"{pkg}/{mod}" for pkg, mod in MODULE_RE.findall(doc.read_text())}
    missing = sorted(n for n in names if not (ROOT / "src" / "carvana_seg" / f"{n}.py").is_file())
    assert missing == [], f"{doc.relative_to(ROOT)} names modules that do not exist: {missing}"


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_target_exists(doc):
    bad = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        if not dest.exists():
            bad.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target} (no such heading)")
    assert bad == [], f"{doc.relative_to(ROOT)}: broken links {bad}"


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_a_doc_names_exists(doc):
    code = code_text(doc.read_text())
    targets = make_targets()
    wrong = [f"make {t}" for t in re.findall(r"\bmake ([a-z][\w-]*)", code) if t not in targets]
    wrong += [
        f"stage {s}" for s in re.findall(r"(?:-m carvana_seg|\bcarvana-seg) ([a-z][\w-]*)", code) if s not in STAGES
    ]
    wrong += [
        f"module {m}" for m in re.findall(r"-m (carvana_seg\.[\w.]+)", code) if importlib.util.find_spec(m) is None
    ]
    assert wrong == [], f"{doc.relative_to(ROOT)} names commands that do not exist: {wrong}"


def test_readme_is_short_and_links_every_user_path():
    readme = (ROOT / "README.md").read_bytes()
    assert len(readme) <= README_LIMIT, f"README.md is {len(readme)} bytes (limit {README_LIMIT})"
    text = readme.decode()
    for page in (
        "docs/cluster.md",
        "docs/gpu.md",
        "docs/serve.md",
        "docs/kaggle.md",
        "docs/reruns.md",
        "docs/recipe.md",
        "config/README.md",
        "docs/benchmarks.md#where-the-numbers-are",
    ):
        assert f"]({page})" in text, page


def test_the_scanner_catches_a_missing_path_target_and_stage(tmp_path):
    """The checks above can fail: each kind of dangling name is found in a made-up page."""
    text = (
        "`docs/no-such-page.md`, `tests/nothing_*.py`, `src/carvana_seg/core/rle.py`, `results/<name>/`\n"
        "```bash\nmake no-such-target\npython -m carvana_seg no-such-stage --cfg x\nmake demo\n```\n"
    )
    paths = named_paths(text)
    assert {p for p in paths if not exists(p)} == {"docs/no-such-page.md", "tests/nothing_*"}
    assert "src/carvana_seg/core/rle.py" in paths and not any(p.startswith("results") for p in paths)
    assert MODULE_RE.findall("`training/model.load_checkpoint`, `data/<name>/raw`, `core/rle.py`") == [
        ("training", "model"),
        ("core", "rle"),
    ]
    code = code_text(text)
    assert re.findall(r"\bmake ([a-z][\w-]*)", code) == ["no-such-target", "demo"]
    assert "no-such-target" not in make_targets() and "demo" in make_targets()
    assert (
        slug("The demo DAG, stage by stage (`make demo`, rules' benchmark files)")
        == "the-demo-dag-stage-by-stage-make-demo-rules-benchmark-files"
    )


def test_every_test_file_the_code_and_environment_name_exists():
    """Comments and docstrings that point at a test (``tests/pipeline/test_environment.py checks ...``)."""
    sources = [
        ROOT / n
        for n in (
            "requirements.txt",
            "requirements-dev.txt",
            "environment.yml",
            "Snakefile",
            "Makefile",
            ".ci/run",
            "pyproject.toml",
            ".snakemake-workflow-catalog.yml",
        )
    ]
    for folder, pattern in (
        ("src", "*.py"),
        ("workflow", "*.smk"),
        ("tests", "*.py"),
        ("tests", "*.js"),
        ("benchmarks", "*.py"),
    ):
        sources += sorted((ROOT / folder).rglob(pattern))
    missing = sorted(
        {
            f"{src.relative_to(ROOT)}: {p}"
            for src in sources
            for p in re.findall(r"(?<![\w/])tests/[\w/]+\.py", src.read_text())
            if not (ROOT / p).is_file()
        }
    )
    assert missing == [], f"references to test files that do not exist: {missing}"


def test_the_workflow_catalog_names_existing_profiles():
    text = (ROOT / ".snakemake-workflow-catalog.yml").read_text()
    assert "--profile " not in text, "profiles are workflow profiles now: --workflow-profile <name>"
    names = re.findall(r"--workflow-profile (\w+)", text)
    assert names and all((ROOT / "profiles" / n / "profile.yaml").is_file() for n in names), names

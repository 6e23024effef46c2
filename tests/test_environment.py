"""requirements.txt (the .venv) and environment.yml (conda) pin the same packages and versions."""

from __future__ import annotations

import re

import yaml


def _pins(lines):
    out = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            out[re.sub(r"[-_.]+", "-", name.strip().lower())] = version.strip()
    return out


def test_requirements_and_environment_yml_agree(repo_root):
    req = _pins((repo_root / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((repo_root / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert req, "requirements.txt pins nothing"
    assert _pins(pip_section) == req


def test_torch_and_torchvision_are_pinned(repo_root):
    req = _pins((repo_root / "requirements.txt").read_text().splitlines())
    assert "torch" in req and "torchvision" in req and "segmentation-models-pytorch" in req


# Imported through torch rather than by name: torch.utils.tensorboard needs tensorboard, the dynamo ONNX exporter
# onnxscript.
IMPORTED_THROUGH_TORCH = {"tensorboard", "onnxscript"}


def test_pyproject_lists_every_runtime_dependency_the_package_imports(repo_root):
    """Every third-party distribution a module of src/carvana_seg imports is a pyproject dependency."""
    import ast
    import importlib.metadata as md
    import sys
    import tomllib

    modules: set[str] = set()
    for path in (repo_root / "src" / "carvana_seg").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    dists = md.packages_distributions()
    norm = lambda name: re.sub(r"[-_.]+", "-", name.lower())  # noqa: E731
    imported = {norm(d) for m in modules - set(sys.stdlib_module_names) - {"carvana_seg"} for d in dists.get(m, [m])}
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {norm(re.split(r"[<>=!~; \[]", d, maxsplit=1)[0]) for d in project}
    assert imported, "found no imports"
    assert imported | IMPORTED_THROUGH_TORCH <= declared, sorted(imported | IMPORTED_THROUGH_TORCH - declared)
    req = _pins((repo_root / "requirements.txt").read_text().splitlines())
    assert declared <= set(req), sorted(declared - set(req))  # and each has an exact pin

"""requirements.txt (the .venv) and environment.yml (conda) pin the same packages and versions; requirements-dev.txt
the test and style tools apart from them."""

from __future__ import annotations

import os
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

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name.lower())

    imported = {norm(d) for m in modules - set(sys.stdlib_module_names) - {"carvana_seg"} for d in dists.get(m, [m])}
    meta = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    project = meta["dependencies"] + meta["optional-dependencies"]["models"]
    declared = {norm(re.split(r"[<>=!~; \[]", d, maxsplit=1)[0]) for d in project}
    assert imported, "found no imports"
    assert imported | IMPORTED_THROUGH_TORCH <= declared, sorted(imported | IMPORTED_THROUGH_TORCH - declared)
    req = _pins((repo_root / "requirements.txt").read_text().splitlines())
    assert declared <= set(req), sorted(declared - set(req))  # and each has an exact pin


def _env_pip(path):
    env = yaml.safe_load(path.read_text())
    return next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)


def test_rule_environments_are_narrow_pinned_and_install_the_package(repo_root):
    """workflow/envs/*.yaml pin what requirements.txt pins; the light one has no torch; each installs the package
    through a post-deploy script beside it that runs the project's (tested in test_launch.py)."""
    req = _pins((repo_root / "requirements.txt").read_text().splitlines())
    base, torch_env = (_env_pip(repo_root / "workflow" / "envs" / f) for f in ("base.yaml", "torch.yaml"))
    for pins in (_pins(base), _pins(torch_env)):
        assert pins and all(req.get(k) == v for k, v in pins.items()), pins
    assert not {"torch", "torchvision", "segmentation-models-pytorch"} & set(_pins(base))
    assert set(_pins(base)) < set(_pins(torch_env))
    for name in ("base", "torch"):
        script = repo_root / "workflow" / "envs" / f"{name}.post-deploy.sh"
        assert os.access(script, os.X_OK) and "environment.post-deploy.sh" in script.read_text()


def test_each_rule_uses_the_environment_its_stage_needs(repo_root):
    """A rule whose stage imports torch (its codedeps closure) uses ENV_TORCH; every other rule ENV_BASE."""
    from carvana_seg.pipeline import codedeps

    seen = 0
    for smk in (repo_root / "workflow" / "rules").glob("*.smk"):
        for rule in re.split(r"(?m)^rule ", smk.read_text())[1:]:
            env = re.search(r"conda:\s+(\w+)", rule)
            stage = re.search(r"python -m carvana_seg ([\w-]+)", rule)
            if not stage:
                continue
            sources = "".join((codedeps.PACKAGE_DIR / s).read_text() for s in codedeps.stage_sources(stage.group(1)))
            needs_torch = re.search(r"(?m)^\s*(import|from) torch\b", sources) is not None
            assert env and env.group(1) == ("ENV_TORCH" if needs_torch else "ENV_BASE"), rule.split(":")[0]
            seen += 1
    assert seen >= 15


DEV_TOOLS = {"pytest", "pytest-xdist", "hypothesis", "playwright", "removebg", "ruff", "snakefmt"}


def test_test_and_style_tools_are_pinned_apart_from_the_runtime(repo_root):
    """requirements-dev.txt pins the test and style tools (pyproject's test and style extras) and nothing of the
    runtime; requirements.txt, environment.yml and the rule environments pin none of them, so a user, a GPU image or
    a wheelhouse installs no test tool; `make env` installs both files."""
    import tomllib

    dev = _pins((repo_root / "requirements-dev.txt").read_text().splitlines())
    req = _pins((repo_root / "requirements.txt").read_text().splitlines())
    assert set(dev) == DEV_TOOLS and not set(dev) & set(req), (dev, DEV_TOOLS & set(req))
    for env in ("environment.yml", "workflow/envs/base.yaml", "workflow/envs/torch.yaml"):
        assert not DEV_TOOLS & set(_pins(_env_pip(repo_root / env))), env
    extras = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    declared = {re.split(r"[<>=!~; \[]", d, maxsplit=1)[0] for d in extras["test"] + extras["style"]}
    assert DEV_TOOLS <= declared, DEV_TOOLS - declared
    assert "-r requirements.txt -r requirements-dev.txt" in (repo_root / "Makefile").read_text()

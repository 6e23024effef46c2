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

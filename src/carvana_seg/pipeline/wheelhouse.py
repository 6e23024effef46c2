"""What an offline GPU box lacks, as a list of exact wheels to download (``make wheelhouse``).

GPU nodes are often offline (cluster compute nodes, air-gapped boxes, Kaggle notebooks with the internet off) but
already have a PyTorch with CUDA. ``plan`` walks the project's requirements (``pyproject.toml``'s dependencies and
extras) through the requirements of the packages installed here (``importlib.metadata``), and keeps each package
the target does not already satisfy: by default everything but torch and torchvision (and what only they need);
with the target's ``pip freeze`` only what is missing there or outside the range asked for. A package the target
satisfies is not walked further: the target has its dependencies. Versions are this environment's (the pins of
``requirements.txt`` where it is built by ``make env``), so the wheelhouse installs what the tests ran against.

    python -m carvana_seg.pipeline.wheelhouse [--freeze TARGET_FREEZE] [--exclude torch torchvision]
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from carvana_seg.pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
DEFAULT_EXCLUDE = ("torch", "torchvision")  # the target's own CUDA build: never replaced by this project's
# what the pipeline runs (`weights`: the ImageNet file config/sample.yaml trains from); `test` only where the suite runs
DEFAULT_EXTRAS = ("models", "workflow", "weights")


def project_requirements(pyproject: Path, extras: tuple[str, ...] = DEFAULT_EXTRAS) -> list[Requirement]:
    """``[project].dependencies`` plus the optional-dependency groups ``extras`` of ``pyproject``."""
    try:
        project = tomllib.loads(Path(pyproject).read_text())["project"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{pyproject}: cannot read [project] ({exc})") from exc
    groups = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in groups]
    if unknown:
        raise ConfigError(f"{pyproject}: no optional-dependencies group(s) {unknown} (has {sorted(groups)})")
    return [Requirement(r) for r in [*project.get("dependencies", []), *(r for e in extras for r in groups[e])]]


def read_freeze(path: Path) -> dict[str, Version]:
    """``pip freeze`` output -> {canonical name: version}; editable, URL and comment lines are skipped."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"TARGET_FREEZE {path}: cannot read it ({exc.strerror})") from exc
    out: dict[str, Version] = {}
    for n, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-") or "==" not in line:
            continue  # -e ..., name @ url: not a released version to compare
        name, _, version = line.partition("==")
        try:
            out[canonicalize_name(name.strip())] = Version(version.strip().split(";")[0].strip())
        except InvalidVersion as exc:
            raise ConfigError(f"TARGET_FREEZE {path}, line {n}: {line!r} is not 'name==version' ({exc})") from exc
    return out


def _installed(name: str) -> metadata.Distribution | None:
    try:
        return metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return None


def plan(
    reqs: list[Requirement],
    freeze: dict[str, Version] | None = None,
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE,
    python_version: str | None = None,
) -> dict[str, str]:
    """{canonical name: version to download} for what a target with ``freeze`` (None: an unknown target, which
    has only ``exclude``) lacks. Markers are evaluated for ``python_version`` on Linux; versions come from this
    environment, which must hold every package walked (``make env`` builds it)."""
    env = dict(default_environment(), sys_platform="linux", platform_system="Linux")
    if python_version:
        env.update(python_version=".".join(python_version.split(".")[:2]), python_full_version=python_version)
    skip = {canonicalize_name(e) for e in exclude}
    out: dict[str, str] = {}
    seen: set[str] = set()
    todo = [(r, "pyproject.toml") for r in reqs]
    while todo:
        req, why = todo.pop()
        name = canonicalize_name(req.name)
        if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
            continue
        if name in skip:
            continue
        have = (freeze or {}).get(name)
        if have is not None and req.specifier.contains(have, prereleases=True):
            continue  # the target satisfies it (and so its dependencies)
        if name in seen:
            continue
        seen.add(name)
        dist = _installed(name)
        if dist is None:
            raise ConfigError(
                f"{req.name} (required by {why}) is not installed in {sys.prefix}: run `make env` "
                "first, the wheelhouse takes its versions from there"
            )
        out[name] = dist.version
        for line in dist.requires or []:
            try:
                sub = Requirement(line)
            except InvalidRequirement:
                continue
            if sub.marker is None or sub.marker.evaluate({**env, "extra": ""}):
                todo.append((sub, name))
    return dict(sorted(out.items()))


def build_requirements(pyproject: Path) -> list[Requirement]:
    """``[build-system].requires``: the editable install of the project builds offline from the wheelhouse too."""
    data = tomllib.loads(Path(pyproject).read_text())
    return [Requirement(r) for r in data.get("build-system", {}).get("requires", [])]


def wanted(
    pyproject: Path,
    freeze: dict[str, Version] | None,
    extras: tuple[str, ...] = DEFAULT_EXTRAS,
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE,
    python_version: str | None = None,
) -> dict[str, str]:
    """The wheelhouse's contents: ``plan`` of the project's requirements for the target, plus its build
    requirements whatever the target has (pip builds the editable install in an isolated environment, which
    takes setuptools from the wheelhouse, not from the target)."""
    out = plan(project_requirements(pyproject, extras), freeze, exclude, python_version)
    out.update(plan(build_requirements(pyproject), None, exclude, python_version))
    return dict(sorted(out.items()))


def download(wanted: dict[str, str], dest: Path, python_version: str, platforms: list[str]) -> list[str]:
    """``pip download`` each pinned wheel for ``python_version`` on ``platforms`` into ``dest`` (binary only); a
    package published as an sdist alone is built here into a wheel (``pip wheel --no-deps``). Returns the names
    that failed (empty when the wheelhouse is complete) and writes ``dest/requirements.txt`` for ``make env``."""
    import subprocess

    dest.mkdir(parents=True, exist_ok=True)
    target = [
        "--python-version",
        python_version,
        "--implementation",
        "cp",
        *(a for p in platforms for a in ("--platform", p)),
    ]
    failed = []
    for name, version in wanted.items():
        spec = f"{name}=={version}"
        pip = [sys.executable, "-m", "pip", "-q"]
        got = subprocess.run(
            [*pip, "download", "--no-deps", "--only-binary=:all:", *target, "-d", str(dest), spec],
            check=False,
            capture_output=True,
            text=True,
        )
        if got.returncode != 0:  # sdist only (pure Python, as a rule): a wheel built here installs anywhere
            got = subprocess.run(
                [*pip, "wheel", "--no-deps", "-w", str(dest), spec], check=False, capture_output=True, text=True
            )
        if got.returncode != 0:
            print(f"wheelhouse: {spec}: {got.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            failed.append(spec)
    (dest / "requirements.txt").write_text("".join(f"{n}=={v}\n" for n, v in wanted.items()))
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print name==version of every wheel an offline target lacks.")
    parser.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml")
    parser.add_argument("--freeze", type=Path, default=None, help="the target's `pip freeze` (TARGET_FREEZE)")
    parser.add_argument("--extras", nargs="*", default=list(DEFAULT_EXTRAS))
    parser.add_argument("--exclude", nargs="*", default=list(DEFAULT_EXCLUDE))
    parser.add_argument("--python-version", default=None, help="the target's Python (PYVER), for markers")
    parser.add_argument(
        "--download",
        type=Path,
        default=None,
        metavar="DIR",
        help="download the wheels into DIR (the wheelhouse) instead of printing the list",
    )
    parser.add_argument(
        "--platform",
        nargs="+",
        default=["manylinux2014_x86_64"],
        help="wheel platform tags the target accepts (PLATFORM)",
    )
    args = parser.parse_args(argv)
    try:
        freeze = read_freeze(args.freeze) if args.freeze else None
        todo = wanted(args.pyproject, freeze, tuple(args.extras), tuple(args.exclude), args.python_version)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.download is None:
        print("\n".join(f"{n}=={v}" for n, v in todo.items()))
        return 0
    failed = download(todo, args.download, args.python_version or "3.11", args.platform)
    size = sum(p.stat().st_size for p in args.download.glob("*.whl"))
    print(f"wheelhouse {args.download}: {len(todo) - len(failed)} of {len(todo)} packages, {size / 2**20:.1f} MiB")
    if failed:
        print(f"error: no wheel for {failed}: the wheelhouse is incomplete", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

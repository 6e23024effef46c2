"""The library source files each pipeline stage imports, so Snakemake can rerun a stage when its code changes.

Snakemake tracks a rule's own shell/run code, never the modules the command imports. Each rule therefore declares
``code=code("<stage>")`` (``workflow/rules/common.smk``) as inputs: the files found here by following the
``carvana_seg`` imports of the stage's module (``cli.STAGES``) transitively, statically (``ast``, nothing is
imported). Imports inside functions count too, and so does every ``__init__.py`` a module's import executes.
The dispatcher (``cli.py``, ``__main__.py``) is left out: it only routes to the stage, and adding a stage to it
must not rerun the whole pipeline. The paths are those of the installed package, i.e. the code that runs.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

PACKAGE = "carvana_seg"
PACKAGE_DIR = Path(__file__).resolve().parent
DISPATCHER = frozenset({f"{PACKAGE}.cli", f"{PACKAGE}.__main__"})


def module_file(module: str, root: Path = PACKAGE_DIR) -> Path | None:
    """Source file of a ``carvana_seg`` module (``x.py`` or ``x/__init__.py``), or None if it is no module."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = root.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _parents(module: str) -> list[str]:
    """The packages whose ``__init__`` an import of ``module`` runs (``a.b.c`` -> ``a``, ``a.b``)."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def direct_imports(module: str, root: Path = PACKAGE_DIR) -> set[str]:
    """``carvana_seg`` modules that ``module``'s source imports anywhere (top level or inside functions)."""
    path = module_file(module, root)
    if path is None:
        return set()
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from ..y import z
                base_parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                if module_file(f"{base}.{alias.name}", root) is not None:
                    found.add(f"{base}.{alias.name}")
    return {m for m in found if module_file(m, root) is not None}


@lru_cache(maxsize=None)
def module_closure(module: str, root: Path = PACKAGE_DIR) -> tuple[str, ...]:
    """``module`` and every ``carvana_seg`` module it imports, transitively (with parent packages), sorted."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        mod = todo.pop()
        if mod in seen or mod in DISPATCHER:
            continue
        seen.add(mod)
        todo.extend(_parents(mod))
        todo.extend(direct_imports(mod, root))
    return tuple(sorted(seen))


def stage_sources(stage: str, root: Path = PACKAGE_DIR) -> list[str]:
    """Absolute paths of the source files that ``python -m carvana_seg <stage>`` imports (the dispatcher aside)."""
    from carvana_seg.cli import STAGES

    if stage not in STAGES:
        raise KeyError(f"unknown stage '{stage}' (have {sorted(STAGES)})")
    files = {module_file(m, root) for m in module_closure(STAGES[stage][0], root)}
    return sorted(str(f) for f in files if f is not None)

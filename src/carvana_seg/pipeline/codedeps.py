"""Code fingerprints: what each pipeline stage computes, so Snakemake reruns a stage exactly when its code changes.

Snakemake tracks a rule's own shell command, never the modules that command imports. Each rule therefore carries
``params: code=code("<stage>")`` (``workflow/rules/common.smk``): a fingerprint of the library code that
``python -m carvana_seg <stage>`` imports, found by following the ``carvana_seg`` imports of the stage's module
(``stages.STAGES``) transitively and statically (``ast``; nothing is imported; imports inside functions count,
and so does every ``__init__.py`` an import executes).

The fingerprint hashes each module's *syntax tree* with docstrings removed, keyed by its dotted name. So:
- comments, docstrings, blank lines and formatting change nothing: no rerun;
- a change to what the code does (a loss term, a default) changes the fingerprint of exactly the stages that
  import that module: Snakemake's ``params`` trigger reruns them, and their newer outputs rerun what follows;
- no path is part of it: a project moved or mounted elsewhere keeps its finished jobs.
Renaming or moving a module changes the fingerprint of the stages importing it (the module name is part of the
code). Left out: the dispatcher (``cli``, ``__main__``), this module and the stage table, which only route.
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

PACKAGE = "carvana_seg"
PACKAGE_DIR = Path(__file__).resolve().parents[1]
ROUTING = frozenset(
    {f"{PACKAGE}.__main__", f"{PACKAGE}.pipeline.cli", f"{PACKAGE}.pipeline.codedeps", f"{PACKAGE}.pipeline.stages"}
)


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


@cache
def module_closure(module: str, root: Path = PACKAGE_DIR) -> tuple[str, ...]:
    """``module`` and every ``carvana_seg`` module it imports, transitively (with parent packages), sorted."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        mod = todo.pop()
        if mod in seen or mod in ROUTING:
            continue
        seen.add(mod)
        todo.extend(_parents(mod))
        todo.extend(direct_imports(mod, root))
    return tuple(sorted(seen))


def _stage_module(stage: str) -> str:
    from carvana_seg.pipeline.stages import STAGES

    if stage not in STAGES:
        raise KeyError(f"unknown stage '{stage}' (have {sorted(STAGES)})")
    return STAGES[stage][0]


def stage_modules(stage: str, root: Path = PACKAGE_DIR) -> tuple[str, ...]:
    """The ``carvana_seg`` modules that ``python -m carvana_seg <stage>`` imports (routing aside), sorted."""
    return module_closure(_stage_module(stage), root)


def stage_sources(stage: str, root: Path = PACKAGE_DIR) -> list[str]:
    """Source files of :func:`stage_modules`, relative to the package directory (for people: which files count)."""
    files = {module_file(m, root) for m in stage_modules(stage, root)}
    return sorted(f.relative_to(root).as_posix() for f in files if f is not None)


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    """Remove the docstring of the module and of every class and function (they document, they do not compute)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(getattr(body[0], "value", None), ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
    return tree


@cache
def normalized_source(path: Path) -> str:
    """The code of one file without comments, docstrings or formatting: its syntax tree, dumped (no positions)."""
    return ast.dump(_strip_docstrings(ast.parse(path.read_text(), filename=str(path))))


def stage_fingerprint(stage: str, root: Path = PACKAGE_DIR) -> str:
    """16 hex digits that change iff the code a stage runs changes (module names and syntax trees, no paths)."""
    h = hashlib.sha256()
    for module in stage_modules(stage, root):
        path = module_file(module, root)
        if path is not None:
            h.update(f"{module}\0{normalized_source(path)}\0".encode())
    return h.hexdigest()[:16]

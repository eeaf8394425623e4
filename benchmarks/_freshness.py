"""Whether a results table is still what the current code measures.

A table is current when none of the code it measured changed after its ``- commit:``: the script
named in its ``- command:``, ``benchmarks/_common.py``, the ``benchmarks/`` and ``examples/``
modules they import (at any depth: a module imported by an imported module counts), and every ``lightning_i2x`` module the script (or those examples) imports, directly, by
name in a string (a child interpreter's code), or through the package's own imports (grimp's
import graph, function-level imports included). A table made from a dirty tree (``+dirty``) is
never current; one whose commit is unknown, or not in this clone (a shallow clone), cannot be
judged, and is said so rather than passed.
"""

from __future__ import annotations

import ast
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "lightning_i2x"


@dataclass(frozen=True)
class Freshness:
    table: str
    commit: str
    verdict: str  # "current", "stale", "unknown"
    changed: tuple[str, ...] = ()
    reason: str = ""


def imported_modules(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports, at any depth of its code, and every string
    constant that is a dotted name (a child interpreter's ``import {module}`` is a string)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.replace(".", "").isidentifier():
            names.add(node.value)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)  # a submodule imported by name
    return names


def measured_files(script: Path, repo: Path = REPO, graph=None) -> set[str]:
    """The repository-relative files whose change can change what ``script`` measures."""
    import grimp  # a dev dependency (import-linter's graph)

    graph = graph or grimp.build_graph(PACKAGE, include_external_packages=False)
    sources = [p for p in (script, repo / "benchmarks" / "_common.py") if p.is_file()]
    todo = list(sources)
    while todo:  # sibling benchmark modules and examples, at any depth (shortcut.py -> shortcut_family -> demo_models)
        for name in imported_modules(todo.pop()):
            for local in (repo / "benchmarks" / f"{name}.py", repo / "examples" / f"{name}.py"):
                if local.is_file() and local not in sources:
                    sources.append(local)
                    todo.append(local)
    files = {src.relative_to(repo).as_posix() for src in sources}
    roots = {n for src in sources for n in imported_modules(src) if n == PACKAGE or n.startswith(PACKAGE + ".")}
    roots = {n for n in roots if n in graph.modules}
    modules = set(roots)
    for root in roots:
        modules |= graph.find_upstream_modules(root)
    for name in list(modules):  # importing a.b.c runs a/__init__ and a/b/__init__: their files count
        parts = name.split(".")
        modules.update(".".join(parts[:i]) for i in range(1, len(parts)))
    for name in modules:
        stem = repo / Path(*name.split("."))
        path = stem / "__init__.py" if (stem / "__init__.py").is_file() else stem.with_suffix(".py")
        if path.is_file():
            files.add(path.relative_to(repo).as_posix())
    return files


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)


def freshness(table: str, fields: dict[str, str], repo: Path = REPO, graph=None) -> Freshness:
    commit = fields.get("commit", "")
    command = fields.get("command", "").split()
    script = next((repo / w for w in command if w.startswith("benchmarks/") and w.endswith(".py")), None)
    if not commit or script is None or not script.is_file():
        return Freshness(table, commit, "unknown", reason="no commit or no benchmark script in its header")
    if "unknown" in commit:
        return Freshness(table, commit, "unknown", reason="made where the commit or its dirty state could not be read")
    if "+dirty" in commit:
        return Freshness(table, commit, "stale", reason="made from a tree with uncommitted changes to the measured code")
    if _git(repo, "cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        return Freshness(table, commit, "unknown", reason=f"commit {commit} is not in this clone (shallow?)")
    files = sorted(measured_files(script, repo, graph))
    committed = _git(repo, "diff", "--name-only", commit, "HEAD", "--", *files).stdout.split()
    uncommitted = _git(repo, "diff", "--name-only", "HEAD", "--", *files).stdout.split()
    changed = tuple(sorted(set(committed) | set(uncommitted)))
    return Freshness(table, commit, "stale" if changed else "current", changed)


def report(tables: dict, repo: Path = REPO) -> list[Freshness]:
    import grimp

    graph = grimp.build_graph(PACKAGE, include_external_packages=False)
    return [freshness(name, t.fields, repo, graph) for name, t in tables.items()]

"""Whether a results table is still what the current code measures.

A table is current when none of the code it measured changed after its ``- commit:``: the script
named in its ``- command:`` and ``benchmarks/_common.py``, whole; and the definitions those reach,
name by name (``Package``), in ``lightning_i2x`` and in the ``benchmarks/`` and ``examples/``
modules they import (at any depth): importing ``fit_srae`` measures ``fit_srae`` and what its code
refers to, not every function of its module or every module its subpackage re-exports, and
importing ``split`` from ``shortcut.py`` does not measure the refinement that script also runs.
A dotted name in a string counts as an import (a child interpreter's code, a patch target). A table made from a dirty
tree (``+dirty``) is never current; one whose commit is unknown, or not in this clone (a shallow
clone), cannot be judged, and is said so rather than passed. ``tests/benchmark_run.py`` checks the
rule against the functions each benchmark's smoke run executes.
"""

from __future__ import annotations

import ast
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "lightning_i2x"
LOCAL = "<local>"  # a binding to a definition of the module itself: (LOCAL, name)
WHOLE = "*"  # a module used whole: any change to it counts
EFFECTS = "<on import>"  # what a module does on import whatever is used
NAMED = "<named>"  # (module, NAMED): a module named in a string (a patch target), not imported there

Ref = tuple[str, "str | None"]  # (module, name in it), or (module, None) for the module object


@dataclass(frozen=True)
class Freshness:
    table: str
    commit: str
    verdict: str  # "current", "stale", "unknown"
    changed: tuple[str, ...] = ()  # files, or "file:definition" where only some of a module was measured
    reason: str = ""


def imported_refs(path: Path) -> set[Ref]:
    """``(module, name)`` for each ``from module import name`` and ``(module, None)`` for each
    ``import module``, at any depth of the code, and in a string that is code (a child
    interpreter's); and each string that is a dotted name (``"lightning_i2x.record.probe_pass"``)."""
    return _refs(ast.parse(path.read_text(), str(path)))


def _refs(tree: ast.AST, strings_only: bool = False) -> set[Ref]:
    refs: set[Ref] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            if "." in text and text.replace(".", "").isidentifier():
                refs.add((text, NAMED))
            elif "import " in text:
                try:
                    refs |= _refs(ast.parse(text))
                except SyntaxError:  # a template (``import {module}``), or prose: its plain import lines
                    for words in (line.split() for line in text.splitlines()):
                        if len(words) >= 2 and words[0] == "import" and words[1].replace(".", "").isidentifier():
                            refs.add((words[1], None))
                        elif len(words) >= 4 and words[0] == "from" and words[2] == "import":
                            refs.update((words[1], w.strip("(), ")) for w in words[3:] if w.strip("(), ").isidentifier())
        elif strings_only:
            continue
        elif isinstance(node, ast.Import):
            refs.update((a.name, None) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            refs.update((node.module, None if a.name == "*" else a.name) for a in node.names)
    return refs


def _top_level(tree: ast.Module) -> Iterator[tuple[ast.stmt, bool]]:
    """Each top-level statement, inside ``if``/``try`` blocks too, and whether it runs on import
    (a ``TYPE_CHECKING`` block binds names for readers but runs nothing; ``__main__`` blocks are skipped)."""
    body = [(node, True) for node in tree.body]
    while body:
        node, runs = body.pop(0)
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            continue
        if isinstance(node, (ast.If, ast.Try)):
            runs = runs and not (isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"))
            inner = [*node.body, *node.orelse, *(s for h in getattr(node, "handlers", []) for s in h.body), *getattr(node, "finalbody", [])]
            body[:0] = [(s, runs) for s in inner]
        yield node, runs


def _targets(node: ast.stmt) -> list[ast.expr]:
    """The targets of an assignment, tuples unpacked (``a, b = ...``); an item or attribute stays."""
    targets = list(node.targets if isinstance(node, ast.Assign) else [node.target])
    while any(isinstance(t, (ast.Tuple, ast.List)) for t in targets):
        targets = [e for t in targets for e in (t.elts if isinstance(t, (ast.Tuple, ast.List)) else [t])]
    return targets


def _binds_names(node: ast.stmt) -> bool:
    return isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and all(isinstance(t, ast.Name) for t in _targets(node))


def _is_effect(node: ast.stmt) -> bool:
    """A top-level statement run for what it does: a call, an item or attribute assignment."""
    return not (isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.If, ast.Try))
                or _binds_names(node) or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)))


def definitions(source: str) -> dict[str, str]:
    """What each top-level name of a module is (its def, class, assignment or import, dumped without
    positions, so that moving code or editing a comment changes nothing), ``EFFECTS`` (its statements
    run for their effect) and ``WHOLE`` (the module)."""
    tree = ast.parse(source)
    found: dict[str, list[str]] = {EFFECTS: []}
    for node, _ in _top_level(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            source = f"{'.' * node.level}{node.module or ''} " if isinstance(node, ast.ImportFrom) else ""
            for a in node.names:  # the one name's import, not the statement's other names
                found.setdefault(a.asname or a.name.split(".")[0], []).append(f"import {source}{a.name} as {a.asname}")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.setdefault(node.name, []).append(ast.dump(node))
        elif _binds_names(node):
            for target in _targets(node):
                found.setdefault(target.id, []).append(ast.dump(node))
        elif _is_effect(node):
            found[EFFECTS].append(ast.dump(node))
    return {name: "\n".join(dumps) for name, dumps in found.items()} | {WHOLE: ast.dump(tree)}


@dataclass
class _Module:
    bindings: dict[str, Ref]  # top-level name -> (LOCAL, name), (module, name) or (module, None): a module object
    uses: dict[str, list[Ref]]  # a top-level definition's name -> the names its code refers to, resolved
    runs_imports: list[str]  # the modules its top-level imports (not under TYPE_CHECKING) import
    on_import: list[Ref]  # what acts on import whatever is used: effect statements, decorators, defaults
    lazy: set[str]  # names bound only under TYPE_CHECKING: at run time a module ``__getattr__`` gives them
    in_strings: set[Ref]  # dotted names and code in its strings (what a helper's strings import)


class Package:
    """``lightning_i2x``'s code, and the helper modules of ``benchmarks/`` and ``examples/`` (by
    their bare names, as the scripts import them), resolved name by name, from their source.

    Using a name defined in a module uses that definition (a function, a class with its methods and
    bases, an assigned value) and, in turn, every name its code refers to: the module's other
    definitions and its imports, function-level imports included. A subpackage's ``__init__`` that
    re-exports a name is passed through: the re-export counts, its other names do not. A module
    object read only by attribute (``viz.plot_sag(...)``) brings the attributes read; used another
    way (or a name that does not resolve: a module ``__getattr__``, a star import), the whole module.
    What runs on import counts for every script that imports the package: statements run for their
    effect (``_deprecated.install()``; such a module that also defines code is used whole, since the
    effect may register its functions elsewhere), decorators, metaclasses, and calls in default
    values, class bodies and assigned values (``options=SRAEOptions()`` runs its ``__post_init__``).
    A helper module used at all runs on import: its effects, what its top level imports (the
    package's import, another helper's), the calls on its top level, and any dotted name or code in
    a string of it count; its effects (warning filters, ``sys.path``) count by what they name, not
    as a registration of the whole module. ``import x`` costs its import only for the package's modules.
    Python can reach code by other ways (``getattr`` with a computed name, ``globals()``);
    ``tests/benchmark_run.py`` checks the rule against the functions the benchmarks' runs execute.
    """

    def __init__(self, repo: Path = REPO):
        self.repo = repo
        self.paths = {".".join(p.relative_to(repo).with_suffix("").parts).removesuffix(".__init__"): p
                      for p in sorted((repo / PACKAGE).rglob("*.py")) if p.name != "__main__.py"}
        self.helpers = {p.stem: p for folder in ("examples", "benchmarks") for p in sorted((repo / folder).glob("*.py"))}
        self.paths.update(self.helpers)  # benchmarks/ wins a name both folders have, as on the scripts' sys.path
        self._modules: dict[str, _Module] = {}

    def measured(self, refs) -> dict[str, set[str]]:
        """Repository-relative file -> the top-level names of it (``WHOLE``, ``EFFECTS``) whose change
        can change what code importing ``refs`` does."""
        self._used: dict[str, set[str]] = {}
        self._seen: set[Ref] = set()
        self._imported: set[str] = set()
        refs = [r for r in refs if _in_package(r[0]) or r[0].split(".")[0] in self.helpers]
        if any(_in_package(m) for m, _ in refs):
            self._import_package()
        for ref in refs:
            self._use(ref)
        for module in {m for m, name in refs if name is None and m in self.paths and _in_package(m)}:  # ``import x``: its cost
            for imported in self.imported_on_import(module):
                self._mark(imported, WHOLE)
        return self._used

    def _import_package(self) -> None:
        """Importing anything of the package runs its __init__, and so every module it imports."""
        if PACKAGE in self._imported:
            return
        self._imported.add(PACKAGE)
        for module in self.imported_on_import():
            self._mark(module, EFFECTS)
            for ref in self._parse(module).on_import:
                self._use(ref)

    def _import_helper(self, module: str) -> None:
        """What importing a helper module runs (class docstring)."""
        if module in self._imported:
            return
        self._imported.add(module)
        parsed = self._parse(module)
        for ref in [*parsed.on_import, *parsed.in_strings]:
            self._use(ref)
        for imported in parsed.runs_imports:
            if _in_package(imported):
                self._import_package()
            elif imported in self.helpers:
                self._mark(imported, EFFECTS)
                self._import_helper(imported)

    def imported_on_import(self, module: str = PACKAGE) -> list[str]:
        """The modules importing ``module`` imports."""
        todo, seen = [module], {module}
        while todo:
            for candidate in self._parse(todo.pop()).runs_imports:
                if candidate in self.paths and candidate not in seen:
                    seen.add(candidate)
                    todo.append(candidate)
        return sorted(seen)

    def _mark(self, module: str, name: str) -> None:
        parts = module.split(".")
        for i in range(1, len(parts)):  # importing a.b.c runs a/__init__ and a/b/__init__
            if ".".join(parts[:i]) in self.paths:
                self._mark(".".join(parts[:i]), EFFECTS)
        self._used.setdefault(self.paths[module].relative_to(self.repo).as_posix(), set()).add(name)

    def _use(self, ref: Ref) -> None:
        if ref in self._seen:
            return
        self._seen.add(ref)
        module, name = ref
        if module not in self.paths:
            head, _, tail = module.rpartition(".")  # a dotted string naming an attribute: module.name
            if head in self.paths and name == NAMED:
                self._use((head, tail))
            return
        parsed = self._parse(module)
        self._mark(module, EFFECTS)
        if module in self.helpers:
            self._import_helper(module)
        if name is None or name == NAMED:  # the module object: any of its names
            self._mark(module, WHOLE)
            for bound in parsed.bindings:
                self._use((module, bound))
        elif f"{module}.{name}" in self.paths:  # a submodule imported by name
            self._use((f"{module}.{name}", None))
        elif name not in parsed.bindings:  # a module __getattr__, a star import
            self._use((module, None))
        else:
            self._mark(module, name)
            if name in parsed.lazy and "__getattr__" in parsed.bindings:  # what gives the name at run time
                self._use((module, "__getattr__"))
            if parsed.bindings[name][0] != LOCAL:
                self._use(parsed.bindings[name])
            for used in parsed.uses.get(name, []):
                self._use(used)

    def _parse(self, module: str) -> _Module:
        if module in self._modules:
            return self._modules[module]
        path = self.paths[module]
        tree = ast.parse(path.read_text(), str(path))
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]

        def origin(node: ast.ImportFrom) -> str:
            if not node.level:
                return node.module or ""
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            return f"{base}.{node.module}" if node.module else base

        bindings: dict[str, Ref] = {}
        nodes: dict[str, list[ast.AST]] = {}
        runs_imports: list[str] = []
        lazy: set[str] = set()
        effects: list[ast.AST] = []  # statements run for their effect
        decorators: list[ast.AST] = []  # decorators and metaclasses: they run on import, and may register
        evaluated: list[ast.AST] = []  # evaluated on import: defaults, class bodies, values
        for node, runs in _top_level(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    bindings[a.asname or a.name.split(".")[0]] = (a.name if a.asname else a.name.split(".")[0], None)
                    runs_imports += [a.name] if runs else []
            elif isinstance(node, ast.ImportFrom):
                for a in (a for a in node.names if a.name != "*"):
                    bindings[a.asname or a.name] = (origin(node), a.name)
                    runs_imports += [origin(node), f"{origin(node)}.{a.name}"] if runs else []
                    (lazy.discard if runs else lazy.add)(a.asname or a.name)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                bindings[node.name] = (LOCAL, node.name)
                nodes.setdefault(node.name, []).append(node)
                functions = [node] if not isinstance(node, ast.ClassDef) else [
                    s for s in node.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))]
                decorators += [*node.decorator_list, *getattr(node, "keywords", []), *(d for f in functions for d in f.decorator_list)]
                evaluated += [e for f in functions for e in (*f.args.defaults, *f.args.kw_defaults) if e is not None]
                if isinstance(node, ast.ClassDef):
                    evaluated += [s for s in node.body if s not in functions]
            elif _binds_names(node):
                for target in _targets(node):
                    bindings[target.id] = (LOCAL, target.id)
                    nodes.setdefault(target.id, []).append(node.value or ast.Pass())
                evaluated.append(node.value or ast.Pass())
            elif _is_effect(node):
                effects.append(node)
        # a module object bound to a name that is only ever read by attribute: the attributes read count
        readers = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)}
        whole = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in readers}

        def local(ref: Ref) -> Ref:
            return (module, ref[1]) if ref[0] == LOCAL else ref

        def refs(node: ast.AST) -> list[Ref]:
            found: list[Ref] = []
            modules: dict[str, str] = {}  # function-level ``from x import submodule``
            for n in ast.walk(node):
                if isinstance(n, ast.ImportFrom):
                    for a in n.names:
                        sub = f"{origin(n)}.{a.name}"
                        if sub in self.paths and (a.asname or a.name) not in whole:
                            modules[a.asname or a.name] = sub
                        else:
                            found.append((origin(n), None if a.name == "*" else a.name))
                elif isinstance(n, ast.Import):
                    found += [(a.name, None) for a in n.names]
            for n in ast.walk(node):
                if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name):
                    bound = bindings.get(n.value.id)
                    sub = modules.get(n.value.id) or (bound and bound[0] != LOCAL and (
                        bound[0] if bound[1] is None else f"{bound[0]}.{bound[1]}"))
                    if sub in self.paths and n.value.id not in whole:
                        found.append((sub, n.attr))
                    elif bound:
                        found.append(local(bound))
                elif isinstance(n, ast.Name) and n.id in bindings and id(n) not in readers:
                    found.append(local(bindings[n.id]))
            return found

        def called(node: ast.AST) -> list[Ref]:
            """What the calls in an expression evaluated on import call (a value itself matters where it is used)."""
            return [r for c in ast.walk(node) if isinstance(c, ast.Call) for r in refs(c.func)]

        uses = {name: [r for n in defs for r in refs(n)] for name, defs in nodes.items()}
        on_import = [r for e in (*effects, *decorators) for r in refs(e)] + [r for e in evaluated for r in called(e)]
        if module not in self.helpers and effects and any(
                isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) for d in nodes.values() for n in d):
            # an effect may register this module's functions elsewhere (a helper's: a warning filter, sys.path)
            on_import.append((module, None))
        self._modules[module] = _Module(bindings, uses, runs_imports, on_import, lazy, _refs(tree, strings_only=True))
        return self._modules[module]


def _in_package(module: str) -> bool:
    return module == PACKAGE or module.startswith(PACKAGE + ".")


def measured_definitions(script: Path, repo: Path = REPO, package: Package | None = None) -> dict[str, set[str]]:
    """Repository-relative file -> what of it (``WHOLE``, or top-level names) ``script`` measures."""
    sources = [p for p in (script, repo / "benchmarks" / "_common.py") if p.is_file()]
    package = package or Package(repo)
    used = package.measured({r for src in sources for r in imported_refs(src)})
    return used | {src.relative_to(repo).as_posix(): {WHOLE} for src in sources}


def measured_files(script: Path, repo: Path = REPO, package: Package | None = None) -> set[str]:
    """The repository-relative files some of whose code ``script`` measures."""
    return set(measured_definitions(script, repo, package))


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)


def changed_definitions(repo: Path, commit: str, measured: dict[str, set[str]]) -> list[str]:
    """The measured files, or ``file:name`` of the measured definitions, that differ between
    ``commit`` and the working tree."""
    files = sorted(measured)
    committed = _git(repo, "diff", "--name-only", commit, "HEAD", "--", *files).stdout.split()
    uncommitted = _git(repo, "diff", "--name-only", "HEAD", "--", *files).stdout.split()
    changed = []
    for file in sorted(set(committed) | set(uncommitted)):
        old = _git(repo, "show", f"{commit}:{file}")
        path = repo / file
        if WHOLE in measured[file] or not path.is_file():
            changed.append(file)
            continue
        before = definitions(old.stdout if old.returncode == 0 else "")  # a new module: every measured name is new
        now = definitions(path.read_text())
        changed += [f"{file}:{name}" for name in sorted(measured[file]) if before.get(name) != now.get(name)]
    return changed


def freshness(table: str, fields: dict[str, str], repo: Path = REPO, package: Package | None = None) -> Freshness:
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
    changed = tuple(changed_definitions(repo, commit, measured_definitions(script, repo, package)))
    return Freshness(table, commit, "stale" if changed else "current", changed)


def report(tables: dict, repo: Path = REPO) -> list[Freshness]:
    package = Package(repo)
    return [freshness(name, t.fields, repo, package) for name, t in tables.items()]

"""The shape of runner/ (issue 24), measured by reading its source: layers as packages, no import
cycles (imports inside functions count too), backends' names known only to runner/backends/,
small classes and functions. Each figure is what a newcomer relies on to find their way."""

from __future__ import annotations

import ast
from pathlib import Path

RUNNER = Path(__file__).resolve().parents[1] / "runner"
BACKEND_NAMES = ("local", "modal", "docker", "vast", "slurm", "kaggle")
MAX_TOP_LEVEL_MODULES = 12
MAX_CLASS_LINES = 250
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module under runner/ (a package is its __init__)."""
    found = {}
    for path in RUNNER.rglob("*.py"):
        parts = path.relative_to(RUNNER.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The runner modules `name` imports, at any depth in the file (functions included)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target.startswith("runner"):
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph = {name: _imports(path, name, known) for name, path in modules.items()}
    # A package's __init__ that a module imports is a dependency on the package, not on its siblings:
    # keep edges to packages only where the package's own __init__ holds code the module uses.
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    import sys

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def _is_package_init_only(graph: dict[str, set[str]], name: str) -> bool:
    return (RUNNER.parent / Path(*name.split(".")) / "__init__.py").exists()


def test_no_import_cycles_even_through_imports_inside_functions():
    graph = _graph()
    # an edge into a package means its __init__: a child importing its own package's __init__
    # (which only documents the package) is no dependency of the package on the child
    for name, deps in graph.items():
        for dep in list(deps):
            if name.startswith(dep + ".") and _is_package_init_only(graph, dep) and not graph.get(dep):
                deps.discard(dep)
    assert _cycles(graph) == []


def test_at_most_twelve_modules_directly_in_runner():
    top = [p for p in RUNNER.iterdir() if p.suffix == ".py" and p.name != "__init__.py"]
    assert len(top) <= MAX_TOP_LEVEL_MODULES, sorted(p.name for p in top)


def _compares_with_a_backend_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Compare):
        for part in [node.left, *node.comparators]:
            values = part.elts if isinstance(part, (ast.Tuple, ast.List, ast.Set)) else [part]
            for value in values:
                if isinstance(value, ast.Constant) and value.value in BACKEND_NAMES:
                    return value.value
    return None


def test_nothing_outside_the_backends_branches_on_a_backends_name():
    found = []
    for path in RUNNER.rglob("*.py"):
        if (RUNNER / "backends") in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            name = _compares_with_a_backend_name(node)
            if name:
                found.append(f"{path.relative_to(RUNNER.parent)}:{node.lineno} compares with {name!r}")
    assert found == []


def test_no_class_over_250_lines_and_no_function_over_60():
    too_long = []
    for path in RUNNER.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            limit = (MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else
                     MAX_FUNCTION_LINES if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None)
            if limit and node.end_lineno - node.lineno + 1 > limit:
                too_long.append(f"{path.relative_to(RUNNER.parent)}:{node.lineno} {node.name}: "
                                f"{node.end_lineno - node.lineno + 1} lines")
    assert too_long == []


def test_every_package_says_what_it_is_and_what_it_may_import():
    for init in RUNNER.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and "import" in doc.lower(), f"{init.relative_to(RUNNER.parent)} does not say what it may import"


def test_the_registry_knows_every_backend_the_spec_allows_and_no_other():
    from runner.backends.registry import CLASSES, create_backend
    from runner.spec.model import BACKENDS

    assert list(CLASSES) == list(BACKENDS)
    for name in BACKENDS:
        backend = create_backend(name)
        assert backend.name == name

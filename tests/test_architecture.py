"""The package's shape, checked from its source: folders by role whose imports only go down,
no import circle, no module over 500 lines, no class over 300.

The layers (README, "Development"): ``adapters → capture → record → store``, and ``analysis →
store`` beside them, never importing the recording side; ``errors`` below everything; the CLI,
the reference experiment, the legacy format and the package's ``__init__`` on top. Every
import counts, also one inside a function or under ``TYPE_CHECKING``. Run alone with
``pytest tests/test_architecture.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "src" / "zarrec"
MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 300

# The roles each role may import besides its own modules; the top may import every role.
MAY_IMPORT = {
    "errors": set(),
    "store": {"errors"},
    "record": {"errors", "store"},
    "capture": {"errors", "store", "record"},
    "adapters": {"errors", "store", "record", "capture"},
    "analysis": {"errors", "store"},
    "branching": {"errors", "store"},
}
TOP = "top"


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ["zarrec", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _role(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in MAY_IMPORT else TOP


def _imports(module: str) -> set[str]:
    """The package's modules that ``module`` imports: ``from a.b import c`` imports module
    ``a.b.c`` if there is one, else ``a.b`` (as import-linter counts them)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {name for name in found if name in MODULES}


GRAPH = {module: _imports(module) - {module} for module in MODULES}


def test_every_import_goes_down_the_layers():
    wrong = [
        f"{module} ({_role(module)}) imports {imported} ({_role(imported)})"
        for module, imports in GRAPH.items()
        for imported in sorted(imports)
        if _role(module) != TOP and _role(imported) != _role(module) and _role(imported) not in MAY_IMPORT[_role(module)]
    ]
    assert wrong == []


def test_no_import_circle():
    circles, done = [], set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            circles.append(" → ".join([*path[path.index(module):], module]))
            return
        if module in done:
            return
        for imported in sorted(GRAPH[module]):
            visit(imported, [*path, module])
        done.add(module)

    for module in MODULES:
        visit(module, [])
    assert circles == []


def test_the_tests_mirror_the_package():
    """``tests/capture/test_probe.py`` tests ``zarrec/capture/probe.py``, and so on."""
    tests = Path(__file__).parent
    about_the_whole = {"test_architecture.py", "test_benchmarks.py", "test_readme.py"}
    unmatched = [
        str(test.relative_to(tests))
        for test in tests.rglob("test_*.py")
        if test.name not in about_the_whole
        and not (PACKAGE / test.parent.relative_to(tests) / test.name.removeprefix("test_")).is_file()
    ]
    assert unmatched == []


def test_no_module_over_500_lines():
    long = {module: n for module, path in MODULES.items() if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_no_class_over_300_lines():
    long = {}
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and (n := node.end_lineno - node.lineno + 1) > MAX_CLASS_LINES:
                long[f"{module}.{node.name}"] = n
    assert long == {}

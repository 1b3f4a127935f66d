"""The recipes/ layout: imports point one way (entry scripts -> systems -> toyworld/common/metrics -> modeling and
processing), with no cycle, and the entry scripts stay thin."""

import ast
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
PACKAGE = "groundvlm.recipes"
ENTRY_SCRIPTS = ("pin", "vpgtrans", "groma")
MAX_ENTRY_LINES = 180


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(RECIPES).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([PACKAGE, *parts])


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in RECIPES.rglob("*.py") if "__pycache__" not in p.parts}


def _imports(name: str, path: Path) -> set[str]:
    """Every groundvlm.recipes module `path` imports, at top level or inside a function (relative ones resolved)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found.update(t for t in targets if t == PACKAGE or t.startswith(PACKAGE + "."))
    return found


def _layer(module: str) -> str:
    rest = module.removeprefix(PACKAGE).lstrip(".").split(".")
    return rest[0] if rest[0] else "recipes"


MODULES = _modules()
IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}
ENTRY_MODULES = {f"{PACKAGE}.{e}" for e in ENTRY_SCRIPTS}


def test_the_layers_exist():
    layers = {_layer(m) for m in MODULES}
    assert {"common", "toyworld", "systems", "metrics", "pin", "vpgtrans"} <= layers


@pytest.mark.parametrize("layer", ["toyworld", "common", "metrics"])
def test_lower_layers_import_no_system_and_no_entry_script(layer):
    for name, imported in IMPORTS.items():
        if _layer(name) != layer:
            continue
        bad = {i for i in imported if _layer(i) == "systems" or i in ENTRY_MODULES}
        assert not bad, f"{name} imports {sorted(bad)}"


def test_common_imports_no_toyworld():
    for name, imported in IMPORTS.items():
        if _layer(name) == "common":
            assert not {i for i in imported if _layer(i) == "toyworld"}, name


def test_no_module_imports_an_entry_script():
    for name, imported in IMPORTS.items():
        bad = imported & ENTRY_MODULES
        assert not bad, f"{name} imports the entry script(s) {sorted(bad)}"


def test_no_import_cycle():
    graph = {name: {i for i in imported if i in MODULES and i != name} for name, imported in IMPORTS.items()}
    # a package's __init__ importing its own submodules is the package's public API, not a cycle
    for name, targets in graph.items():
        graph[name] = {t for t in targets if not (MODULES[name].name == "__init__.py" and t.startswith(name + "."))}
        graph[name] = {t for t in graph[name] if not (MODULES[t].name == "__init__.py" and name.startswith(t + "."))}
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt) :] + [nxt]))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])


@pytest.mark.parametrize("script", ENTRY_SCRIPTS)
def test_entry_scripts_are_thin(script):
    path = RECIPES / f"{script}.py"
    if not path.exists():
        pytest.skip(f"recipes/{script}.py does not exist yet")
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_ENTRY_LINES, f"recipes/{script}.py has {lines} lines (> {MAX_ENTRY_LINES})"

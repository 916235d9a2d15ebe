"""The house rules: imports run one way through the pipeline, and no module cycles."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "volnas"

# Each package may import itself and the packages before it, never one after it.
LAYERS = ("core", "data", "models", "training", "search", "deploy", "explain", "benchmark",
          "cli")
TOP = {"__init__": -1, "__main__": len(LAYERS), "api": len(LAYERS)}


def _rank(module: str) -> int | None:
    """Layer of ``volnas.<part>...`` (None for names outside volnas)."""
    parts = module.split(".")
    if parts[0] != "volnas":
        return None
    if len(parts) == 1:
        return -1  # the package itself (its __version__)
    if parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    if parts[1].startswith("__") and parts[1] != "__main__":
        return -1  # the package's own attributes (__version__)
    return TOP.get(parts[1], len(LAYERS))


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, module) of every volnas import in a file, at any depth (lazy imports too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("volnas")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("volnas"):
                # `from volnas.x import y` may name a submodule y
                out += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
    return out


def upward_imports(root: Path) -> list[str]:
    """``file:line: a -> b`` for every import of a later layer than the importer's own."""
    bad = []
    for path in sorted(root.rglob("*.py")):
        me = module_name(path, root)
        mine = _rank(me)
        for line, target in imports_of(path, root):
            theirs = _rank(target)
            if mine is not None and theirs is not None and theirs > mine:
                bad.append(f"{path.relative_to(root.parent)}:{line}: {me} -> {target}")
    return bad


def module_cycles(root: Path) -> list[list[str]]:
    """Import cycles between modules (lazy imports included)."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}

    def resolve(target: str) -> str | None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    graph = {m: {t for _, imp in imports_of(p, root) if (t := resolve(imp)) and t != m}
             for m, p in modules.items()}
    # a package's __init__ re-exporting its modules is not a cycle through them
    for m in graph:
        graph[m] = {t for t in graph[m] if not m.startswith(t + ".")}
    cycles, state = [], {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    return cycles


def test_imports_run_one_way() -> None:
    assert upward_imports(SRC) == []


def test_no_module_import_cycles() -> None:
    assert module_cycles(SRC) == []


def test_the_checks_catch_a_planted_upward_import_and_cycle(tmp_path: Path) -> None:
    root = tmp_path / "volnas"
    for pkg in ("data", "search", "cli"):
        (root / pkg).mkdir(parents=True)
        (root / pkg / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "data" / "reader.py").write_text("def f():\n    from volnas.search.run import x\n")
    (root / "search" / "run.py").write_text("from volnas.data import reader\nx = 1\n")
    (root / "cli" / "a.py").write_text("from volnas.cli import b\n")
    (root / "cli" / "b.py").write_text("from . import a\n")
    assert upward_imports(root) == [
        "volnas/data/reader.py:2: volnas.data.reader -> volnas.search.run.x"]
    cycles = {tuple(c) for c in module_cycles(root)}
    assert ("volnas.cli.a", "volnas.cli.b", "volnas.cli.a") in cycles
    assert ("volnas.data.reader", "volnas.search.run", "volnas.data.reader") in cycles

"""The layer order of DESIGN.md, enforced by reading every module's imports (ast).

Data flows down: a module may import from its own package or from a lower layer, never
from a higher one or a sibling package of the same layer, and modules never form an import
cycle (function-level imports count: a lazy import is still a dependency). A failure names
the modules.
"""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "python" / "actspace"

# top-level part of actspace -> layer (lower numbers sit below higher ones; DESIGN.md)
LAYERS = {
    "_io": 0, "_core": 0, "_core_cuda_emulated": 0, "reference": 0, "assets": 0,
    "ops": 1,
    "stats": 2, "distributed": 2,
    "model": 3,
    "capture": 4,
    "decompose": 5,
    "steer": 6, "attribution": 6, "interp": 6,
    "report": 7,
    "pipeline": 8,
    "cli": 9,
    "__init__": 10,     # the package root only holds the lazy public table
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(path: Path, module: str) -> set[str]:
    """actspace modules imported anywhere in path (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    here = module.split(".") if is_pkg else module.split(".")[:-1]
    out: set[str] = set()

    def visit(node):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for n in node.orelse:
                visit(n)
            return
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "actspace")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "actspace":
                # `from . import x` may name a submodule: record the most specific name
                for a in node.names:
                    out.add(f"{target}.{a.name}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for imp in _imports(path, name):
            # reduce "actspace.a.b.Name" to the longest prefix that is a module
            parts = imp.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()
            if parts and ".".join(parts) != name:
                deps.add(".".join(parts))
        graph[name] = deps
    return graph


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_part_has_a_layer():
    parts = {_part(m) for m in _graph()}
    missing = sorted(p for p in parts if p not in LAYERS)
    assert not missing, f"add these parts of actspace to LAYERS (and DESIGN.md): {missing}"


def _upward(graph) -> list[str]:
    bad = []
    for mod, deps in graph.items():
        mine = _part(mod)
        for dep in deps:
            theirs = _part(dep)
            if theirs == mine or dep == "actspace":
                continue
            if LAYERS.get(theirs, 99) >= LAYERS.get(mine, -1):
                bad.append(f"{mod} (layer {LAYERS.get(mine)}) imports {dep} "
                           f"(layer {LAYERS.get(theirs)})")
    return sorted(bad)


def _cycles(graph) -> list[str]:
    cycles, state, stack = [], {}, []

    def dfs(node):
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                dfs(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            dfs(node)
    return cycles


def test_no_upward_or_sideways_import():
    bad = _upward(_graph())
    assert not bad, "imports against DESIGN.md's layer order:\n" + "\n".join(bad)


def test_no_import_cycle():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_a_cycle_and_an_upward_import():
    """The checker is not vacuous: relative imports resolve to real modules, and a planted
    cycle and upward import are reported by name."""
    g = _graph()
    assert "actspace.capture.store" in g and "actspace.ops" in g
    assert any(d.startswith("actspace.") for d in g["actspace.capture.writer"])
    planted = {"actspace.ops.a": {"actspace.capture.b"}, "actspace.capture.b": {"actspace.ops.a"}}
    assert _upward(planted) == ["actspace.ops.a (layer 1) imports actspace.capture.b (layer 4)"]
    assert _cycles(planted) == ["actspace.capture.b -> actspace.ops.a -> actspace.capture.b"]

"""The import graph of src/styleseg: data flows one way (ARCHITECTURE.md), no module cycle, small modules.

Every ``import styleseg...`` / ``from styleseg... import`` statement is read with ``ast`` (function-level
imports included, since heavy imports are deferred into functions), so a deferred import that goes upward
is caught as well. The same check runs from the command line::

    .venv/bin/python tests/test_layers.py
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "styleseg"

#: layer of each top-level part, lowest first: a module may import its own layer or lower ones
LAYERS: dict[str, int] = {
    "errors": 0, "__init__": 0,
    "config": 1, "labels": 1,
    "io": 2,
    "texture": 3, "sim": 3, "data": 3, "runs": 3, "trainer": 3,
    "seg": 4, "style": 4,
    "eval": 5,
    "pipeline": 6,
    "cli": 7,
}
MAX_LINES = 420


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """The styleseg modules ``path`` imports (``from styleseg.x import y`` counts as styleseg.x.y when that is a
    module, else styleseg.x)."""
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("styleseg")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("styleseg"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if _exists(sub) else node.module)
    return out


def _exists(mod: str) -> bool:
    p = SRC.parent.joinpath(*mod.split("."))
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists()


def layer(mod: str) -> int:
    parts = mod.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    return LAYERS[top]


def graph() -> dict[str, set[str]]:
    g: dict[str, set[str]] = {}
    for p in sorted(SRC.rglob("*.py")):
        me = module_name(p)
        g[me] = {m for m in imports_of(p) if m != me and not me.startswith(m + ".")}
    return g


def upward_imports(g: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, deps in g.items() for b in deps if layer(b) > layer(a))


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in g:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def long_modules() -> list[str]:
    return sorted(f"{module_name(p)}: {n} lines" for p in SRC.rglob("*.py")
                  if (n := len(p.read_text().splitlines())) > MAX_LINES)


def test_every_module_has_a_layer():
    assert all(layer(m) >= 0 for m in graph())


def test_nothing_imports_upward():
    assert upward_imports(graph()) == []


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_modules_stay_small():
    assert long_modules() == []


def test_the_checker_sees_deferred_and_upward_imports(tmp_path):
    """The checker itself: a function-level import counts, and an upward one is reported."""
    p = tmp_path / "m.py"
    p.write_text("def f():\n    from styleseg.pipeline import experiment\n")
    assert "styleseg.pipeline.experiment" in imports_of(p) or "styleseg.pipeline" in imports_of(p)
    g = {"styleseg.io.x": {"styleseg.pipeline"}, "styleseg.pipeline": {"styleseg.io.x"}}
    assert upward_imports(g) == ["styleseg.io.x -> styleseg.pipeline"]
    assert cycles(g) == [["styleseg.io.x", "styleseg.pipeline"]]


if __name__ == "__main__":
    g = graph()
    problems = upward_imports(g) + [" <-> ".join(c) for c in cycles(g)] + long_modules()
    print("\n".join(problems) or f"{len(g)} modules: no upward import, no cycle, none over {MAX_LINES} lines")
    sys.exit(1 if problems else 0)

"""The package's layer order (nodes/__init__.py, README's Layout section), checked on the
imports themselves: every `import` / `from ... import` of every module under nodes/, at module
level or inside a function, read with ast.

    defs, cli  ->  graph  ->  demo  ->  train  ->  sampling, merge  ->  lora  ->  model  ->  io

A module may import its own package and any package on a lower floor; two packages on the same
floor (sampling and merge) may not import each other; nothing may import upwards; and the
module graph has no cycle. Failures name both modules.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

NODES = Path(__file__).resolve().parents[1] / "nodes"
PACKAGE = "lora_lab.nodes"

# floor of each sub-package: higher floors import lower ones, never the other way
FLOORS = {"cli": 9, "defs": 8, "graph": 7, "demo": 6, "train": 5, "sampling": 4, "merge": 4, "lora": 3,
          "model": 2, "io": 1}


def module_name(path: Path, root: Path = NODES) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def imports_of(path: Path, root: Path = NODES) -> list[tuple[str, int]]:
    """(imported module inside lora_lab.nodes, line) for every import in the file."""
    name = module_name(path, root)
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    known = {module_name(p, root) for p in root.rglob("*.py")}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.startswith(PACKAGE)]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith(PACKAGE):
                target = node.module
            else:
                continue
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
            out += [(s, node.lineno) for s in subs] or [(target, node.lineno)]
    return out


def import_graph(root: Path = NODES) -> dict[str, list[tuple[str, int]]]:
    return {module_name(p, root): imports_of(p, root) for p in sorted(root.rglob("*.py"))}


def floor_of(module: str) -> tuple[str | None, int | None]:
    parts = module.split(".")
    if len(parts) < 3:
        return None, None  # lora_lab.nodes itself
    return parts[2], FLOORS.get(parts[2])


def layer_violations(graph: dict) -> list[str]:
    bad = []
    for src, targets in graph.items():
        spkg, sfloor = floor_of(src)
        for dst, line in targets:
            dpkg, dfloor = floor_of(dst)
            if spkg is None or dpkg is None or spkg == dpkg:
                continue
            if sfloor is None or dfloor is None:
                bad.append(f"{src} (line {line}) -> {dst}: package not in the layer table")
            elif dfloor > sfloor:
                bad.append(f"{src} (line {line}) imports {dst}: upward, {spkg} sits below {dpkg}")
            elif dfloor == sfloor:
                bad.append(f"{src} (line {line}) imports {dst}: {spkg} and {dpkg} share a floor")
    return bad


def cycles(graph: dict) -> list[list[str]]:
    """Strongly connected components with more than one module (or a self-import)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]
    edges = {m: sorted({d for d, _ in ts if d in graph}) for m, ts in graph.items()}

    def visit(v):  # iterative Tarjan, so a long chain cannot hit the recursion limit
        work = [(v, iter(edges[v]))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        while work:
            node, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(edges[w])))
                    break
                if w in on:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    if len(comp) > 1 or node in edges[node]:
                        out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_every_package_is_in_the_layer_table():
    packages = {p.name for p in NODES.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(FLOORS)
    for pkg in packages:
        doc = ast.get_docstring(ast.parse((NODES / pkg / "__init__.py").read_text(encoding="utf-8")))
        assert doc and "import" in doc, f"nodes/{pkg}/__init__.py should say what it owns and may import"


def test_no_loose_modules_beside_the_packages():
    assert sorted(p.name for p in NODES.glob("*.py")) == ["__init__.py"]


def test_imports_follow_the_layer_order():
    bad = layer_violations(import_graph())
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_modules_stay_small():
    long = {str(p.relative_to(NODES)): n for p in NODES.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"modules over 400 lines: {long}"


# -- the checker itself must be able to fail ---------------------------------------------------
def _tree(tmp_path: Path, files: dict) -> Path:
    root = tmp_path / "nodes"
    for rel, text in {**{f"{p}/__init__.py": "" for p in FLOORS}, **files}.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    (root / "__init__.py").write_text("")
    return root


@pytest.mark.parametrize("files, expect", [
    ({"io/a.py": "from ..model import b\n", "model/b.py": ""}, "lora_lab.nodes.io.a (line 1) imports lora_lab.nodes.model.b: upward"),
    ({"merge/a.py": "def f():\n    from ..sampling.b import x\n", "sampling/b.py": ""}, "share a floor"),
    ({"graph/a.py": "from lora_lab.nodes.defs.b import REG\n", "defs/b.py": ""}, "upward, graph sits below defs"),
])
def test_layer_checker_names_both_modules(tmp_path, files, expect):
    root = _tree(tmp_path, files)
    bad = layer_violations(import_graph(root))
    assert any(expect in b for b in bad), bad


def test_cycle_checker_finds_a_lazy_cycle(tmp_path):
    root = _tree(tmp_path, {"io/a.py": "from .b import x\n", "io/b.py": "def f():\n    from .a import y\n",
                            "io/c.py": "from . import a\n"})
    assert cycles(import_graph(root)) == [["lora_lab.nodes.io.a", "lora_lab.nodes.io.b"]]
    assert layer_violations(import_graph(root)) == []

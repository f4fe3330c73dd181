"""The package's import structure (issue 11): no cycles, a numpy-only core, a runtime that needs only the core."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hashee"
# the core every stage stands on: it imports numpy, the standard library and itself, nothing else of hashee
CORE = {"hashee", "hashee.errors", "hashee.exit_table", "hashee.bundle", "hashee.lengths", "hashee.data",
        "hashee.flops", "hashee.samples", "hashee.engines",
        "hashee.extras", "hashee.jsonio"}
STDLIB = set(sys.stdlib_module_names)
# the torch backend runs the PyTorch reference model itself (``pip install 'hashee[torch]'``)
RUNTIME_EXCEPTIONS = {"hashee.runtime.runners.torch": {"hashee.modeling"}}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every module this file imports, at module level or inside functions (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.add(module)
            out.update(f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in known)
    return out


def hashee_graph() -> dict[str, set[str]]:
    known = modules()
    graph = {}
    for name, path in known.items():
        targets = set()
        for target in imports(name, path, known):
            # importing a.b.c runs a and a.b too; count the deepest hashee module named
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def _without_parents(name: str, targets: set[str]) -> set[str]:
    """A package's ``__init__`` is imported by its submodules; that edge is Python's, not a dependency."""
    return {t for t in targets if not name.startswith(t + ".")}


def test_no_import_cycle_between_hashee_modules():
    graph = {name: _without_parents(name, targets) for name, targets in hashee_graph().items()}
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_core_imports_only_numpy_the_standard_library_and_the_core():
    known = modules()
    for name in sorted(CORE):
        third = {t.split(".")[0] for t in imports(name, known[name], known)} - STDLIB - {"hashee", "numpy", "__future__"}
        assert not third, f"{name} imports {third}"
        inner = hashee_graph()[name] - CORE
        assert not inner, f"core module {name} imports {inner}"


def test_the_runtime_imports_only_the_core_and_itself():
    for name, targets in hashee_graph().items():
        if name.startswith("hashee.runtime"):
            outside = {t for t in targets if t not in CORE and not t.startswith("hashee.runtime")}
            outside -= RUNTIME_EXCEPTIONS.get(name, set())
            assert not outside, f"{name} imports {outside}"


def test_import_hashee_runtime_loads_no_trainer_exporter_or_heavy_library():
    code = ("import sys, json; import hashee.runtime; from hashee.runtime import Session; "
            "print(json.dumps(sorted(sys.modules)))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                       cwd=ROOT).stdout)
    forbidden = [m for m in loaded if m.startswith(("hashee.exporter", "hashee.calibration", "hashee.training",
                                                    "hashee.evaluation", "hashee.modeling", "hashee.distill",
                                                    "hashee.bench", "hashee.serve"))
                 or m.split(".")[0] in ("torch", "onnx", "transformers", "optimum", "tensorrt", "sklearn", "scipy")]
    assert forbidden == [], forbidden
    assert "hashee.runtime.session" in loaded and "hashee.bundle" in loaded

"""The package's shape: imports point down the layers, no import cycles, no environment switches.

Built from the source with `ast`, so a new module is checked the day it lands. Layers, top to
bottom (a package may import its own modules and anything in a lower layer, nothing beside or
above it): pipeline -> train, evaluate -> corpus -> models, store, rl -> kernels -> config, errors.
Imports inside functions count (a function-local import must not hide a cycle), and so do imports
under `if TYPE_CHECKING:` (an annotation that needs a module above it says the shape is wrong).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "refine_tasks"
LAYERS: dict[str, int] = {
    "": 0,  # refine_tasks/__init__.py
    "config": 0,
    "errors": 0,
    "kernels": 1,
    "models": 2,
    "store": 2,
    "rl": 2,
    "corpus": 3,
    "train": 4,
    "evaluate": 4,
    "pipeline": 5,
}
# Where the environment may be read: orchestration (its own variables: REFINE_NPROC_PER_NODE, the
# kernel cache's TRITON_CACHE_DIR) and torchrun's RANK / WORLD_SIZE / LOCAL_RANK for a rank.
ENVIRONMENT_READERS = ("pipeline/", "train/distributed.py")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str] | None = None) -> set[str]:
    """refine_tasks modules `path` imports at run time. `from P import name` counts as the module
    P.name where that is one of `modules` (a submodule, as `import P.name` would be), else as P."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("refine_tasks")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("refine_tasks"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if modules is not None and sub in modules else node.module)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {m for m in imports_of(path, set(modules)) if m in modules and m != name}
        for name, path in modules.items()
    }


def layer_of(module: str) -> tuple[str, int]:
    parts = module.split(".")[1:]
    top = parts[0] if parts else ""
    assert top in LAYERS, f"{module}: a top-level module or package outside the layer table; add it to LAYERS"
    return top, LAYERS[top]


def test_imports_point_down_the_layers(graph: dict[str, set[str]]) -> None:
    wrong = []
    for module, targets in graph.items():
        package, rank = layer_of(module)
        for target in targets:
            other, other_rank = layer_of(target)
            if other != package and other_rank >= rank and not (target == "refine_tasks" and rank > 0):
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports that do not point down a layer:\n  " + "\n  ".join(sorted(wrong))


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    edges = graph
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n  " + "\n  ".join(" -> ".join(c) for c in cycles)


def test_environment_is_read_only_by_orchestration() -> None:
    readers = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith(ENVIRONMENT_READERS):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "putenv"):
                readers.append(f"{relative}:{node.lineno}")
    assert not readers, "environment read below the orchestration layer:\n  " + "\n  ".join(readers)


def test_the_checks_catch_what_they_look_for(tmp_path: Path) -> None:
    """The import scanner sees function-local and annotation-only imports."""
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from refine_tasks.pipeline import cli\n"
        "def f():\n    from refine_tasks.train import step\n"
    )
    assert imports_of(source) == {"refine_tasks.pipeline", "refine_tasks.train"}
    assert imports_of(source, {"refine_tasks.train.step"}) == {
        "refine_tasks.pipeline",
        "refine_tasks.train.step",
    }

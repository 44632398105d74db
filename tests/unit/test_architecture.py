"""The shape of the code, checked from its syntax trees: one import namespace, no import cycle in
common/, a bulk-inference layer and a training kit that import no family, no branch on a
family's kind outside its folder and the registry, and files that stay small."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from medq.common.families.registry import kinds

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "tasks", "workers", "scheduler")
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    """medq module name -> file, for every module of the four packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(("medq", *(parts[:-1] if parts[-1] == "__init__" else parts)))
            found[name] = path
    return found


MODULES = _modules()


def _imports(path: Path, module: str) -> set[str]:
    """Every module this file imports, at module level or inside a function (absolute names)."""
    names = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    for block in ast.walk(tree):  # `if TYPE_CHECKING:` imports are for type checkers, never run
        if isinstance(block, ast.If) and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING":
            block.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return names


def _internal(names: set[str]) -> set[str]:
    return {n for n in names if n in MODULES}


def test_every_import_goes_through_the_medq_namespace():
    bare = [(str(path.relative_to(ROOT)), name) for module, path in MODULES.items()
            for name in _imports(path, module) if name.split(".")[0] in PACKAGES]
    assert bare == []


def test_common_has_no_import_cycle():
    graph = {m: _internal(_imports(p, m)) - {m} for m, p in MODULES.items() if m.startswith("medq.common")}
    cycles, state = [], {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if target not in graph:
                continue
            if state.get(target) == "open":
                cycles.append(trail[trail.index(target):] + [target] if target in trail else [node, target])
            elif target not in state:
                visit(target, trail + [target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    # a package importing its own submodules (an __init__ re-exporting) is not a cycle of concern
    cycles = [c for c in cycles if not all(m.startswith(c[0] + ".") or m == c[0] for m in c)]
    assert cycles == []


@pytest.mark.parametrize("layer", ["medq.common.inference", "medq.common.training", "medq.common.store"])
def test_the_shared_layers_import_no_family(layer):
    offending = {m: sorted(n for n in _imports(p, m) if n.startswith("medq.common.families"))
                 for m, p in MODULES.items() if m.startswith(layer)}
    assert {m: n for m, n in offending.items() if n} == {}


def _kind_literals(tree: ast.AST, names: set[str]) -> list[int]:
    """Lines that compare something with a family's kind spelled out (==, !=, in, match)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                values = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                if any(isinstance(v, ast.Constant) and v.value in names for v in values):
                    lines.append(node.lineno)
        elif isinstance(node, ast.MatchValue) and isinstance(node.value, ast.Constant) and node.value.value in names:
            lines.append(node.lineno)
    return lines


def test_nothing_outside_the_families_branches_on_a_family_kind():
    names = set(kinds())
    found = {}
    for module, path in MODULES.items():
        if module.startswith("medq.common.families"):
            continue
        lines = _kind_literals(ast.parse(path.read_text()), names)
        if lines:
            found[str(path.relative_to(ROOT))] = lines
    assert found == {}


def test_files_stay_under_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in MODULES.values() if (n := len(p.read_text().splitlines())) >= MAX_LINES}
    assert long == {}


def test_the_command_runs_outside_the_source_tree(tmp_path):
    """From any folder, with no `common` or `scheduler` folder beside it to lean on."""
    out = subprocess.run([sys.executable, "-m", "medq.scheduler", "submit", "train", "--help"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "KIND" in out.stdout

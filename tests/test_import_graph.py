"""The rosalia.model modules import one another without cycles (module level or inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "rosalia" / "model"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rosalia.model."):
            names.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[2] for a in node.names if a.name.startswith("rosalia.model."))
    return names


def test_no_import_cycles_in_rosalia_model():
    graph = {p.stem: _imports(p) - {p.stem} for p in PKG.glob("*.py") if p.stem != "__init__"}
    assert {"checkpoint", "modeling", "convert_lisa", "build"} <= set(graph)
    assert "checkpoint" not in graph["modeling"]  # the cycle issue 16 untangled

    def visit(node: str, path: tuple[str, ...]) -> None:
        for nxt in sorted(graph.get(node, ())):
            assert nxt not in path, f"import cycle: {' -> '.join(path + (nxt,))}"
            visit(nxt, path + (nxt,))

    for mod in graph:
        visit(mod, (mod,))

"""The package's layering and its documentation: checks on the source tree itself (no Ray)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Lower layers never import higher ones: data and models below methods, methods below train, train
# below tune, the command line (and benchmarks, which drive everything) on top.
LAYER = {"__init__": 0, "errors": 0, "config": 0, "world": 0, "plots": 0, "files": 0, "data": 1, "models": 1, "methods": 2,
         "train": 3, "tune": 4, "compare": 5, "bench": 6, "cli": 6, "__main__": 6}


def _top(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def test_imports_run_one_way():
    wrong = []
    for path in (ROOT / "mmray").rglob("*.py"):
        relative = path.relative_to(ROOT / "mmray")
        if relative.name == "__main__.py":
            continue  # entry points (`python -m mmray.tune`) call the command line
        own = LAYER[relative.parts[0].removesuffix(".py")]
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                if name.startswith("mmray.") and LAYER[_top(name)] > own:
                    wrong.append(f"{relative} imports {name}")
    assert not wrong, wrong


def test_every_document_named_is_in_the_repository():
    named = set()
    for path in [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("search_spaces/*.yaml"),
                 *(ROOT / "mmray").rglob("*.py")]:
        named |= {m for m in re.findall(r"docs/[\w-]+\.md", path.read_text())}
    assert named, "something names a document"
    assert [name for name in sorted(named) if not (ROOT / name).is_file()] == []

"""The package layers of docs/architecture.md, checked on every import in lmforge/.

Each first-level package (or top-level module) of lmforge has a rank; it may import only
packages of a lower rank (and itself). Imports inside functions count the same. An lmforge
import inside a function is allowed only where a name is imported when first used: the CLI
(a verb's recipe loads when the verb runs, so `lmforge --help` starts without torch) and the
package's lazy public names.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "lmforge"

# Lowest first. A package imports only those before it.
LAYERS = [
    "errors",
    "registry",
    "atomic",
    "config",
    "flags",
    "assets",
    "plots",
    "report",
    "text_metrics",
    "tokenizer",
    "chat",
    "model",
    "quant",
    "peft",
    "hub",
    "data",
    "train",
    "prompting",
    "eval",
    "export",
    "align",
    "knowledge",
    "tools",
    "agents",
    "serve",
    "recipes",
    "lab",
    "cli",
    "__main__",
    "__init__",
]
LAZY_IMPORTS_ALLOWED = {"lmforge/cli.py", "lmforge/__init__.py"}


def unit(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "lmforge" and len(parts) > 1 else None


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported lmforge module, line, inside a function) for every import in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.append((child.module, child.lineno, in_function))
            visit(child, inner)

    visit(tree, False)
    return [(m, line, f) for m, line, f in found if m == "lmforge" or m.startswith("lmforge.")]


def source_unit(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return rel.parts[1] if len(rel.parts) > 1 else "__init__"


def test_every_package_has_a_layer():
    units = {source_unit(p) for p in PACKAGE.rglob("*.py")}
    assert units <= set(LAYERS), f"add to LAYERS (and docs/architecture.md): {units - set(LAYERS)}"


def test_imports_go_downward():
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        src = source_unit(path)
        for module, line, _ in imports(path):
            dst = unit(module)
            if dst and dst != src and rank[dst] > rank[src]:
                upward.append(f"{path.relative_to(ROOT)}:{line}: {src} imports {dst}")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_lmforge_imports_sit_at_module_level():
    lazy = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        if rel in LAZY_IMPORTS_ALLOWED:
            continue
        lazy += [f"{rel}:{line}: {m}" for m, line, inside in imports(path) if inside]
    assert not lazy, "lmforge imports inside functions:\n" + "\n".join(lazy)


def test_architecture_page_lists_the_layers():
    text = (ROOT / "docs/architecture.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- layers -->(.*?)<!-- /layers -->", text, re.S)
    assert block, "docs/architecture.md needs the layer list between <!-- layers --> markers"
    listed = re.findall(r"`(\w+)`", block.group(1))
    assert [n for n in listed if n in LAYERS] == [n for n in LAYERS if n in listed]
    existing = {source_unit(p) for p in PACKAGE.rglob("*.py")} - {"__init__", "__main__"}
    assert existing <= set(listed), f"not on the architecture page: {existing - set(listed)}"


DATA_TABLES = {"lmforge/lab/peft_compare.py:runs"}  # a list of runs, one entry per line


def test_files_and_functions_stay_small():
    """A file past 400 lines or a function past 60 holds two ideas (DESIGN.md)."""
    large = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > 400:
            large.append(f"{rel}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > 60 and f"{rel}:{node.name}" not in DATA_TABLES:
                    large.append(f"{rel}:{node.lineno} {node.name}: {length} lines")
    assert not large, "split by idea:\n" + "\n".join(large)

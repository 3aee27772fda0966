"""The layer picture in the README is true: no module imports a layer above its own.

Read from the source with ``ast`` (imports inside functions count too), so a shortcut added anywhere
fails here, not in a review.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "release_gate"

#: The README's picture, lowest first: a module may import its own layer and the ones before it.
LAYERS = [
    {"errors", "constants", "files", "yamlio", "validation", "schema", "document", "runlog"},
    {"assets"},
    {"surgery"},
    {"evaluation"},
    {"gate"},
    {"reporting", "integrations", "ledger"},
    {"config"},
    {"run_record"},
    {"pipeline"},
    {"embedded_demo", "api"},
    {"cli", "__init__"},
]


def layer_of(top: str) -> int:
    return next(i for i, members in enumerate(LAYERS) if top in members)


def top_level(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def imported(path: Path) -> set[str]:
    """Top-level release_gate modules ``path`` imports (absolute or relative)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    depth = len(path.relative_to(PACKAGE).parts) - 1  # how many packages deep the module sits
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module and node.module.startswith("release_gate"):
                names = node.module.split(".")[1:] or [a.name for a in node.names]
            elif node.level > 0:
                base = list(path.relative_to(PACKAGE).parts[:-1])[: max(depth - node.level + 1, 0)]
                names = [*base, *(node.module.split(".") if node.module else [a.name for a in node.names][:1])]
            else:
                continue
            if names:
                found.add(names[0])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("release_gate.")}
    return found


def test_every_module_imports_only_its_layer_and_below():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = top_level(path)
        if own not in {m for layer in LAYERS for m in layer}:
            problems.append(f"{path.relative_to(PACKAGE)}: not in the layer picture")
            continue
        for target in imported(path) - {own}:
            if target in {m for layer in LAYERS for m in layer} and layer_of(target) > layer_of(own):
                problems.append(f"{path.relative_to(PACKAGE)} imports {target} (a higher layer)")
    assert problems == []


def test_the_import_reader_sees_relative_and_absolute_imports():
    assert {"gate", "schema", "files"} <= imported(PACKAGE / "reporting" / "render.py")
    assert layer_of("gate") > layer_of("surgery") and layer_of("cli") == len(LAYERS) - 1

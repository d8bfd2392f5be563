"""Layers import downward only (DESIGN.md): sources -> decode -> aggregate -> store -> export, wired by service.

The allowed edges are the architecture written down; a new import across
layers that is not listed here fails this test, so the tree keeps showing
how data flows.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "streamer"

#: top-level part -> the parts it may import (itself always allowed)
ALLOWED: dict[str, set[str]] = {
    "defaults": set(),
    "schema": set(),
    "logs": set(),
    "aws": set(),
    "settings": {"defaults", "schema"},
    "decode": {"schema"},
    "aggregate": {"decode", "schema"},
    "store": {"aggregate", "decode", "schema", "settings"},
    "export": {"aggregate", "decode", "schema", "settings"},
    "ingest": {"aggregate", "decode", "schema"},
    "output": {"aggregate", "decode", "schema"},
    "replay": {"aggregate", "decode", "ingest", "output", "schema"},
    "synth": {"schema"},
    "stack": {"aws"},
    "commit_group": set(),
    "memory": set(),
    "sources": {"aws", "decode", "logs", "schema", "settings", "store"},
    "config": {"defaults", "schema", "settings", "sources"},
    "enrich": {"aggregate", "schema", "settings", "store"},
    "pipeline": {"aggregate", "commit_group", "decode", "export", "ingest", "schema", "sources", "store"},
    "service": {
        "aggregate",
        "aws",
        "commit_group",
        "config",
        "decode",
        "enrich",
        "export",
        "pipeline",
        "schema",
        "settings",
        "sources",
        "store",
    },
}
#: commands on top may import anything below them
TOP = {"", "cli", "__main__", "demo", "docgen"}  # "" is the package itself; docgen reads every layer to document it
#: single edges that cross a layer on purpose, with the reason
EXCEPTIONS = {
    # the fleet's leader sends the alerts it commits with its detection (store.leader is wiring, not storage)
    ("store.leader", "export.alerts"),
}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("streamer"):
            if node.module == "streamer":
                found.update(f"streamer.{a.name}" for a in node.names)
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("streamer"))
    return found


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_layers_import_downward_only() -> None:
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        module = _module(path)
        part = module.split(".")[0]
        if part in TOP:
            continue
        assert part in ALLOWED, f"streamer/{part}: new top-level part, place it in ALLOWED"
        for target in _imports(path):
            name = target.removeprefix("streamer.")
            tpart = name.split(".")[0]
            if tpart == part or tpart in ALLOWED[part] or (module, name) in EXCEPTIONS:
                continue
            wrong.append(f"{module} imports {name}")
    assert not wrong, "imports against the layering: " + "; ".join(wrong)


def test_nothing_below_imports_the_commands() -> None:
    for path in ROOT.rglob("*.py"):
        part = _module(path).split(".")[0]
        if part in TOP:
            continue
        assert not {t for t in _imports(path) if t.removeprefix("streamer.").split(".")[0] in TOP}, path

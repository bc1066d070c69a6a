"""Layers call downward (STYLE.md): read off the imports of the package's own code."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "tether"


def _imports(folder: str) -> Iterator[tuple[str, str]]:
    """(file, module imported) for every import under tether/<folder>."""
    for path in sorted((PACKAGE / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                yield str(path.relative_to(PACKAGE.parent)), name


@pytest.mark.parametrize(
    ("folder", "below_it"),
    [
        ("api", ("tether.store", "tether.bus")),  # through the service only
        ("store", ("tether.runtime", "tether.service", "tether.api", "tether.worker")),
        ("bus", ("tether.store", "tether.runtime", "tether.service")),
        ("runtime", ("tether.store", "tether.bus", "tether.service", "tether.api")),
    ],
)
def test_no_import_across_the_layers(folder: str, below_it: tuple[str, ...]) -> None:
    crossing = [
        f"{file}: {name}"
        for file, name in _imports(folder)
        if any(name == banned or name.startswith(f"{banned}.") for banned in below_it)
    ]
    assert crossing == []

"""What docs/architecture.md promises beyond the import-linter contracts `scripts/check` runs."""

from __future__ import annotations

import ast
from pathlib import Path

import vlmcheck

SRC = Path(vlmcheck.__file__).parent


def _modules() -> list[tuple[str, ast.Module]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        name = ".".join(("vlmcheck", *path.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
        out.append((name, ast.parse(path.read_text(encoding="utf-8"))))
    return out


def test_no_module_imports_another_modules_private_names() -> None:
    offenders = []
    for name, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vlmcheck"):
                if node.module == name:
                    continue
                offenders += [f"{name} imports {node.module}.{a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
    assert offenders == [], "make the name public in its module, or move it where both can use it"


def test_public_names_are_sorted_and_resolve() -> None:
    assert vlmcheck.__all__ == sorted(vlmcheck.__all__)
    for name in vlmcheck.__all__:
        assert getattr(vlmcheck, name) is not None, name
    assert callable(vlmcheck.scan) and callable(vlmcheck.check) and callable(vlmcheck.repair)

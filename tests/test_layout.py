"""The daemon core never reaches up into the tools built on it (issue 10, item 8)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CORE_PACKAGES = ("edge", "drivers", "engines")


def _imported_modules(source: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def test_the_daemon_core_imports_no_tool() -> None:
    offenders = [
        f"{source.relative_to(REPO_ROOT)} imports {module}"
        for package in CORE_PACKAGES
        for source in sorted((REPO_ROOT / package).rglob("*.py"))
        for module in sorted(_imported_modules(source))
        if module == "tools" or module.startswith("tools.")
    ]
    assert offenders == []

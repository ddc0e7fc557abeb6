"""The product package ``catalens`` (what the Lambda layer ships) never reaches into ``catalens_tools``.

Checked twice: statically, every import statement of every product module and handler; and at run time, a fresh
interpreter that imports every product module has loaded no tools module.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRODUCT = REPO / "shared" / "catalens"
TOOLS_PACKAGE = "catalens_tools"


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def product_modules() -> list[str]:
    modules = []
    for path in sorted(PRODUCT.rglob("*.py")):
        parts = path.relative_to(PRODUCT.parent).with_suffix("").parts
        modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


def test_no_product_module_or_handler_imports_the_tools() -> None:
    sources = [*PRODUCT.rglob("*.py"), *(REPO / "functions").glob("*/app.py")]
    offenders = {
        str(path.relative_to(REPO)): sorted(
            name for name in imported_modules(path) if name.split(".")[0] == TOOLS_PACKAGE
        )
        for path in sources
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_importing_the_whole_product_loads_no_tools_module() -> None:
    script = (
        "import importlib, json, sys\n"
        f"for name in {product_modules()!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == {TOOLS_PACKAGE!r})))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_the_tools_are_a_package_of_their_own() -> None:
    assert (REPO / "shared" / TOOLS_PACKAGE / "__init__.py").is_file()
    assert not (PRODUCT / "local").exists()
    assert not (PRODUCT / "cli.py").exists()

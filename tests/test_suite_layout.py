"""The test suite's own layout: test modules share helpers only through tests/support/.

A test module that imports another one loads (and depends on) all of it: renaming a local
helper there breaks modules that never mention it, and one module can no longer be read or
run on its own. Shared helpers live in tests/support/ instead; this keeps it so.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent


def is_test_module(name: str) -> bool:
    """Whether a dotted module name (absolute, or relative without its dots) is a test module."""
    parts = name.split(".")
    if parts[0] == "tests":
        parts = parts[1:]
    return bool(parts) and parts[0].startswith("test_")


def imported_test_modules(source: str) -> list[str]:
    """The test modules an import in this source names, as written, with their line."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            # `from tests import test_x` and `from . import test_x` name the module last.
            if base in ("", "tests"):
                names = [f"{base}.{alias.name}".lstrip(".") for alias in node.names]
            else:
                names = [base]
        else:
            continue
        found += [f"line {node.lineno}: {name}" for name in names if is_test_module(name)]
    return found


def test_no_module_of_the_suite_imports_a_test_module() -> None:
    offenders = {
        str(path.relative_to(TESTS)): found
        for path in sorted(TESTS.rglob("*.py"))
        if (found := imported_test_modules(path.read_text()))
    }
    assert offenders == {}, "move the shared helpers into tests/support/"


def test_the_check_sees_every_form_of_import() -> None:
    forms = [
        "from tests.test_router import send",
        "from .test_router import send",
        "from tests import test_router",
        "from . import test_router",
        "import tests.test_router",
        "import tests.test_router as router",
        "def f():\n    from tests.test_router import send",
    ]
    assert [len(imported_test_modules(form)) for form in forms] == [1] * len(forms)
    allowed = "from tests.support.routing import router_for\nimport tests.conftest\n"
    assert imported_test_modules(allowed) == []

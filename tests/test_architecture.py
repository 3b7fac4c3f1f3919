"""Imports flow service → engine ← worker; client stands alone (walked in the AST)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "engine": {"flask", "rq", "redis", "service", "worker", "client", "werkzeug", "gunicorn"},
    "service": {"worker", "client"},
    "worker": {"service", "client", "flask"},
    "client": {"engine", "service", "worker", "flask", "rq", "onnxruntime", "shap", "lime"},
}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_direction(package):
    """No module of a package imports what the architecture forbids it."""
    offenders = {}
    for path in (ROOT / package).rglob("*.py"):
        bad = imported_roots(path) & FORBIDDEN[package]
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert offenders == {}


def test_engine_init_is_empty():
    """engine/__init__.py stays empty so importing engine loads nothing heavy."""
    assert (ROOT / "engine" / "__init__.py").read_text().strip() == ""


def test_api_process_does_not_import_shap_or_lime():
    """Building the app imports neither shap nor lime (they load in workers only)."""
    import subprocess
    import sys

    code = (
        "import sys; from service.app import create_app; from engine.settings import Settings; "
        "import tempfile; create_app(Settings(model_dir=tempfile.mkdtemp())); "
        "print(sorted(m for m in ('shap', 'lime', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"

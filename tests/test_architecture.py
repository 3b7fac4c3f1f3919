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


# -- the module graph: no cycles, and lower wings never import higher ones -----------------------------------------

PACKAGES = ("engine", "service", "worker", "client")

# Wings of each package, lowest first: a module imports modules of its own wing and of lower wings only.
# A name is a module or a folder (everything under it). New wings go in here when they are made.
WINGS: dict[str, list[tuple[str, ...]]] = {
    "engine": [
        (
            "engine.errors",
            "engine.arrays",
            "engine.timestamps",
            "engine.files",
            "engine.settings",
            "engine.jobs",
            "engine.telemetry",
            "engine.logs",
        ),
        ("engine.keys", "engine.webhooks"),
        ("engine.models",),
        ("engine.runtime",),
        ("engine.methods",),
        ("engine.variants",),
        ("engine.serving",),
        ("engine.explain",),
        ("engine.recourse",),
        ("engine.audits",),
    ],
    "service": [
        ("service.errors", "service.json_text", "service.bodies", "service.observe"),
        ("service.gateways", "service.extensions"),
        ("service.auth", "service.limits"),
        ("service.routes",),
        ("service.app",),
    ],
    "worker": [
        ("worker.context", "worker.cancel", "worker.failures", "worker.observe"),
        ("worker.jobs", "worker.webhooks", "worker.heartbeat"),
        ("worker.__main__",),
    ],
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The repository modules a file imports anywhere (top level, in functions, under TYPE_CHECKING)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from a.b import c`` imports module a.b.c when there is one, else names of a.b.
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def test_no_module_imports_another_in_a_loop():
    """Walk every import inside the repository's packages; any cycle fails, named module by module."""
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert cycles == []


def wing_of(module: str, package: str) -> int | None:
    for rank, names in enumerate(WINGS[package]):
        if any(module == n or module.startswith(n + ".") for n in names):
            return rank
    return None


@pytest.mark.parametrize("package", sorted(WINGS))
def test_lower_wings_never_import_higher_ones(package):
    graph = import_graph()
    unplaced, upward = [], []
    for module, imported in sorted(graph.items()):
        if module.split(".")[0] != package or module == package:
            continue
        rank = wing_of(module, package)
        if rank is None:
            unplaced.append(module)
            continue
        for other in sorted(imported):
            other_rank = wing_of(other, package) if other.split(".")[0] == package else None
            if other_rank is not None and other_rank > rank:
                upward.append(f"{module} → {other}")
    assert unplaced == [], "every module belongs to a wing (add new ones to WINGS)"
    assert upward == []


@pytest.mark.parametrize(
    "name",
    ["FloatArray", "IntArray", "VARIANT_KINDS", "TASKS", "INPUT_KINDS", "QUEUES", "INTERACTIVE", "BATCH", "METHODS"],
)
def test_shared_constants_are_defined_once(name):
    """Each shared constant is assigned at module level in exactly one module (the others import it)."""
    homes = []
    for path in (p for package in PACKAGES for p in (ROOT / package).rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AnnAssign)
                else []
            )
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                homes.append(module_name(path))
    assert len(homes) == 1, homes


def test_cancel_key_and_job_paths_live_in_the_contract_only():
    """No module but engine/jobs.py spells the cancel key or a worker function path."""
    offenders = []
    for path in (p for package in PACKAGES for p in (ROOT / package).rglob("*.py")):
        text = path.read_text()
        if path != ROOT / "engine" / "jobs.py" and ("onnxplain:cancel:" in text or '"worker.jobs.' in text):
            offenders.append(module_name(path))
    assert offenders == []

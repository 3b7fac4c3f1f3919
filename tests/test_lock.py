"""requirements.lock agrees with pyproject.toml, and the check catches each way they can drift apart."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tools import lock as lockfile

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def copies(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Copies of the project's pyproject.toml, requirements.lock and requirements.in to alter."""
    paths = tuple(tmp_path / name for name in ("pyproject.toml", "requirements.lock", "requirements.in"))
    for path in paths:
        shutil.copy(ROOT / path.name, path)
    return paths  # type: ignore[return-value]


def test_committed_lock_agrees_with_pyproject() -> None:
    """The lock in the repository covers pyproject.toml as it is: what `make lint` checks."""
    assert lockfile.check() == []


def test_every_pin_is_exact_and_hashed() -> None:
    """Each locked package is one exact version carrying at least one sha256."""
    pins = lockfile.read_pins(lockfile.LOCK.read_text(encoding="utf-8"))
    assert {"torch", "torchvision", "onnxruntime", "hatchling"} <= set(pins)
    assert (pins["torch"].version, pins["torchvision"].version) == ("2.14.1", "0.29.1")
    assert all(pin.hashes >= 1 for pin in pins.values())


def test_a_new_dependency_is_reported(copies: tuple[Path, Path, Path]) -> None:
    """A dependency added to pyproject.toml but not locked fails the check, naming it."""
    pyproject, lock, requirements_in = copies
    text = pyproject.read_text(encoding="utf-8")
    pyproject.write_text(text.replace('    "httpx>=0.27",\n', '    "httpx>=0.27",\n    "tabulate>=0.9",\n'))
    problems = lockfile.check(pyproject, lock, requirements_in)
    assert any("run `make lock`" in p for p in problems)
    assert any(p.startswith("tabulate ") and "is not in requirements.lock" in p for p in problems)


def test_a_range_the_pin_falls_outside_is_reported(copies: tuple[Path, Path, Path]) -> None:
    """Raising a range above the locked version fails the check even with a forged fingerprint."""
    pyproject, lock, requirements_in = copies
    pyproject.write_text(pyproject.read_text(encoding="utf-8").replace('"flask>=3.0"', '"flask>=99"'))
    digest = lockfile.fingerprint(pyproject)
    lock.write_text(re.sub(r"(?m)^# pyproject-sha256: .*$", f"# pyproject-sha256: {digest}", lock.read_text()))
    requirements_in.write_text(lockfile.requirements_in_text(lockfile.direct_requirements(pyproject)))
    problems = lockfile.check(pyproject, lock, requirements_in)
    assert len(problems) == 1 and "outside pyproject.toml's flask>=99" in problems[0]


def test_a_pin_without_hash_is_reported(copies: tuple[Path, Path, Path]) -> None:
    """A hand-edited pin that lost its hashes fails the check."""
    pyproject, lock, requirements_in = copies
    text = lock.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^(flask==\S+) \\\n(?:\s+--hash=sha256:\w+(?: \\)?\n)+", r"\1\n", text)
    lock.write_text(text)
    assert [p for p in lockfile.check(pyproject, lock, requirements_in) if "no hash" in p] == [
        f"flask=={lockfile.read_pins(text)['flask'].version} has no hash"
    ]

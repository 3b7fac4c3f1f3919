"""The model store's listing and the access file, kept between requests only while their stat is unchanged."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from engine.files import SETTLED_S, write_atomic
from engine.models.access import ModelAccess
from engine.models.store import ModelRegistry
from engine.settings import Settings


def _version(root: Path, name: str, number: int, *, sealed: bool = True) -> Path:
    directory = root / name / str(number)
    directory.mkdir(parents=True)
    (directory / "model.onnx").write_bytes(b"onnx")
    if sealed:
        (directory / "meta.json").write_text("{}")
    return directory


def _age(path: Path) -> None:
    """Date ``path``'s last change back past the racy window, as if it had been made a while ago."""
    past = time.time() - 10 * SETTLED_S
    os.utime(path, (past, past))


def test_the_listing_follows_added_removed_and_newly_sealed_versions(tmp_path):
    store = ModelRegistry(Settings(model_dir=tmp_path))
    _version(tmp_path, "credit", 1)
    pending = _version(tmp_path, "credit", 2, sealed=False)
    _age(tmp_path / "credit")
    assert store.versions("credit") == [1]
    assert "credit" in store._listings  # settled: kept
    (pending / "meta.json").write_text("{}")  # sealing writes inside the version: the name directory keeps its mtime
    assert store.versions("credit") == [1, 2]
    _age(tmp_path / "credit")
    assert store.versions("credit") == [1, 2]
    _version(tmp_path, "credit", 3)  # a new version directory changes the name directory's mtime
    assert store.versions("credit") == [1, 2, 3]
    os.rename(tmp_path / "credit" / "1", tmp_path / "gone")  # as delete does: a rename out of the name directory
    assert store.versions("credit") == [2, 3]


def test_a_listing_changed_within_the_racy_window_is_not_kept(tmp_path):
    store = ModelRegistry(Settings(model_dir=tmp_path))
    _version(tmp_path, "credit", 1)
    assert store.versions("credit") == [1] and "credit" not in store._listings
    assert store.versions("nobody") == [] and store.versions("../etc") == []


def test_access_is_read_again_when_its_file_changes(tmp_path):
    access = ModelAccess(tmp_path)
    path = tmp_path / "credit" / "access.json"
    path.parent.mkdir()
    write_atomic(path, json.dumps({"tenant": "acme", "shared": False}))
    _age(path)
    assert access.of("credit").tenant == "acme" and "credit" in access._read
    write_atomic(path, json.dumps({"tenant": "acme", "shared": True}))  # a rename: another inode and mtime
    assert access.of("credit").shared
    path.unlink()
    assert access.of("credit").tenant is None  # no file: the operator's

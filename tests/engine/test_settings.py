"""Settings: every configured directory is absolute from the moment Settings exists."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from engine.errors import InvalidRequest
from engine.settings import Settings


def _dirs(settings: Settings) -> dict[str, Path]:
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings) if f.name.endswith("_dir")}


def test_default_and_relative_directories_are_made_absolute_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    defaults = _dirs(Settings())
    assert defaults and all(path.is_absolute() for path in defaults.values())
    assert defaults["audit_dir"] == tmp_path / "var" / "audits"
    from_env = Settings.from_env({"ONNXPLAIN_MODEL_DIR": "store/models", "ONNXPLAIN_AUDIT_DIR": "a"})
    assert from_env.model_dir == tmp_path / "store" / "models" and from_env.audit_dir == tmp_path / "a"
    os.chdir("/")  # a later change of directory changes nothing already read
    assert from_env.audit_dir == tmp_path / "a"
    assert from_env.replace(audit_dir=Path("b")).audit_dir == Path("/b")


def test_absolute_directories_are_kept_as_given(tmp_path: Path) -> None:
    settings = Settings(model_dir=tmp_path / "m", audit_dir=tmp_path / "a")
    assert settings.model_dir == tmp_path / "m" and settings.audit_dir == tmp_path / "a"


def test_a_setting_that_does_not_parse_names_its_variable() -> None:
    with pytest.raises(InvalidRequest) as caught:
        Settings.from_env({"ONNXPLAIN_AUDIT_CHUNK_ROWS": "many"})
    assert caught.value.field == "ONNXPLAIN_AUDIT_CHUNK_ROWS"


def test_a_boolean_setting_reads_the_word_not_its_truthiness() -> None:
    assert Settings.from_env({"ONNXPLAIN_VARIANT_FASTEST_ALLOWS_DRIFT": "false"}).variant_fastest_allows_drift is False
    assert Settings.from_env({"ONNXPLAIN_VARIANT_FASTEST_ALLOWS_DRIFT": "True"}).variant_fastest_allows_drift is True
    with pytest.raises(InvalidRequest) as caught:
        Settings.from_env({"ONNXPLAIN_VARIANT_FASTEST_ALLOWS_DRIFT": "maybe"})
    assert caught.value.field == "ONNXPLAIN_VARIANT_FASTEST_ALLOWS_DRIFT"

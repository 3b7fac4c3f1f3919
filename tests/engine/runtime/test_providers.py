"""Execution-provider resolution, on this GPU-less host's real onnxruntime."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from engine.errors import InvalidRequest
from engine.models.store import ModelRegistry
from engine.runtime.providers import resolve_providers
from engine.serving import Predictor
from engine.settings import Settings

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def test_auto_falls_back_to_cpu_with_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="engine.runtime.providers")
    assert resolve_providers("auto") == [CPU]
    lines = [r for r in caplog.records if r.name == "engine.runtime.providers" and r.levelno == logging.INFO]
    assert len(lines) == 1 and "using the CPU" in lines[0].getMessage()


def test_auto_probes_a_listed_gpu_provider(caplog: pytest.LogCaptureFixture) -> None:
    # onnxruntime-gpu lists CUDA even without a GPU; the probe session must drop it here.
    caplog.set_level(logging.INFO, logger="engine.runtime.providers")
    assert resolve_providers(" AUTO ", available=["TensorrtExecutionProvider", CUDA, CPU]) == [CPU]
    assert any("using the CPU" in r.getMessage() for r in caplog.records)


def test_explicit_gpu_list_falls_back_to_cpu_cleanly() -> None:
    assert resolve_providers(f"{CUDA},{CPU}") == [CPU]
    assert resolve_providers(CUDA, available=[CUDA, CPU]) == [CPU]


def test_explicit_list_is_deduplicated_and_ends_with_cpu() -> None:
    assert resolve_providers(f" {CPU} , {CPU} ,") == [CPU]


@pytest.mark.parametrize("spec", ["CudaProvider", f"{CPU},NotAProvider", "", " , "])
def test_invalid_spec_is_an_invalid_setting(spec: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        resolve_providers(spec)
    assert caught.value.code == "invalid_setting"
    assert caught.value.field == "ONNXPLAIN_PROVIDERS"


@pytest.mark.parametrize(("spec", "expected"), [("cpu", [CPU]), (" CPU ", [CPU]), ("cuda", [CPU]), ("TensorRT", [CPU])])
def test_short_names_resolve_on_this_host(spec: str, expected: list[str]) -> None:
    assert resolve_providers(spec) == expected


def test_cuda_setting_falls_back_to_cpu_with_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="engine.runtime.providers")
    # As onnxruntime-gpu on a host without a GPU: CUDA is offered, the probe session drops it.
    assert resolve_providers("cuda", available=[CUDA, CPU]) == [CPU]
    lines = [r for r in caplog.records if r.name == "engine.runtime.providers"]
    assert len(lines) == 1
    assert lines[0].levelno == logging.WARNING
    assert CUDA in lines[0].getMessage() and "running on the CPU" in lines[0].getMessage()


def test_a_usable_provider_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="engine.runtime.providers")
    assert resolve_providers("cpu") == [CPU]
    assert not [r for r in caplog.records if r.name == "engine.runtime.providers"]


def test_the_environment_setting_reaches_every_session_of_explanations_and_audits(tmp_path: Path) -> None:
    # Explanations, audit chunks and predictions all take their sessions from Predictor.sessions.
    settings = Settings.from_env({"ONNXPLAIN_PROVIDERS": "cuda", "ONNXPLAIN_MODEL_DIR": str(tmp_path)})
    assert settings.providers == "cuda"
    predictor = Predictor(settings, ModelRegistry(settings))
    assert predictor.sessions.providers == [CPU]

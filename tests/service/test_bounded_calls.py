"""Chaos: a model whose memory comes from its input cannot grow a live API worker past its cap (issue 16.1)."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from client.launcher import free_port, start_api, stop_processes
from tests import builders
from tests.conftest import server_keys, wait_until_live, with_db

ROOT = Path(__file__).resolve().parents[2]
CAP = 4 * 1024**3
CARD = {"task": "regression", "features": ["a"]}
HEADERS: dict[str, str] = {}  # the capped server's key, set by the fixture


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.fixture
def capped_api(tmp_path, redis_url) -> Iterator[tuple[str, int, int]]:
    """gunicorn with one worker whose address space is capped at 4 GiB; yields its URL and the worker's pid."""
    port = free_port()
    keys_env, headers = server_keys(tmp_path)
    HEADERS.update(headers)
    env = {
        **os.environ,
        **keys_env,
        "PYTHONPATH": str(ROOT),
        "ONNXPLAIN_REDIS_URL": with_db(redis_url, 6),
        "ONNXPLAIN_MODEL_DIR": str(tmp_path / "models"),
        "ONNXPLAIN_PROCESS_MEMORY_BYTES": str(CAP),
    }
    proc = start_api(env, port=port, workers=1)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_live(base, proc)
        (worker,) = _children(proc.pid)
        yield base, worker, proc.pid
    finally:
        stop_processes([proc])
        HEADERS.clear()


def _upload(base: str, name: str, model) -> httpx.Response:
    files = {"model": ("m.onnx", io.BytesIO(model.SerializeToString()))}
    return httpx.post(
        f"{base}/v1/models",
        files=files,
        data={"card": json.dumps({**CARD, "name": name})},
        timeout=120,
        headers=HEADERS,
    )


@pytest.mark.slow
def test_an_input_shaped_allocation_fails_the_request_and_the_worker_returns_to_size(capped_api):
    """A predict asking 6 GB is 422 model_memory_limit; one asking 800 MB answers; RSS returns to its size."""
    base, worker, master = capped_api
    # Only the exact values 7 and 8 allocate, so the upload trial (zeros, ±1e6) cannot see it.
    hidden = builders.input_shaped_model({7.0: 2e8, 8.0: 1.5e9})
    assert _upload(base, "hidden", hidden).status_code == 201
    predict = f"{base}/v1/models/hidden:predict"
    assert httpx.post(predict, json={"instances": [[1.0]]}, timeout=60, headers=HEADERS).status_code == 200
    before = _rss(worker)
    fits = httpx.post(predict, json={"instances": [[7.0]]}, timeout=120, headers=HEADERS)
    assert fits.status_code == 200 and fits.json()["predictions"][0]["value"] > 1e6  # float32 sum: no exact count
    after_fit = _rss(worker)
    bomb = httpx.post(predict, json={"instances": [[8.0]]}, timeout=120, headers=HEADERS)
    assert bomb.status_code == 422, bomb.text
    assert bomb.json()["code"] == "model_memory_limit"
    after_bomb = _rss(worker)
    # The arena is off: the 800 MB call's memory went back; the refused one never got it.
    assert after_fit < before + 200 * 1024**2, (before, after_fit)
    assert after_bomb < before + 200 * 1024**2, (before, after_bomb)
    assert httpx.post(predict, json={"instances": [[1.0]]}, timeout=60, headers=HEADERS).status_code == 200
    assert _children(master) == [worker]  # the same worker process served it all: nothing was killed


@pytest.mark.slow
def test_the_upload_trial_runs_boundary_rows(capped_api):
    """The issue's model (shape = max(x)·1e9) passes a zeros-only trial; the boundary rows refuse it at upload."""
    base, _, _ = capped_api
    refused = _upload(base, "bomb", builders.input_shaped_model(scale=1e9))
    assert refused.status_code == 422, refused.text
    assert refused.json()["code"] == "invalid_model"
    assert "memory" in refused.json()["detail"] or "crashed" in refused.json()["detail"]

"""Chaos: requests waiting for their jobs never take the threads that /livez and predict need (issue 16.2).

A live gunicorn with one worker process (8 threads) and no RQ worker at all, so every explanation stays queued
and each ``wait`` runs to its end: the slowest explanation there is. Ten of them in flight must leave /livez and
predict answering: at most ``max_waiting_requests`` (4) hold a thread, the others answer 202 at once.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from client.launcher import free_port, start_api, stop_processes
from tests.conftest import server_keys, upload_http, wait_until_live, with_db

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 20  # each waiting explain holds its thread this long
BOUND_S = 10.0  # generous: a thread-starved server answers only when the waits end, after WAIT_S
CLIENTS = 10


@pytest.fixture
def api(tmp_path, redis_url, binary_model) -> Iterator[tuple[str, dict[str, str]]]:
    """gunicorn (1 process, default threads and waiting slots) over its own Redis DB, one model registered."""
    port = free_port()
    keys_env, headers = server_keys(tmp_path)
    env = {
        **os.environ,
        **keys_env,
        "PYTHONPATH": str(ROOT),
        "ONNXPLAIN_REDIS_URL": with_db(redis_url, 7),
        "ONNXPLAIN_MODEL_DIR": str(tmp_path / "models"),
    }
    env.pop("ONNXPLAIN_API_THREADS", None)
    proc = start_api(env, port=port, workers=1)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_live(base, proc)
        upload_http(base, binary_model, headers)
        yield base, headers
    finally:
        stop_processes([proc])


@pytest.mark.slow
def test_waiting_explains_leave_livez_and_predict_answering(api, binary_model):
    """10 explains with ``wait`` in flight: /livez and predict still answer; the waiters past the cap get 202."""
    base, headers = api
    rows = binary_model.X[:1].tolist()
    answers: list[tuple[int, float]] = []
    started = time.monotonic()

    def explain(seed: int) -> None:
        body = {"instances": rows, "method": "kernel_shap", "parameters": {"seed": seed}, "wait": WAIT_S}
        response = httpx.post(f"{base}/v1/models/credit:explain", json=body, headers=headers, timeout=WAIT_S + 30)
        answers.append((response.status_code, time.monotonic() - started))

    clients = [threading.Thread(target=explain, args=(seed,)) for seed in range(CLIENTS)]
    for client in clients:
        client.start()
    time.sleep(2)  # let every explain reach the server and its wait
    with httpx.Client(base_url=base, headers=headers, timeout=BOUND_S) as client:  # a starved server times out
        assert client.get("/livez").status_code == 200
        assert client.post("/v1/models/credit:predict", json={"instances": rows}).status_code == 200
    checked = time.monotonic() - started
    early = [status for status, at in answers if at < checked]
    assert sorted(early) == [202] * (CLIENTS - 4), answers  # past the 4 waiting slots: 202 at once
    for client in clients:
        client.join()
    assert [status for status, _ in answers] == [202] * CLIENTS  # the waiters end 202 too: no worker ran them


def test_uploads_past_the_trial_run_slots_are_503_with_retry_after(client, binary_model):
    """While every upload slot is taken (here by the test, as a slow trial run would), an upload is 503
    ``uploads_busy`` with Retry-After and nothing is registered; once one frees, the same upload succeeds."""
    from service.extensions import UPLOAD, services
    from tests.conftest import upload

    with client.application.app_context():
        svc = services()
    held = [svc.slot(UPLOAD) for _ in range(svc.settings.max_concurrent_uploads)]
    assert all(slot.__enter__() for slot in held)
    busy = upload(client, binary_model)
    assert busy.status_code == 503 and busy.json["code"] == "uploads_busy" and busy.headers["Retry-After"]
    assert client.get("/v1/models/credit").status_code == 404
    held.pop().__exit__(None, None, None)
    assert upload(client, binary_model).status_code == 201
    for slot in held:
        slot.__exit__(None, None, None)

"""Chaos: a SIGKILLed worker's job is run again elsewhere (or failed worker_lost) within 120 s, by the sweeper."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis import Redis
from rq import Worker
from rq.serializers import JSONSerializer

from client.launcher import start_redis, stop_processes
from engine.settings import Settings
from service.app import create_app
from tests import builders
from tests.conftest import authorize, issue_key, keyed
from tests.contract import ValidatingClient

ROOT = Path(__file__).resolve().parents[2]
BOUND_S = 120  # the issue's bound on dead work


def _worker(env: dict[str, str], name: str, logs: Path) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "worker", "--name", name, "--job-monitoring-interval", "1", "--sweep-interval", "1"]
    return subprocess.Popen(args, env=env, cwd=ROOT, stdout=(logs / f"{name}.log").open("wb"), stderr=subprocess.STDOUT)


def _setup(tmp_path, server, model):
    """Register ``model`` (one feature ``a``, background 1..3) in a store; return the env and an API client."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ONNXPLAIN_REDIS_URL": server.url,
        "ONNXPLAIN_MODEL_DIR": str(tmp_path / "models"),
        "ONNXPLAIN_AUDIT_DIR": str(tmp_path / "audits"),
        # The spin model runs until the call limit: the first run is killed long before, the second ends there.
        "ONNXPLAIN_MODEL_CALL_TIMEOUT_S": "8",
    }
    settings = keyed(Settings(redis_url=server.url, model_dir=tmp_path / "models", default_wait_s=0.0), tmp_path)
    app = create_app(settings)
    app.test_client_class = ValidatingClient
    client = authorize(app.test_client(), issue_key(settings))
    card = {"name": "spin", "task": "regression", "features": ["a"]}
    files = {
        "model": (io.BytesIO(model.SerializeToString()), "m.onnx"),
        "card": json.dumps(card),
        "background": (io.BytesIO(b"a\n1\n2\n3\n"), "b.csv"),
    }
    assert client.post("/v1/models", data=files, content_type="multipart/form-data").status_code == 201
    return env, client


def _start_spin_job(connection: Redis, client, count: int) -> tuple[str, str, float]:
    """Wait for ``count`` workers, submit the spin model's slow explanation; return its location, id, deadline."""
    deadline = time.monotonic() + 60
    while len(Worker.all(connection=connection)) < count:
        assert time.monotonic() < deadline, "workers did not start"
        time.sleep(0.2)
    job = client.post("/v1/models/spin:explain", json={"instances": [[9.0]], "method": "exact", "wait": 0})
    assert job.status_code == 202
    return job.headers["Location"], job.headers["X-Job-Id"], deadline


def _until_ended(client, location: str) -> dict:
    """Poll the job view until it is failed or succeeded, for at most BOUND_S; return the last view."""
    since, body = time.monotonic(), {}
    while time.monotonic() - since < BOUND_S:
        body = client.get(location).json
        if body["status"] in ("failed", "succeeded"):
            break
        time.sleep(0.25)
    return body


def _running_on(connection: Redis, job_id: str, deadline: float, dead: frozenset[int] = frozenset()) -> Worker:
    """The worker running ``job_id``; ``dead``: pids already killed, whose stale registration still names it."""
    while True:
        assert time.monotonic() < deadline, "the job never started"
        for worker in Worker.all(connection=connection, serializer=JSONSerializer):
            if worker.get_current_job_id() == job_id and worker.pid not in dead:
                return worker
        time.sleep(0.05)


@pytest.mark.slow
def test_a_sigkilled_workers_job_runs_again_within_the_bound(tmp_path):
    """The worker running a job is SIGKILLed; the other worker's sweeper re-queues it (no idle BLPOP needed)."""
    server = start_redis()
    env, client = _setup(tmp_path, server, builders.spin_model())
    procs = [_worker(env, f"loss-{i}", tmp_path) for i in range(2)]
    try:
        connection = Redis.from_url(server.url)
        location, job_id, deadline = _start_spin_job(connection, client, 2)
        victim = _running_on(connection, job_id, deadline + 60)
        running = client.get(location).json
        assert running["status"] == "running" and running["attempt"] == 1
        os.kill(victim.pid, signal.SIGKILL)
        body = _until_ended(client, location)
        # Re-run on the survivor (which then hit the call limit), or failed as worker_lost: never stuck running.
        assert body["status"] == "failed", body
        assert body["error"]["code"] in ("model_time_limit", "worker_lost"), body
        if body["error"]["code"] == "model_time_limit":
            assert body["attempt"] == 2, body  # the survivor's run is the job's second
        survivor = next(p for p in procs if p.pid != victim.pid)
        assert survivor.poll() is None
        _quarantined_then_cleared(client, job_id, body["error"]["code"])
    finally:
        stop_processes(procs)
        server.stop()


def _quarantined_then_cleared(client, job_id: str, code: str) -> None:
    """Its last attempt crashed too: the version is quarantined (409 with its state) until an operator clears it."""
    model = client.get("/v1/models/spin").json
    assert model["quarantine"]["state"] == "quarantined", model
    assert model["quarantine"]["job"] == job_id and model["quarantine"]["code"] == code
    for path, body in (
        ("/v1/models/spin:explain", {"instances": [[1.0]], "method": "exact", "wait": 0}),
        ("/v1/models/spin:predict", {"instances": [[1.0]]}),
    ):
        refused = client.post(path, json=body)
        assert refused.status_code == 409 and refused.json["code"] == "model_quarantined", refused.json
        assert job_id in refused.json["detail"]
    assert client.post("/v2/models/spin/infer", json={"inputs": []}).status_code == 409
    cleared = client.delete("/v1/models/spin/quarantine")
    assert cleared.status_code == 200 and cleared.json["cleared"][0]["version"] == 1, cleared.json
    assert client.get("/v1/models/spin").json["quarantine"] is None
    assert client.delete("/v1/models/spin/quarantine").json["cleared"] == []  # nothing left to clear
    again = client.post("/v1/models/spin:explain", json={"instances": [[1.0]], "method": "exact", "wait": 0})
    assert again.status_code == 202, again.json


@pytest.mark.slow
def test_a_model_that_kills_its_worker_on_the_retry_too_is_quarantined(tmp_path):
    """Both runs' workers die (SIGKILL, as a native crash would): the third worker's sweeper fails the job
    worker_lost and quarantines the version (the sweeper's path, not the failing job's own handler)."""
    server = start_redis()
    env, client = _setup(tmp_path, server, builders.spin_model())
    procs = [_worker(env, f"crash-{i}", tmp_path) for i in range(3)]
    try:
        connection = Redis.from_url(server.url)
        location, job_id, deadline = _start_spin_job(connection, client, 3)
        killed = set()
        for attempt in (1, 2):
            while client.get(location).json["attempt"] != attempt:
                assert time.monotonic() < deadline + BOUND_S, f"attempt {attempt} never started"
                time.sleep(0.05)
            victim = _running_on(connection, job_id, deadline + BOUND_S, frozenset(killed))
            os.kill(victim.pid, signal.SIGKILL)
            killed.add(victim.pid)
        body = _until_ended(client, location)
        assert body["status"] == "failed" and body["error"]["code"] == "worker_lost", body
        assert body["attempt"] == 2
        _quarantined_then_cleared(client, job_id, "worker_lost")
        assert [p.poll() for p in procs if p.pid not in killed] == [None]  # the sweeper's worker is up
    finally:
        stop_processes(procs)
        server.stop()


@pytest.mark.slow
def test_sigterm_finishes_the_running_job_then_exits(tmp_path):
    """A warm shutdown: the worker that gets SIGTERM mid-job completes it, records it, and exits 0."""
    server = start_redis()
    env, client = _setup(tmp_path, server, builders.spin_model(trips=200_000))
    proc = _worker(env, "warm", tmp_path)
    try:
        connection = Redis.from_url(server.url)
        job = client.post("/v1/models/spin:explain", json={"instances": [[9.0]], "method": "exact", "wait": 0})
        assert job.status_code == 202
        _running_on(connection, job.headers["X-Job-Id"], time.monotonic() + 120)
        assert client.get(job.headers["Location"]).json["status"] == "running"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
        body = client.get(job.headers["Location"]).json
        assert body["status"] == "succeeded", body
    finally:
        stop_processes([proc])
        server.stop()

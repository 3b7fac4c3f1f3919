"""Chaos: Redis is killed (-9) during a job and restarted from its append-only file; workers stay up and every
acknowledged job reaches a terminal state."""

from __future__ import annotations

import signal
import time

import pytest
from redis import Redis

from client.launcher import start_redis, stop_processes
from tests import builders
from tests.worker.test_worker_loss import _running_on, _setup, _worker

BOUND_S = 120


def _terminal(client, location: str, bound_s: float) -> dict:
    deadline = time.monotonic() + bound_s
    body: dict = {}
    while time.monotonic() < deadline:
        response = client.get(location)
        if response.status_code == 200:  # 503 while the API's connection comes back is fine
            body = response.json
            if body["status"] in ("succeeded", "failed", "canceled"):
                return body
        time.sleep(0.25)
    raise AssertionError(f"{location} not terminal after {bound_s} s: {body}")


@pytest.mark.slow
def test_workers_survive_a_redis_kill_and_every_job_ends(tmp_path):
    """kill -9 Redis mid-job, restart it on its AOF: the worker is still up, the job ends, new jobs run."""
    server = start_redis(persist=True)
    env, client = _setup(tmp_path, server, builders.spin_model(trips=200_000))
    proc = _worker(env, "survivor", tmp_path)
    try:
        connection = Redis.from_url(server.url)
        job = client.post("/v1/models/spin:explain", json={"instances": [[9.0]], "method": "exact", "wait": 0})
        assert job.status_code == 202
        _running_on(connection, job.headers["X-Job-Id"], time.monotonic() + 120)
        time.sleep(1.5)  # the AOF (fsync every second) has the job as started
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
        time.sleep(3)
        assert proc.poll() is None, "the worker died with Redis"
        server = start_redis(server.port, persist=True, directory=server.directory)
        assert _terminal(client, job.headers["Location"], BOUND_S)["status"] in ("succeeded", "failed")
        assert proc.poll() is None
        again = client.post("/v1/models/spin:explain", json={"instances": [[2.0]], "method": "exact", "wait": 0})
        assert again.status_code == 202
        assert _terminal(client, again.headers["Location"], BOUND_S)["status"] == "succeeded"
    finally:
        stop_processes([proc])
        server.stop()

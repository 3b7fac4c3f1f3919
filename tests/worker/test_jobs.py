"""Job functions run by a real in-process SimpleWorker (burst) on a real Redis."""

from __future__ import annotations

import logging
from datetime import datetime

import pytest
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FinishedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.suspension import resume, suspend

from engine.explain.plan import build_request
from engine.jobs import JOBS
from engine.models.card import ModelCard
from engine.models.store import ModelRegistry
from service.gateways.jobs import JobGateway
from worker import context as worker_context
from worker.failures import record_failure
from worker.heartbeat import HeartbeatWorker


@pytest.fixture
def gateway(redis_conn, settings, monkeypatch) -> JobGateway:
    """A gateway on the test Redis, and a worker context reading the test settings."""
    monkeypatch.setenv("ONNXPLAIN_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("ONNXPLAIN_MODEL_DIR", str(settings.model_dir))
    worker_context.context.cache_clear()
    yield JobGateway(redis_conn, result_ttl=600, failure_ttl=600)
    worker_context.context.cache_clear()


def run_burst(connection) -> HeartbeatWorker:
    """Run the queued jobs in this process with the worker class `python -m worker` runs (no sweeper)."""
    queues = [Queue(name, connection=connection, serializer=JSONSerializer) for name in ("interactive", "batch")]
    worker = HeartbeatWorker(
        queues, connection=connection, serializer=JSONSerializer, exception_handlers=[record_failure], sweep_interval=0
    )
    worker.work(burst=True)
    return worker


def registered(settings, built):
    registry = ModelRegistry(settings)
    return registry.register(built.onnx_bytes, ModelCard.from_dict(built.card), built.background_csv(), "csv")


def test_explain_job_returns_attribution_json(gateway, settings, binary_model):
    """The job function turns a payload into the attribution JSON, recorded as the job's result."""
    model = registered(settings, binary_model)
    request = build_request({"instances": binary_model.X[:2].tolist(), "method": "exact"}, model, settings, "fp32")
    job = gateway.submit(JOBS["explain"], request.to_payload(), timeout=60, tenant="acme").job
    run_burst(gateway.connection)
    job = Job.fetch(job.id, connection=gateway.connection, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FINISHED
    result = job.return_value()
    assert result["method"] == "exact" and len(result["explanations"]) == 2
    assert gateway.describe(job, location="/x")["status"] == "succeeded"


def test_an_interactive_jobs_one_start_and_one_success_transaction_keep_rqs_bookkeeping(
    gateway, settings, binary_model
):
    """The worker's shortened start and success (HeartbeatWorker) leave what RQ's own would: the job finished
    with its result, in the finished registry only, its execution record gone, its attempt counted, the worker's
    counters moved."""
    model = registered(settings, binary_model)
    request = build_request({"instances": binary_model.X[:1].tolist(), "method": "exact"}, model, settings, "fp32")
    job = gateway.submit(JOBS["explain"], request.to_payload(), timeout=60, tenant="acme").job
    assert job.origin == "interactive" and job.description == "onnxplain explain job"  # not the payload's repr
    worker = run_burst(gateway.connection)
    job = Job.fetch(job.id, connection=gateway.connection, serializer=JSONSerializer)
    queue = Queue("interactive", connection=gateway.connection, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FINISHED and job.return_value()["method"] == "exact"
    assert job.id in FinishedJobRegistry(queue=queue).get_job_ids()
    assert job.id not in StartedJobRegistry(queue=queue).get_job_ids()
    assert job.get_executions() == [] and job.worker_name == worker.name
    assert job.started_at is not None and job.ended_at is not None and job.started_at <= job.ended_at
    assert gateway.connection.hget(job.key, "onnxplain_attempt") == b"1"
    assert gateway.describe(job, location="/x")["attempt"] == 1
    counts = gateway.connection.hmget(worker.key, "successful_job_count", "failed_job_count", "total_working_time")
    assert int(counts[0]) == 1 and counts[1] is None and float(counts[2]) > 0  # what the worker wrote to Redis
    assert gateway.connection.ttl(job.key) > 0  # the result's TTL, not persisted forever


def test_the_worker_idles_and_honours_a_suspension_read_with_an_interactive_jobs_success(
    gateway, settings, binary_model, monkeypatch
):
    """The beat, idle state and suspension check RQ sends after each job ride in an interactive job's success
    transaction: the worker still reads idle with a fresh beat, and an ``rq suspend`` issued while a job runs
    stops it before the next job."""
    model = registered(settings, binary_model)
    jobs = []
    for row in binary_model.X[:2]:
        request = build_request({"instances": [row.tolist()], "method": "exact"}, model, settings, "fp32")
        jobs.append(gateway.submit(JOBS["explain"], request.to_payload(), timeout=60, tenant="acme").job)
    succeed = HeartbeatWorker.handle_job_success
    states = []

    def suspended_meanwhile(worker, job, *args, **kwargs):
        suspend(gateway.connection)  # `rq suspend` while the first job runs, before its success transaction
        succeed(worker, job, *args, **kwargs)
        states.append(gateway.connection.hmget(worker.key, "state", "last_heartbeat"))

    monkeypatch.setattr(HeartbeatWorker, "handle_job_success", suspended_meanwhile)
    try:
        run_burst(gateway.connection)  # burst mode: a suspended worker exits
    finally:
        resume(gateway.connection)
    first, second = (Job.fetch(j.id, connection=gateway.connection, serializer=JSONSerializer) for j in jobs)
    assert first.get_status() == JobStatus.FINISHED
    assert second.get_status() == JobStatus.QUEUED  # not taken: the suspension was read before the next dequeue
    ((state, beat),) = states
    assert state == b"idle" and datetime.fromisoformat(beat.decode().replace("Z", "+00:00")) >= first.ended_at


def test_a_queued_job_whose_hash_is_gone_is_skipped_without_a_write(gateway, settings, binary_model, caplog):
    """The dequeue no longer reads the job before its start (they are one script): a job deleted while queued is
    skipped as RQ's dequeue skips it, and its start writes nothing (no half-made hash, registry entry or
    execution); the next job runs."""
    model = registered(settings, binary_model)
    jobs = []
    for row in binary_model.X[:2]:
        request = build_request({"instances": [row.tolist()], "method": "exact"}, model, settings, "fp32")
        jobs.append(gateway.submit(JOBS["explain"], request.to_payload(), timeout=60, tenant="acme").job)
    gone, kept = jobs
    gateway.connection.delete(gone.key)  # its id stays in the queue's list
    caplog.set_level(logging.INFO, logger="rq.worker")
    worker = run_burst(gateway.connection)
    # Skipped by the read-and-start script, not by RQ's own read (which skips silently): the dequeue left the
    # read of the hash to the start.
    assert f"job {gone.id} no longer exists; skipped" in caplog.text
    queue = Queue("interactive", connection=gateway.connection, serializer=JSONSerializer)
    assert not gateway.connection.exists(gone.key)
    assert not gateway.connection.keys(f"*{gone.id}*")  # nor an execution, a registry entry or a result
    assert gone.id not in StartedJobRegistry(queue=queue).get_job_ids()
    finished = Job.fetch(kept.id, connection=gateway.connection, serializer=JSONSerializer)
    assert finished.get_status() == JobStatus.FINISHED and finished.worker_name == worker.name
    assert gateway.describe(finished, location="/x")["attempt"] == 1


def test_deterministic_errors_fail_once_with_their_code(gateway, settings, binary_model):
    """An engine error (the model was deleted) fails the job at once with its code; no retry."""
    model = registered(settings, binary_model)
    request = build_request({"instances": binary_model.X[:1].tolist(), "method": "exact"}, model, settings, "fp32")
    ModelRegistry(settings).delete(model.name)
    job = gateway.submit(JOBS["explain"], request.to_payload(), timeout=60, tenant="acme").job
    run_burst(gateway.connection)
    job = Job.fetch(job.id, connection=gateway.connection, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FAILED
    assert job.get_meta()["error"]["code"] == "model_not_found"
    assert job.retries_left == 0
    error = gateway.describe(job, location="/x")["error"]
    assert error["code"] == "model_not_found" and error["status"] == 404


def test_unexpected_errors_are_retried_then_failed(gateway):
    """A crash that is not an engine error keeps its bounded retry, then fails as internal_error."""
    job = gateway.submit(JOBS["explain"], {"not": "a request"}, timeout=60, tenant="acme").job
    run_burst(gateway.connection)
    job = Job.fetch(job.id, connection=gateway.connection, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FAILED
    assert job.get_meta()["error"]["code"] == "internal_error"
    assert job.retries_left == 0  # the one retry was used


def test_timeout_is_reported_as_timeout(gateway, settings, binary_model):
    """A job past its hard time limit fails with code timeout, not left running."""
    model = registered(settings, binary_model)
    rows = binary_model.X[:100].tolist()
    body = {"instances": rows, "method": "lime", "parameters": {"num_samples": 100000}}
    request = build_request(body, model, settings.replace(max_model_evaluations=10**9), "fp32")
    job = gateway.submit(JOBS["explain"], request.to_payload(), timeout=1, tenant="acme").job
    run_burst(gateway.connection)
    job = Job.fetch(job.id, connection=gateway.connection, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FAILED
    assert job.get_meta()["error"]["code"] == "timeout"


def test_identical_requests_share_a_job(gateway, settings, binary_model):
    """A tenant's repeat finds its existing job through the result cache; another tenant's gets its own."""
    model = registered(settings, binary_model)
    payload = build_request({"instances": [[0, 0, 0, 0]], "method": "exact"}, model, settings, "fp32").to_payload()
    first = gateway.submit(JOBS["explain"], payload, timeout=60, tenant="acme").job
    second = gateway.submit(JOBS["explain"], payload, timeout=60, tenant="acme").job
    assert first.id == second.id
    assert Queue("interactive", connection=gateway.connection).count == 1
    other = gateway.submit(JOBS["explain"], payload, timeout=60, tenant="other").job
    assert other.id != first.id


def test_a_swallowed_timeout_is_raised_again():
    """The hard limit holds when code swallows the first timeout (RQ's single alarm would let the job run on)."""
    import time

    from rq.timeouts import JobTimeoutException

    from worker.heartbeat import PersistentDeathPenalty

    # With RQ's single alarm the second sleep would run out and nothing would be raised.
    with pytest.raises(JobTimeoutException), PersistentDeathPenalty(1, JobTimeoutException):
        try:
            time.sleep(30)  # the first alarm lands here...
        except JobTimeoutException:
            pass  # ...and a careless library swallows it
        time.sleep(30)


def test_the_last_crash_of_a_model_running_job_quarantines_its_model(gateway, settings, binary_model, monkeypatch):
    """An audit chunk names its model through its audit; its merge, and a deterministic error, quarantine nothing."""
    import pandas as pd

    from engine.audits.store import AuditStore
    from engine.jobs import WORKER_LOST, job_error
    from engine.models import quarantine
    from worker.failures import quarantine_after

    monkeypatch.setenv("ONNXPLAIN_AUDIT_DIR", str(settings.model_dir.parent / "audits"))
    worker_context.context.cache_clear()
    model = registered(settings, binary_model)
    audit = AuditStore(settings.model_dir.parent / "audits").create(
        {"model": {"name": model.name, "version": model.version}}, pd.DataFrame({"a": [1]}), row_group_rows=1
    )

    def job(kind: str) -> Job:
        return Job.create(JOBS[kind].function, args=[{"audit": audit.id}], connection=gateway.connection)

    assert not quarantine_after(job("audit_merge"), job_error(WORKER_LOST))
    assert not quarantine_after(job("audit_chunk"), job_error(RuntimeError("a bug")))
    assert quarantine.read(model.path) is None
    assert quarantine_after(job("audit_chunk"), job_error(WORKER_LOST))
    assert quarantine.read(model.path).code == WORKER_LOST


def _finished_job_seen_running(gateway, settings, binary_model) -> Job:
    """A job a real worker finished, its status put back to started: the moment before it finishes."""
    model = registered(settings, binary_model)
    request = build_request({"instances": binary_model.X[:1].tolist(), "method": "exact"}, model, settings, "fp32")
    job = gateway.submit(JOBS["explain"], request.to_payload(), timeout=60, tenant="acme").job
    run_burst(gateway.connection)
    job = Job.fetch(job.id, connection=gateway.connection, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FINISHED
    job.set_status(JobStatus.STARTED)
    return job


def test_a_running_job_that_finishes_as_the_cancel_flag_goes_up_keeps_its_result(
    gateway, settings, binary_model, monkeypatch
):
    """Cancel reads the status again after raising the flag: a job that finished in between answers 409."""
    from engine.errors import Conflict
    from engine.jobs import cancel_key

    job = _finished_job_seen_running(gateway, settings, binary_model)
    connection = gateway.connection
    real_set = connection.set

    def set_then_finish(name, *args, **kwargs):
        # The worker finishes the job right after the flag is written, before cancel looks again.
        answer = real_set(name, *args, **kwargs)
        if name == cancel_key(job.id):
            job.set_status(JobStatus.FINISHED)
        return answer

    monkeypatch.setattr(connection, "set", set_then_finish)
    with pytest.raises(Conflict) as raised:
        gateway.cancel(job.id, "acme")
    monkeypatch.undo()
    assert raised.value.code == "job_not_cancelable"
    assert not connection.exists(cancel_key(job.id))  # the flag went down again
    public = gateway.describe(job, location="/x")
    assert public["status"] == "succeeded" and len(public["result"]["explanations"]) == 1


def test_a_running_job_canceled_then_finishing_stays_canceled(gateway, settings, binary_model):
    """A cancel answered for a running job wins over a result that lands before the job's next flag check."""
    job = _finished_job_seen_running(gateway, settings, binary_model)
    answered = gateway.cancel(job.id, "acme")  # still started at both reads: the flag stays up
    assert answered.id == job.id
    job.set_status(JobStatus.FINISHED)  # then the job ends before it looks at the flag
    assert gateway.describe(job, location="/x")["status"] == "canceled"


def test_one_beating_thread_beats_each_job_in_turn(gateway, settings):
    """Jobs run one after another share the worker's one beating thread, and each is beaten while it runs."""
    import threading
    import time

    import numpy as np
    import onnxruntime as ort

    from tests import builders

    trips = 100_000
    probe = ort.InferenceSession(builders.spin_model(trips=trips).SerializeToString())
    feed = {probe.get_inputs()[0].name: np.array([[9.0]], dtype=np.float32)}
    probe.run(None, feed)  # the first run's own costs out of the timing
    tic = time.perf_counter()
    probe.run(None, feed)
    trips = int(trips * 0.4 / max(time.perf_counter() - tic, 1e-6))  # a model call of about 0.4 s
    spin = builders.spin_model(trips=trips).SerializeToString()
    registry = ModelRegistry(settings)
    jobs = []
    for name in ("spin-a", "spin-b"):
        card = ModelCard.from_dict({"name": name, "task": "regression", "features": ["a"]})
        model = registry.register(spin, card, b"a\n1\n2\n3\n", "csv")
        request = build_request({"instances": [[9.0]], "method": "exact"}, model, settings, "fp32")
        jobs.append(gateway.submit(JOBS["explain"], request.to_payload(), timeout=60, tenant="acme").job)
    queues = [Queue(name, connection=gateway.connection, serializer=JSONSerializer) for name in ("interactive",)]
    worker = HeartbeatWorker(queues, connection=gateway.connection, serializer=JSONSerializer, sweep_interval=0)
    worker.job_monitoring_interval = 0.1  # type: ignore[assignment]  # beats ten times a second
    beats: list[float] = []
    beaters: set[threading.Thread] = set()  # the objects, held: a thread id is reused once its thread ends
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.02):
            raw = gateway.connection.hget(worker.key, "last_heartbeat")
            if raw is not None:
                beats.append(datetime.fromisoformat(raw.decode()).timestamp())
            beaters.update(t for t in threading.enumerate() if t.name == "rq-heartbeat")

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        worker.work(burst=True)
    finally:
        stop.set()
        watcher.join()
    assert len(beaters) == 1  # one thread for both jobs, not one started per job
    for job in jobs:
        job = Job.fetch(job.id, connection=gateway.connection, serializer=JSONSerializer)
        assert job.get_status() == JobStatus.FINISHED
        start, end = job.started_at.timestamp(), job.ended_at.timestamp()
        assert end - start > 0.3  # its model calls spun (about 1 s here: two or three calls of 0.4 s)
        during = {beat for beat in beats if start + 0.05 < beat < end}  # beats after the job's own start
        assert len(during) >= 2, (start, end, sorted(set(beats)))

"""The queue contract (engine/jobs.py): every job resolves, and a worker runs nothing outside it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.utils import import_attribute

from engine.errors import NotFound
from engine.jobs import FUNCTIONS, JOBS, QUEUES, JobError, MetaKey, job_error, read_job_error
from worker.failures import record_failure
from worker.heartbeat import HeartbeatWorker


@pytest.mark.parametrize("name", sorted(JOBS))
def test_every_job_name_resolves_to_a_worker_function(name: str) -> None:
    kind = JOBS[name]
    assert kind.name == name and kind.queue in QUEUES
    assert kind.function.startswith("worker.jobs.")
    assert callable(import_attribute(kind.function))


def test_engine_errors_keep_code_field_and_class_and_other_failures_are_internal() -> None:
    record = job_error(NotFound("model 'm' has no version 2", code="version_not_found", field="version"))
    assert record == JobError("version_not_found", "model 'm' has no version 2", "Not found", "NotFound", "version")
    assert JobError.from_dict(record.to_dict()) == record
    assert job_error(ValueError("boom")).code == "internal_error"
    assert job_error(ValueError("x"), timeout_s=3).code == "timeout"


def test_a_failure_without_a_record_is_read_from_rqs_note() -> None:
    assert read_job_error(None, "Traceback ...\nrq.exceptions.AbandonedJobError: Abandoned").code == "worker_lost"
    assert read_job_error(None, "Traceback ...\nKeyError: 'x'").message == "KeyError: 'x'"
    assert read_job_error({"code": "timeout", "message": "late"}, None).code == "timeout"


def test_a_hand_written_job_naming_another_function_is_refused_and_never_runs(redis_conn, tmp_path: Path) -> None:
    """A job hash put into Redis by hand, naming ``os.makedirs``: the worker fails it without running it."""
    target = tmp_path / "must-not-exist"
    job_id = "hand-written-job"
    redis_conn.hset(
        Job.key_for(job_id),
        mapping={
            "data": json.dumps(["os.makedirs", None, [str(target)], {}]),
            "status": JobStatus.QUEUED.value,
            "origin": "interactive",
            "description": "os.makedirs(...)",
            "created_at": "2026-12-01T21:30:07.123456Z",
            "timeout": "60",
        },
    )
    redis_conn.rpush(Queue("interactive", connection=redis_conn).key, job_id)
    queues = [Queue(name, connection=redis_conn, serializer=JSONSerializer) for name in QUEUES]
    worker = HeartbeatWorker(
        queues, connection=redis_conn, serializer=JSONSerializer, exception_handlers=[record_failure], sweep_interval=0
    )
    worker.work(burst=True)
    assert not target.exists()
    job = Job.fetch(job_id, connection=redis_conn, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FAILED
    error = JobError.from_dict(job.get_meta().get(MetaKey.ERROR))
    assert error is not None and error.code == "job_refused" and "os.makedirs" in error.message


def test_the_contract_functions_are_exactly_the_job_functions() -> None:
    import worker.jobs

    public = {f"worker.jobs.{n}" for n, v in vars(worker.jobs).items() if callable(v) and not n.startswith("_")}
    assert FUNCTIONS <= public
    assert {f for f in public if getattr(worker.jobs, f.rsplit(".", 1)[1]).__module__ == "worker.jobs"} == FUNCTIONS

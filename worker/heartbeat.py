"""A SimpleWorker that keeps beating while a job runs, so a dead worker's job is noticed in seconds.

RQ's forking ``Worker`` refreshes a running job's heartbeat every ``job_monitoring_interval`` from its parent
process, and a job whose heartbeat lapses is *abandoned*: ``StartedJobRegistry.cleanup()`` retries or fails it.
A ``SimpleWorker`` runs the job in its only thread and never beats meanwhile, so RQ gives the job
``timeout + 60`` seconds: a batch chunk on a killed worker would sit ``started`` for half an hour. Here a daemon
thread beats instead; it dies with the process, which is exactly the signal wanted.
"""

from __future__ import annotations

import threading
from typing import Any

from rq import SimpleWorker
from rq.executions import Execution
from rq.job import Job
from rq.worker import WorkerStatus

_MISSED_BEATS = 3  # a job is abandoned after this many intervals without a beat


class HeartbeatWorker(SimpleWorker):
    """A ``SimpleWorker`` whose running job's heartbeat lapses ``3 × job_monitoring_interval`` after it died."""

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """Seconds until the running job counts as abandoned, unless beaten again."""
        return max(3, int(_MISSED_BEATS * self.job_monitoring_interval))

    def execute_job(self, job: Job, queue: Any) -> None:
        """Run the job in this thread while a daemon thread refreshes its heartbeat."""
        execution = self.prepare_execution(job)
        done = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job, execution, done), daemon=True, name="rq-heartbeat")
        beat.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            done.set()
            beat.join()
        self.set_state(WorkerStatus.IDLE)

    def _beat(self, job: Job, execution: Execution, done: threading.Event) -> None:
        while not done.wait(self.job_monitoring_interval):
            try:
                with self.connection.pipeline() as pipeline:
                    self.heartbeat(int(self.job_monitoring_interval) + 60, pipeline=pipeline)
                    # xx: a job that just ended has left the registry; a late beat must not put it back.
                    execution.heartbeat(job.started_job_registry, self.get_heartbeat_ttl(job), pipeline)
                    pipeline.execute()
            except Exception:  # a lost beat is retried at the next interval; the job itself goes on
                self.log.warning("heartbeat of job %s failed", job.id, exc_info=True)

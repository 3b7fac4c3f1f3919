"""The worker: an RQ SimpleWorker that runs only the contract's jobs, beats while it works, and sweeps.

RQ's forking ``Worker`` refreshes a running job's heartbeat every ``job_monitoring_interval`` from its parent
process, and a job whose heartbeat lapses is *abandoned*: ``StartedJobRegistry.cleanup()`` retries or fails it.
A ``SimpleWorker`` runs the job in its only thread and never beats meanwhile, so RQ gives the job
``timeout + 60`` seconds: a batch chunk on a killed worker would sit ``started`` for half an hour. Here a daemon
thread beats instead; it dies with the process, which is exactly the signal wanted.

RQ itself cleans the registries only every ``maintenance_interval``; a second daemon thread sweeps abandoned
jobs every few seconds (one worker per interval, under a Redis lock), so a dead worker's chunk runs again
elsewhere without anyone reading the API.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from rq import SimpleWorker
from rq.executions import Execution
from rq.job import Job
from rq.timeouts import UnixSignalDeathPenalty
from rq.worker import WorkerStatus

from engine.errors import JobRefused
from engine.jobs import FUNCTIONS, MetaKey
from worker.failures import record_failure
from worker.webhooks import Courier, run_courier

_MISSED_BEATS = 3  # a job is abandoned after this many intervals without a beat
_SWEEP_LOCK = "onnxplain:sweep"


class ContractJob(Job):
    """An RQ job that refuses, before importing anything, a function outside :data:`engine.jobs.FUNCTIONS`."""

    def _execute(self) -> Any:
        # func_name is the stored string; self.func would import it, which is what must not happen.
        if self.func_name not in FUNCTIONS:
            raise JobRefused(f"{self.func_name!r} is not a job of onnxplain; nothing was run", code="job_refused")
        # Counted in the job's own meta, which outlives its worker: a re-run after a dead worker reads 2.
        job: Job = self  # typed as RQ's Job, whose save_meta mypy's rq exclusion covers
        # job.meta is as the dequeue just fetched it (HGETALL): a second read would cost a round trip per job.
        job.meta[MetaKey.ATTEMPT] = int(job.meta.get(MetaKey.ATTEMPT) or 0) + 1
        job.save_meta()
        return super()._execute()


class PersistentDeathPenalty(UnixSignalDeathPenalty):
    """RQ's SIGALRM job timeout, raised again every second until the job ends.

    RQ arms a single ``alarm``: when the timeout exception lands where a library swallows it (a bare ``except``,
    a finalizer), the job runs on unbounded. Re-raising each second past the limit keeps the hard limit hard.
    """

    def setup_death_penalty(self) -> None:
        """Arm the timer: first at the job's limit, then every second."""
        signal.signal(signal.SIGALRM, self.handle_death_penalty)
        signal.setitimer(signal.ITIMER_REAL, float(self._timeout), 1.0)

    def cancel_death_penalty(self) -> None:
        """Disarm the timer and restore the default handler."""
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


class HeartbeatWorker(SimpleWorker):
    """A ``SimpleWorker`` whose running job's heartbeat lapses ``3 × job_monitoring_interval`` after it died.

    Args:
        sweep_interval: Seconds between sweeps of abandoned jobs (0 turns the sweeper off).
        courier: The webhook courier run beside the jobs (``None``: this worker delivers no webhooks).
        courier_interval: Seconds between looks at the webhook outbox.
        *args, **kwargs: As for :class:`rq.SimpleWorker`; ``job_class`` defaults to :class:`ContractJob`.
    """

    death_penalty_class = PersistentDeathPenalty

    def __init__(
        self,
        *args: Any,
        sweep_interval: float = 5.0,
        courier: Courier | None = None,
        courier_interval: float = 0.5,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("job_class", ContractJob)
        super().__init__(*args, **kwargs)
        self.sweep_interval = sweep_interval
        self.courier = courier
        self.courier_interval = courier_interval
        self._stop_sweeping = threading.Event()

    def work(self, *args: Any, **kwargs: Any) -> bool:
        """Run RQ's loop with the sweeper and the webhook courier threads beside it."""
        threads = []
        if self.sweep_interval > 0:
            threads.append(threading.Thread(target=self._sweep_loop, daemon=True, name="onnxplain-sweeper"))
        if self.courier is not None:
            loop = (self.courier, self._stop_sweeping, self.courier_interval)
            threads.append(threading.Thread(target=run_courier, args=loop, daemon=True, name="onnxplain-webhooks"))
        for thread in threads:
            thread.start()
        try:
            return bool(super().work(*args, **kwargs))
        finally:
            self._stop_sweeping.set()
            for thread in threads:
                thread.join(timeout=self.sweep_interval + self.courier_interval + 5)

    def sweep(self) -> None:
        """Retry (or fail, quarantining its model) jobs of every queue whose worker died, unless another worker
        just did."""
        if not self.connection.set(_SWEEP_LOCK, self.name, nx=True, px=max(1, int(self.sweep_interval * 900))):
            return
        for queue in self.queues:
            queue.started_job_registry.cleanup(exception_handlers=[record_failure])

    def _sweep_loop(self) -> None:
        while not self._stop_sweeping.wait(self.sweep_interval):
            try:
                self.sweep()
            except Exception:  # a failed sweep is tried again at the next interval
                self.log.warning("sweeping abandoned jobs failed", exc_info=True)

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """RQ's worker heartbeat, its three commands sent as one pipeline when the caller gave none.

        RQ beats around every job (after the dequeue, after the job, before the next wait): nine round trips
        per job, three of them between the dequeue and the job's start, where an explanation waits for them.
        """
        if pipeline is not None:
            super().heartbeat(timeout, pipeline=pipeline)
            return
        with self.connection.pipeline() as own:
            super().heartbeat(timeout, pipeline=own)
            own.execute()

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

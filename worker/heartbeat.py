"""The worker: an RQ SimpleWorker that runs only the contract's jobs, beats while it works, and sweeps.

RQ's forking ``Worker`` refreshes a running job's heartbeat every ``job_monitoring_interval`` from its parent
process, and a job whose heartbeat lapses is *abandoned*: ``StartedJobRegistry.cleanup()`` retries or fails it.
A ``SimpleWorker`` runs the job in its only thread and never beats meanwhile, so RQ gives the job
``timeout + 60`` seconds: a batch chunk on a killed worker would sit ``started`` for half an hour. Here a daemon
thread beats instead (one for the worker's life, handed each job); it dies with the process, which is exactly
the signal wanted.

RQ itself cleans the registries only every ``maintenance_interval``; a second daemon thread sweeps abandoned
jobs every few seconds (one worker per interval, under a Redis lock), so a dead worker's chunk runs again
elsewhere without anyone reading the API.
"""

from __future__ import annotations

import signal
import threading
import time
import weakref
from queue import SimpleQueue
from typing import Any

from redis.client import Pipeline
from rq import Queue, SimpleWorker
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.rate_limit import release_slot
from rq.suspension import WORKERS_SUSPENDED
from rq.timeouts import UnixSignalDeathPenalty
from rq.utils import backend_class, now
from rq.worker import WorkerStatus

from engine.errors import JobRefused
from engine.jobs import ATTEMPT_FIELD, FUNCTIONS, INTERACTIVE, recorded, replay_lua
from worker.failures import record_failure
from worker.observe import TALLY, flush, queue_tallies
from worker.webhooks import Courier, run_courier

_MISSED_BEATS = 3  # a job is abandoned after this many intervals without a beat
_SWEEP_LOCK = "onnxplain:sweep"


class ContractJob(Job):
    """An RQ job that refuses, before importing anything, a function outside :data:`engine.jobs.FUNCTIONS`."""

    def _execute(self) -> Any:
        # func_name is the stored string; self.func would import it, which is what must not happen.
        if self.func_name not in FUNCTIONS:
            raise JobRefused(f"{self.func_name!r} is not a job of onnxplain; nothing was run", code="job_refused")
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


_READ_AND_START = (
    """
-- KEYS[1]: the dequeued job's hash. ARGV: its start, each command as its argument count and then its
-- arguments (as recorded on a pipeline). Nothing is written for a job that no longer exists.
if redis.call('EXISTS', KEYS[1]) == 0 then
    return false
end
"""
    + replay_lua(1)
    + """
return redis.call('HGETALL', KEYS[1])
"""
)


class StartingQueue(Queue):
    """RQ's queue, whose dequeue leaves reading the job's hash to the job's start.

    RQ reads a dequeued job (HGETALL) at once, then starts it in a transaction of its own: two round trips in
    a row while the request waits. Here the dequeue hands over the job's id and queue only, and
    :meth:`HeartbeatWorker.execute_job` reads the job in its start (:data:`_READ_AND_START`): one.
    """

    @classmethod
    def _fetch_dequeued_job(
        cls,
        connection: Any,
        queue_key: str,
        job_id: str,
        job_class: Any = None,
        serializer: Any = None,
        death_penalty_class: Any = None,
    ) -> tuple[Job, Queue] | None:
        job_cls = backend_class(cls, "job_class", override=job_class)
        queue = cls.from_queue_key(
            queue_key,
            connection=connection,
            job_class=job_cls,
            serializer=serializer,
            death_penalty_class=death_penalty_class,
        )
        job = job_cls(job_id, connection=connection, serializer=serializer)
        job.origin = queue.name  # what the start's registries need before the hash is read
        _UNREAD.add(job)
        return job, queue


_UNREAD: weakref.WeakSet[Job] = weakref.WeakSet()
"""Jobs :class:`StartingQueue` dequeued whose hash is not read yet."""


class HeartbeatWorker(SimpleWorker):
    """A ``SimpleWorker`` whose running job's heartbeat lapses ``3 × job_monitoring_interval`` after it died.

    Args:
        sweep_interval: Seconds between sweeps of abandoned jobs (0 turns the sweeper off).
        courier: The webhook courier run beside the jobs (``None``: this worker delivers no webhooks).
        courier_interval: Seconds between looks at the webhook outbox.
        *args, **kwargs: As for :class:`rq.SimpleWorker`; ``job_class`` defaults to :class:`ContractJob`.
    """

    death_penalty_class = PersistentDeathPenalty
    queue_class = StartingQueue

    def __init__(
        self,
        *args: Any,
        sweep_interval: float = 5.0,
        courier: Courier | None = None,
        courier_interval: float = 0.5,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("job_class", ContractJob)
        # The dequeue's log line names the job by its id: its description is read with its start (a constant).
        kwargs.setdefault("log_job_description", False)
        super().__init__(*args, **kwargs)
        self.sweep_interval = sweep_interval
        self.courier = courier
        self.courier_interval = courier_interval
        self._stop_sweeping = threading.Event()
        self._beat_owed = False
        self._alive_until = 0.0  # time.monotonic() when the worker's key expires, as of the last beat sent
        self._start: Pipeline | None = None
        # Read in an interactive job's success transaction, for the loop's next turn (see handle_job_success).
        self._idle_sent = False
        self._suspended: bool | None = None
        # One beating thread for the worker's life, handed each job: a thread started per job cost its start
        # (0.3 ms here, between the dequeue and the job) and its join after.
        self._beats: SimpleQueue[tuple[Job, Execution, threading.Event] | None] = SimpleQueue()
        self._beater: threading.Thread | None = None
        self._read_and_start_script = self.connection.register_script(_READ_AND_START)
        self._started: Job | None = None  # the job whose start went with the read of its hash

    def validate_queues(self) -> None:
        """Any RQ queue will do: :class:`StartingQueue` only changes how the worker dequeues from them."""
        for queue in self.queues:
            if not isinstance(queue, Queue):
                raise TypeError(f"{queue} is not an RQ queue")

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
            if self._beater is not None:
                self._beats.put(None)
                threads.append(self._beater)
                self._beater = None
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
        A plain beat right after the dequeue waits for the job's start (:meth:`prepare_job_execution`); one
        less than a second after a full beat is not sent: the worker's key has its whole TTL still.
        """
        ttl = timeout or self.worker_ttl + 60
        clock = time.monotonic()
        if pipeline is not None:
            super().heartbeat(timeout, pipeline=pipeline)
            self._alive_until = max(self._alive_until, clock + ttl) if timeout is None else clock + ttl
            return
        if timeout is None:
            if self._beat_owed:
                self._beat_owed = False  # the job's start, a moment away, beats in its own transaction
                return
            if self._alive_until - clock >= ttl - 1:
                return  # a full beat went out less than a second ago (RQ sends two or three in a row)
        self._alive_until = clock + ttl
        with self.connection.pipeline() as own:
            super().heartbeat(timeout, pipeline=own)
            own.execute()

    def check_for_suspension(self, burst: bool) -> None:
        """RQ's check of ``rq suspend``, answered from the last job's success transaction when it read it."""
        suspended, self._suspended = self._suspended, None
        if suspended is False:
            return
        super().check_for_suspension(burst)

    def set_state(self, state: str, pipeline: Pipeline | None = None) -> None:
        """RQ's worker state; the idle state the dequeue sets is not sent again when the last job's end sent it."""
        idle_sent, self._idle_sent = self._idle_sent, False
        if idle_sent and pipeline is None and state == WorkerStatus.IDLE:
            self._state = state
            return
        super().set_state(state, pipeline=pipeline)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """Seconds until the running job counts as abandoned, unless beaten again."""
        return max(3, int(_MISSED_BEATS * self.job_monitoring_interval))

    # -- fewer round trips per job -------------------------------------------------------------------------
    # Between the dequeue and the job's first line RQ makes five round trips (the read of the job, a worker
    # beat, the execution record, the job's start, our attempt count), between its last line and its result
    # three more (a job beat, then a WATCH of its dependents and their read): each waits on Redis while the
    # request waits on the job. Here the first five are one script (StartingQueue, _read_and_start), and an
    # interactive job's result follows its end at once (nothing depends on one, and no callbacks run between).
    # After it RQ's loop sends three more before the next dequeue (a worker beat, the suspension check, the
    # idle state): for an interactive job they go in its success transaction (one worker, back-to-back 3 ms
    # jobs: 11 % more of them a second).

    def reorder_queues(self, reference_queue: Any) -> None:
        """RQ's hook right after a successful dequeue: the beat RQ sends next goes with the job's start."""
        self._beat_owed = True
        super().reorder_queues(reference_queue)

    def prepare_execution(self, job: Job) -> Execution:
        """Queue the execution record and the busy state on the pipeline the job's start then sends."""
        pipeline = self.connection.pipeline()
        execution = Execution.create(job, self.get_heartbeat_ttl(job), pipeline=pipeline, worker_name=self.name)
        self.executions[execution.id] = execution
        self.set_state(WorkerStatus.BUSY, pipeline=pipeline)
        self._start = pipeline
        return execution

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        """RQ's start of a job (beats, status ``started``) with the execution record and the attempt count,
        in one transaction; nothing more when :meth:`execute_job` started it with the read of its hash."""
        if self._started is job:
            self._started = None
            return
        pipeline, self._start = self._start or self.connection.pipeline(), None
        with pipeline:
            self._queue_start(job, pipeline, remove_from_intermediate_queue)
            pipeline.execute()

    def _queue_start(self, job: Job, pipeline: Pipeline, remove_from_intermediate_queue: bool) -> None:
        heartbeat_ttl = self.get_heartbeat_ttl(job)
        self.heartbeat(heartbeat_ttl, pipeline=pipeline)
        job.heartbeat(now(), heartbeat_ttl, pipeline=pipeline)
        job.prepare_for_execution(self.name, pipeline=pipeline)
        pipeline.persist(job.key)
        if remove_from_intermediate_queue:
            pipeline.lrem(Queue(job.origin, connection=self.connection).intermediate_queue_key, 1, job.id)
        # Counted in the job's own hash, which outlives its worker: a re-run after a dead worker reads 2.
        pipeline.hincrby(job.key, ATTEMPT_FIELD, 1)

    def _read_and_start(self, job: Job) -> bool:
        """Start a job :class:`StartingQueue` dequeued, reading its hash in the same round trip; ``False`` (and
        nothing written) when it no longer exists."""
        pipeline, self._start = self._start or self.connection.pipeline(), None
        with pipeline:
            # As RQ's perform_job decides: one queue means it dequeued through the intermediate list.
            self._queue_start(job, pipeline, len(self.queues) == 1)
            commands = recorded(pipeline.command_stack)
        raw = self._read_and_start_script(keys=[job.key], args=commands)
        if not raw:
            return False
        job.restore(dict(zip(raw[::2], raw[1::2], strict=True)))
        self._started = job
        return True

    def handle_execution_ended(self, job: Job, queue: Any, heartbeat_ttl: int) -> None:
        """Stamp the job's end; RQ's job beat here only covers its callbacks, which these jobs have none of."""
        if job._success_callback_name or job._failure_callback_name:
            super().handle_execution_ended(job, queue, heartbeat_ttl)
        else:
            job.ended_at = now()

    def handle_job_success(self, job: Job, queue: Any, started_job_registry: Any, execution: Execution) -> None:
        """RQ's success transaction; for an interactive job without its WATCH and read of dependents."""
        if job.origin != INTERACTIVE or job.repeats_left:
            super().handle_job_success(job, queue, started_job_registry, execution)
            return
        assert job.started_at is not None and job.ended_at is not None  # perform_job stamped both
        taken = job.ended_at - job.started_at
        with self.connection.pipeline() as pipeline:  # as RQ's, less the dependents, which never exist here
            tallies = queue_tallies(pipeline)  # the job's metrics become visible with its result
            self.increment_successful_job_count(pipeline=pipeline)
            self.increment_total_working_time(taken, pipeline)
            result_ttl = job.get_result_ttl(self.default_result_ttl)
            if result_ttl != 0:
                job._handle_success(
                    result_ttl,
                    pipeline=pipeline,
                    worker_name=self.name,
                    execution_id=execution.id,
                    execution_started_at=execution.created_at,
                    execution_ended_at=job.ended_at,
                )
            job.cleanup(result_ttl, pipeline=pipeline, remove_from_queue=False)
            job._status = JobStatus.FINISHED
            self.cleanup_execution(job, pipeline=pipeline, execution=execution)
            # What RQ's loop sends next, a round trip each before the next dequeue: the worker's beat, the
            # suspension check and the idle state. They ride here; the loop's own are then skipped (the beat by
            # heartbeat's one-a-second rule, the others by check_for_suspension and set_state).
            self.heartbeat(pipeline=pipeline)
            self.set_state(WorkerStatus.IDLE, pipeline=pipeline)
            pipeline.exists(WORKERS_SUSPENDED)
            try:
                replies = pipeline.execute()
            except BaseException:
                TALLY.restore(tallies)
                raise
            self._idle_sent, self._suspended = True, bool(replies[-1])
        release_slot(job)
        self.log.info("Successfully completed job %s in %ss on worker %s", job.id, taken, self.name)

    def execute_job(self, job: Job, queue: Any) -> None:
        """Run the job in this thread while the beating thread refreshes its heartbeat."""
        execution = self.prepare_execution(job)
        if job in _UNREAD:
            _UNREAD.discard(job)
            if not self._read_and_start(job):  # deleted since it was queued: RQ's dequeue skips it too
                del self.executions[execution.id]
                self.log.info("job %s no longer exists; skipped", job.id)
                return
        if self._beater is None or not self._beater.is_alive():
            self._beater = threading.Thread(target=self._beat_loop, daemon=True, name="rq-heartbeat")
            self._beater.start()
        done = threading.Event()  # the job's own: a beat of an ended job never runs on into the next one
        self._beats.put((job, execution, done))
        try:
            self.perform_job(job, queue, execution)
        finally:
            done.set()
            flush(self.connection)  # what RQ's own success path (batch jobs) left pending
        # No set_state(IDLE) here, unlike RQ's SimpleWorker: the dequeue that follows sets it (a round trip less).

    def _beat_loop(self) -> None:
        """Beat each job handed over until it is done; ``None`` ends the thread."""
        while (handed := self._beats.get()) is not None:
            self._beat(*handed)

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

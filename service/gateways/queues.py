"""What the queues look like right now: depth, age of the oldest waiting job, live workers; and the workers' tallies.

Read by ``/readyz`` and ``/metrics`` in two pipelined round trips over a connection with short timeouts, so a
stalled Redis costs them a bounded wait. A worker counts as live while its RQ record exists (deleted when it stops)
and its ``last_heartbeat`` is younger than ``worker_ttl_s`` (idle workers beat every ``worker_ttl_s - 15`` s,
busy ones every job beat). RQ keeps a dead worker's record ``worker_ttl + 60`` s: the age is what tells sooner.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from redis import Redis
from rq import Queue
from rq.job import Job
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from engine.jobs import QUEUES
from engine.telemetry import TALLY_KEY


@dataclass(frozen=True)
class QueueState:
    """One queue, now."""

    name: str
    depth: int
    """Jobs waiting (not started)."""
    oldest_age_s: float
    """Seconds the oldest waiting job has waited (0 when none waits)."""
    live_workers: int
    """Workers registered on the queue whose key has not expired."""


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _age(enqueued_at: str | None, now: float) -> float:
    if not enqueued_at:
        return 0.0
    try:
        return max(0.0, now - datetime.fromisoformat(enqueued_at).timestamp())
    except ValueError:
        return 0.0


def queue_states(connection: Redis, *, worker_ttl_s: float) -> list[QueueState]:
    """Return the state of every queue in :data:`engine.jobs.QUEUES`.

    Args:
        connection: A connection with short timeouts.
        worker_ttl_s: A worker whose last heartbeat is older than this is not live.

    Raises:
        redis.exceptions.RedisError: Redis cannot answer (within the connection's timeouts).
    """
    with connection.pipeline(transaction=False) as first:
        for name in QUEUES:
            key = Queue.redis_queue_namespace_prefix + name
            first.llen(key)
            first.lindex(key, 0)
            first.smembers(WORKERS_BY_QUEUE_KEY % name)
        answers = first.execute()
    per_queue = [answers[i : i + 3] for i in range(0, len(answers), 3)]
    with connection.pipeline(transaction=False) as second:
        for _, oldest, workers in per_queue:
            second.hget(Job.redis_job_namespace_prefix + (_text(oldest) or ""), "enqueued_at")
            for key in workers:
                second.hget(_text(key) or "", "last_heartbeat")
        details = iter(second.execute())
    now = time.time()
    states = []
    for name, (depth, oldest, workers) in zip(QUEUES, per_queue, strict=True):
        enqueued_at = next(details)
        beats = [_text(next(details)) for _ in workers]
        states.append(
            QueueState(
                name=name,
                depth=int(depth),
                oldest_age_s=_age(_text(enqueued_at), now) if oldest is not None else 0.0,
                live_workers=sum(1 for beat in beats if beat and _age(beat, now) < worker_ttl_s),
            )
        )
    return states


def worker_tallies(connection: Redis) -> dict[str, float]:
    """Return the workers' summed tallies (the hash :data:`engine.telemetry.TALLY_KEY`)."""
    raw = connection.hgetall(TALLY_KEY)
    return {_text(k) or "": float(v) for k, v in raw.items()}

"""What the queues look like right now: depth, age of the oldest waiting job, live workers; and the workers' tallies.

Read by ``/readyz`` and ``/metrics`` in two pipelined round trips over a connection with short timeouts, so a
stalled Redis costs them a bounded wait. A worker counts as live while RQ's worker key exists: RQ refreshes it at
every heartbeat (idle workers about every ``worker_ttl`` = 420 s, busy ones at every job beat), deletes it when
the worker stops, and lets it expire when the worker dies.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from redis import Redis
from rq import Queue, Worker
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


def queue_states(connection: Redis) -> list[QueueState]:
    """Return the state of every queue in :data:`engine.jobs.QUEUES`.

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
            second.exists(*[_text(w) or "" for w in workers] or [Worker.redis_worker_namespace_prefix])
        details = second.execute()
    now = time.time()
    states = []
    for i, (name, (depth, oldest, workers)) in enumerate(zip(QUEUES, per_queue, strict=True)):
        enqueued_at, live = details[2 * i], details[2 * i + 1]
        states.append(
            QueueState(
                name=name,
                depth=int(depth),
                oldest_age_s=_age(_text(enqueued_at), now) if oldest is not None else 0.0,
                live_workers=int(live) if workers else 0,
            )
        )
    return states


def worker_tallies(connection: Redis) -> dict[str, float]:
    """Return the workers' summed tallies (the hash :data:`engine.telemetry.TALLY_KEY`)."""
    raw = connection.hgetall(TALLY_KEY)
    return {_text(k) or "": float(v) for k, v in raw.items()}

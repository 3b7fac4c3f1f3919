"""``python -m worker``: an RQ SimpleWorker (beating, sweeping) on ``interactive`` before ``batch``."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import socket
import time

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue

from engine.jobs import QUEUES, JobSerializer
from engine.logs import configure_logging
from engine.runtime.limits import cap_address_space
from engine.settings import Settings
from engine.telemetry import set_sink
from worker.failures import record_failure
from worker.heartbeat import HeartbeatWorker
from worker.observe import TALLY
from worker.webhooks import Courier

log = logging.getLogger("worker")


def warm_up() -> None:
    """Import the job functions and every method that needs no torch now, before the first job.

    Imported on first use instead, the first Kernel SHAP job of a worker also paid for SciPy's statistics
    (2 s here) and the first audit for pandas. The gradient methods stay lazy: torch costs memory in every
    worker, also in those that never see a differentiable model.
    """
    from engine.methods import METHODS

    importlib.import_module("worker.jobs")
    for method in METHODS.values():
        if not method.gradients:
            for target in {method.target, *method.kind_targets.values()}:
                try:
                    importlib.import_module(target.split(":")[0])
                except ImportError as exc:  # its jobs fail with their own error; the others run
                    log.warning("method %s cannot be imported: %s", method.name, exc)


def main(argv: list[str] | None = None) -> None:
    """Run one worker until stopped (or until the queues are empty with ``--burst``)."""
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    parser.add_argument("--name", default=None, help="worker name (default host:pid)")
    parser.add_argument(
        "--job-monitoring-interval",
        type=int,
        default=30,
        help="seconds between heartbeats of a running job; it counts as abandoned after three missed (default 30)",
    )
    parser.add_argument(
        "--sweep-interval",
        type=float,
        default=5.0,
        help="seconds between sweeps that retry (or fail) the jobs of dead workers; 0 turns it off (default 5)",
    )
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    configure_logging(settings.log_format)
    set_sink(TALLY)  # session-cache lookups and model loads, written to Redis after each job
    if not settings.redis_url:
        raise SystemExit("ONNXPLAIN_REDIS_URL is not set")
    cap_address_space(settings.process_memory_bytes)
    warm_up()
    # RQ raises the read timeout above its dequeue timeout itself; the connect timeout stays short.
    connection = Redis.from_url(settings.redis_url, **settings.redis_options())
    name = args.name or f"{socket.gethostname()}:{os.getpid()}"
    backoff = 1.0
    while True:
        queues = [Queue(q, connection=connection, serializer=JobSerializer) for q in QUEUES]
        worker = HeartbeatWorker(
            queues,
            connection=connection,
            serializer=JobSerializer,
            exception_handlers=[record_failure],
            name=name,
            # Abandoned jobs of dead workers are swept every minute, not every ten.
            maintenance_interval=60,
            job_monitoring_interval=args.job_monitoring_interval,
            # Idle workers beat every worker_ttl - 15 s and busy ones every job_monitoring_interval: /readyz
            # and onnxplain_workers_live count a worker whose last beat is younger than worker_ttl_s.
            worker_ttl=max(settings.worker_ttl_s, args.job_monitoring_interval + 15),
            sweep_interval=args.sweep_interval,
            # Every worker delivers webhooks (the outbox's claims keep two from sending one at once).
            courier=Courier(connection, settings) if settings.webhook_secret else None,
        )
        try:
            worked = worker.work(burst=args.burst, with_scheduler=True, logging_level="INFO")
        except (RedisError, OSError) as exc:  # RQ's teardown itself can fail when Redis is gone
            log.warning("worker %s lost Redis (%s)", name, exc)
            worked = False
        # RQ notes a SIGTERM/SIGINT in _shutdown_requested_date whether idle or busy (_stop_requested only when busy).
        if args.burst or getattr(worker, "_shutdown_requested_date", None) is not None:
            return
        # RQ's loop quits on any error outside its dequeue (a result it cannot store, a beat it cannot send):
        # wait for Redis with backoff and start again under the same name, instead of dying with it.
        backoff = 1.0 if worked else min(backoff * 2, 30.0)
        log.warning("worker %s stopped unexpectedly; restarting when Redis answers (backoff %.0f s)", name, backoff)
        _wait_for_redis(connection, backoff)
        try:
            connection.delete(worker.key)  # the previous incarnation's record, so the name can register again
        except (RedisError, OSError):
            continue


def _wait_for_redis(connection: Redis, backoff: float) -> None:
    """Sleep ``backoff`` seconds, then until Redis answers a PING (doubling the pause up to 30 s)."""
    while True:
        time.sleep(backoff)
        try:
            connection.ping()
            return
        except (RedisError, OSError):
            backoff = min(backoff * 2, 30.0)


if __name__ == "__main__":
    main()

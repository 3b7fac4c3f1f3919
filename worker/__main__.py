"""``python -m worker``: an RQ SimpleWorker (beating, sweeping) on ``interactive`` before ``batch``."""

from __future__ import annotations

import argparse
import logging
import os
import socket

from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from engine.jobs import QUEUES
from engine.runtime.limits import cap_address_space
from engine.settings import Settings
from worker.failures import record_failure
from worker.heartbeat import HeartbeatWorker


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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # shap logs every intermediate array at INFO.
    logging.getLogger("shap").setLevel(logging.WARNING)
    settings = Settings.from_env()
    if not settings.redis_url:
        raise SystemExit("ONNXPLAIN_REDIS_URL is not set")
    cap_address_space(settings.process_memory_bytes)
    connection = Redis.from_url(settings.redis_url)
    queues = [Queue(name, connection=connection, serializer=JSONSerializer) for name in QUEUES]
    name = args.name or f"{socket.gethostname()}:{os.getpid()}"
    worker = HeartbeatWorker(
        queues,
        connection=connection,
        serializer=JSONSerializer,
        exception_handlers=[record_failure],
        name=name,
        # Abandoned jobs of dead workers are swept every minute, not every ten.
        maintenance_interval=60,
        job_monitoring_interval=args.job_monitoring_interval,
        sweep_interval=args.sweep_interval,
    )
    worker.work(burst=args.burst, with_scheduler=True, logging_level="INFO")


if __name__ == "__main__":
    main()

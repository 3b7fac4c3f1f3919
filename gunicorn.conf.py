"""gunicorn settings for the API (`gunicorn 'service.app:create_app()'`)."""

import os
import shutil
import tempfile

bind = os.environ.get("ONNXPLAIN_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("ONNXPLAIN_API_WORKERS", "2"))
# More threads than ONNXPLAIN_MAX_WAITING_REQUESTS (4): requests waiting for their job never take them all.
threads = int(os.environ.get("ONNXPLAIN_API_THREADS", "8"))
# Sessions are created lazily in each worker, never in the master: no preload.
preload_app = False
timeout = 120
graceful_timeout = 30
# The app logs one JSON line per request (onnxplain.request) with its request id: no second access log.
accesslog = None
errorlog = "-"

# prometheus-client's multiprocess mode: every API worker writes its samples to files in this directory and
# /metrics sums them, whichever worker answers. It must be set before a worker imports prometheus_client (this
# file runs in the master, before any fork) and must be emptied at start, else counters of an earlier run
# would add up. An operator may point it elsewhere (a tmpfs); the default is a fresh private directory.
_OWN_DIR = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _OWN_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="onnxplain-prometheus-")
_METRICS_DIR = os.environ["PROMETHEUS_MULTIPROC_DIR"]


def on_starting(server: object) -> None:
    """Empty the metrics directory once, when the master starts (not on a reload)."""
    shutil.rmtree(_METRICS_DIR, ignore_errors=True)
    os.makedirs(_METRICS_DIR, exist_ok=True)


def on_exit(server: object) -> None:
    """Remove the metrics directory this file made (an operator's own directory stays)."""
    if _OWN_DIR:
        shutil.rmtree(_METRICS_DIR, ignore_errors=True)


def child_exit(server: object, worker: object) -> None:
    """Drop a dead worker's live-gauge files; its counters and histograms stay, as Prometheus expects."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined]


def post_worker_init(worker: object) -> None:
    """Cap each API worker's address space (ONNXPLAIN_PROCESS_MEMORY_BYTES) before it serves anything."""
    from engine.runtime.limits import cap_address_space
    from engine.settings import Settings

    cap_address_space(Settings.from_env().process_memory_bytes)

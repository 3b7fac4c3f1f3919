"""gunicorn settings for the API (`gunicorn 'service.app:create_app()'`)."""

import os

bind = os.environ.get("ONNXPLAIN_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("ONNXPLAIN_API_WORKERS", "2"))
# More threads than ONNXPLAIN_MAX_WAITING_REQUESTS (4): requests waiting for their job never take them all.
threads = int(os.environ.get("ONNXPLAIN_API_THREADS", "8"))
# Sessions are created lazily in each worker, never in the master: no preload.
preload_app = False
timeout = 120
graceful_timeout = 30
accesslog = "-"
errorlog = "-"


def post_worker_init(worker: object) -> None:
    """Cap each API worker's address space (ONNXPLAIN_PROCESS_MEMORY_BYTES) before it serves anything."""
    from engine.runtime.limits import cap_address_space
    from engine.settings import Settings

    cap_address_space(Settings.from_env().process_memory_bytes)

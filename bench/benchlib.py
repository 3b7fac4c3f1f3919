"""What the bench scripts share: the ``--quick``/``--device`` switches and an authenticated private service.

The scripts run as ``python bench/<name>.py`` (this folder is first on ``sys.path``), so they import this module
as ``benchlib``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the repository's packages, wherever the command starts
    sys.path.insert(0, str(ROOT))

log = logging.getLogger("bench")


def arguments(
    description: str | None, parse: Callable[[argparse.ArgumentParser], None] | None = None, **flags: str
) -> argparse.Namespace:
    """Parse the switches every bench script takes, and the script's own: ``flags`` (name: help) are on/off
    switches, ``parse`` adds any others to the parser.

    ``--device cuda`` sets ``ONNXPLAIN_PROVIDERS=cuda`` for the engine (and for the workers the script starts);
    where no CUDA provider runs, the engine falls back to the CPU with one log line.
    """
    parser = argparse.ArgumentParser(description=(description or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rows and repeats (the smoke test's mode)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="execution provider (default cpu)")
    for name, text in flags.items():
        parser.add_argument(f"--{name}", action="store_true", help=text)
    if parse is not None:
        parse(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    logging.getLogger("engine.runtime.providers").setLevel(logging.INFO)  # the fallback's one line
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per readiness poll, once the app logs INFO
    os.environ["ONNXPLAIN_PROVIDERS"] = args.device
    print(f"device {args.device}: onnxruntime providers {providers()}", flush=True)
    return args


def workers_cpu(master: int) -> float | None:
    """User and system CPU seconds that the child processes of ``master`` (gunicorn's workers) have used so far.

    Read from Linux's ``/proc``; ``None`` where there is none.
    """
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total, found = 0.0, False
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile, or not ours to read
        if int(fields[1]) == master:  # ppid; utime and stime are fields 14 and 15 of stat(5)
            total += (int(fields[11]) + int(fields[12])) / tick
            found = True
    return total if found else None


def providers() -> list[str]:
    """The onnxruntime providers of bare baseline sessions: the engine's, from ``ONNXPLAIN_PROVIDERS``."""
    from engine.runtime.providers import resolve_providers

    return resolve_providers(os.environ.get("ONNXPLAIN_PROVIDERS", "cpu"))


def keyed(settings: Any, directory: Path) -> tuple[Any, str]:
    """``settings`` with auth on over a keys file in ``directory`` and no practical rate limit, and a full key."""
    from engine.keys import SCOPES, add_key

    settings = settings.replace(
        auth="on", keys_file=directory / "keys.json", keys_secret="bench-keys-secret", rate_limit="10000000/minute"
    )
    key, _ = add_key(settings, "bench", list(SCOPES), name="bench")
    return settings, key


def settings_env(settings: Any) -> dict[str, str]:
    """The ``ONNXPLAIN_*`` variables a worker or gunicorn process needs to share ``settings``' stores and keys."""
    return {
        "ONNXPLAIN_REDIS_URL": settings.redis_url,
        "ONNXPLAIN_MODEL_DIR": str(settings.model_dir),
        "ONNXPLAIN_AUDIT_DIR": str(settings.audit_dir),
        "ONNXPLAIN_AUTH": settings.auth,
        "ONNXPLAIN_KEYS_FILE": str(settings.keys_file),
        "ONNXPLAIN_KEYS_SECRET": settings.keys_secret,
        "ONNXPLAIN_RATE_LIMIT": settings.rate_limit,
        "ONNXPLAIN_MAX_WAIT_S": str(settings.max_wait_s),
        "ONNXPLAIN_PROVIDERS": settings.providers,
        "PYTHONPATH": str(ROOT),
    }


class Service:
    """A private Redis and temporary stores with auth on; workers and gunicorn started on request."""

    def __init__(self, **overrides: Any) -> None:
        from client.launcher import start_redis
        from engine.settings import Settings

        self.root = Path(tempfile.mkdtemp(prefix="onnxplain-bench-"))
        self.redis = start_redis()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.masters: dict[str, int] = {}  # gunicorn's master process by base URL
        base = Settings(
            redis_url=self.redis.url,
            model_dir=self.root / "models",
            audit_dir=self.root / "audits",
            providers=os.environ.get("ONNXPLAIN_PROVIDERS", "auto"),
        )
        self.settings, self.key = keyed(base.replace(**overrides), self.root)
        self.headers = {"Authorization": f"Bearer {self.key}"}
        self.env = {**os.environ, **settings_env(self.settings)}

    def client_of(self, settings: Any = None) -> Any:
        """An authorized Flask test client of the API (in this process)."""
        from service.app import create_app

        client = create_app(settings or self.settings).test_client()
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {self.key}"
        return client

    def start_workers(self, count: int) -> None:
        """Start ``count`` ``python -m worker`` processes."""
        for i in range(count):
            cmd = [sys.executable, "-m", "worker", "--name", f"bench-{os.getpid()}-{len(self.procs)}-{i}"]
            self.procs.append(
                subprocess.Popen(cmd, env=self.env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )

    def start_gunicorn(self, app: str = "service.app:create_app()", **env: str) -> str:
        """Start ``app`` under gunicorn with the repository's ``gunicorn.conf.py``; return its base URL."""
        import httpx

        from client.launcher import free_port

        port = free_port()
        cmd = [sys.executable, "-m", "gunicorn", app, "--config", str(ROOT / "gunicorn.conf.py")]
        # No --access-logfile: gunicorn.conf.py has none (the app's own line is the access log), and naming one,
        # even /dev/null, turns gunicorn's formatting of a second line per request on.
        cmd += ["--bind", f"127.0.0.1:{port}", "--error-logfile", "/dev/null"]
        # The API's request log lines (JSON, one a request) still get written, as in production, but to a file:
        # in the bench's output they were tens of thousands of lines around its tables.
        log = self.root / f"gunicorn-{port}.log"
        with log.open("wb") as sink:
            proc = subprocess.Popen(cmd, env={**self.env, **env}, cwd=ROOT, stdout=sink, stderr=sink)
        self.procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        self.masters[url] = proc.pid
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{url}/livez", timeout=1.0)
                return url
            except httpx.HTTPError:
                if proc.poll() is not None:
                    tail = log.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"gunicorn {app} exited ({proc.returncode}):\n{tail}") from None
                time.sleep(0.2)
        raise RuntimeError(f"gunicorn {app} did not answer within 60 s")

    def stop_procs(self) -> None:
        """Stop the workers and gunicorns started so far."""
        from client.launcher import stop_processes

        stop_processes(self.procs)
        self.procs = []

    def close(self) -> None:
        """Stop everything and remove the stores."""
        self.stop_procs()
        self.redis.stop()
        shutil.rmtree(self.root, ignore_errors=True)

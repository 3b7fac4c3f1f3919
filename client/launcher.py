"""Start the service's processes: an embedded Redis, the API, workers.

The CLI's ``up``/``serve``/``worker`` commands use these; they start
processes (``redis-server``, gunicorn on ``service.app:create_app()``,
``python -m worker``) instead of importing the service, so ``client`` stays
independent of the server packages.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_binary() -> str:
    """Find a real ``redis-server`` binary.

    Raises:
        RuntimeError: None is installed (``apt-get install redis-server``).
    """
    found = shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/local/bin/redis-server") if os.path.exists(p)), None
    )
    if found is None:
        raise RuntimeError(
            "redis-server is not installed; run `apt-get install -y redis-server` or set ONNXPLAIN_REDIS_URL"
        )
    return found


@dataclass
class EmbeddedRedis:
    """A private ``redis-server`` process on a free local port."""

    process: subprocess.Popen[bytes]
    port: int
    directory: Path
    password: str | None = None

    @property
    def url(self) -> str:
        """The ``redis://`` URL of the server, with its password when it has one (give it to processes, never
        print it: :attr:`address` is for people)."""
        secret = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{secret}127.0.0.1:{self.port}/0"

    @property
    def address(self) -> str:
        """Where it listens, for messages: no password."""
        return f"127.0.0.1:{self.port}" + (" (password-protected)" if self.password else "")

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


def start_redis(
    port: int | None = None,
    *,
    persist: bool = False,
    extra_args: tuple[str, ...] = (),
    directory: Path | None = None,
    password: str | None = None,
) -> EmbeddedRedis:
    """Start a real Redis server on 127.0.0.1 and wait until it answers.

    Args:
        port: Port to use; a free one when omitted.
        persist: Keep an append-only file (in its temporary directory).
        extra_args: More ``redis-server`` options (tests: ``--enable-debug-command yes``).
        directory: Data directory to reuse (a restart reads its append-only file); a new one when omitted.
        password: Require it of every client (``requirepass``). It goes in a config file readable by this user
            only, never on the command line, where ``ps`` would show it to everyone.

    Raises:
        RuntimeError: The server did not start within 10 s.
    """
    port = port or free_port()
    directory = directory or Path(tempfile.mkdtemp(prefix="onnxplain-redis-"))
    args = [redis_binary()]
    if password:
        config = directory / "redis.conf"
        config.touch(mode=0o600)
        config.chmod(0o600)
        config.write_text(f"requirepass {password}\n")
        args.append(str(config))  # the config file comes first; options after it
    args += ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(directory)]
    args += ["--appendonly", "yes" if persist else "no", "--daemonize", "no", "--loglevel", "warning", *extra_args]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                # NOAUTH: up, and refusing clients without the password, as it should.
                if sock.recv(16).startswith((b"+PONG", b"-NOAUTH")):
                    return EmbeddedRedis(process, port, directory, password)
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"redis-server did not start on port {port}")


def start_api(
    env: dict[str, str], *, host: str = "127.0.0.1", port: int = 8000, workers: int = 2
) -> subprocess.Popen[bytes]:
    """Start the API under gunicorn with the given environment."""
    args = [sys.executable, "-m", "gunicorn", "service.app:create_app()", "--bind", f"{host}:{port}"]
    config = Path(__file__).resolve().parents[1] / "gunicorn.conf.py"
    if config.exists():  # the checkout's settings (memory cap per worker), wherever the command runs
        args += ["--config", str(config)]
    # More threads than the requests that may wait for their job (ONNXPLAIN_MAX_WAITING_REQUESTS, 4 by default),
    # so predict and health always find one.
    threads = env.get("ONNXPLAIN_API_THREADS", "8")
    args += ["--workers", str(workers), "--threads", threads, "--timeout", "120"]
    return subprocess.Popen(args, env=env)


def stop_processes(procs: list[subprocess.Popen[bytes]], *, grace_s: float = 15.0) -> None:
    """Ask every process to stop (SIGTERM), then kill those still running after ``grace_s``."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_keys(
    args: list[str], env: dict[str, str] | None = None, *, capture: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run the operator's key tool (``python -m engine.keys``) on the keys file its environment names."""
    return subprocess.run(
        [sys.executable, "-m", "engine.keys", *args], env=env, text=True, capture_output=capture, check=False
    )


def start_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start one worker process (``python -m worker``) with the given environment."""
    return subprocess.Popen([sys.executable, "-m", "worker"], env=env)

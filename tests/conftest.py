"""The real object graph for tests: Redis → settings → store → app → client."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings
from redis import Redis

from client.launcher import start_redis, stop_processes
from engine.keys import SCOPES, add_key
from engine.settings import Settings
from tests import builders
from tests.contract import ValidatingClient

SDK = Path(__file__).resolve().parents[1] / "sdk"
# Child processes (``python -m client.cli``) import the SDK from sdk/, as the editable install maps it
# (pytest's ``pythonpath`` setting does the same for this process).
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(SDK), os.environ.get("PYTHONPATH")) if p)

# `make test` (and so CI) draws the same hypothesis and schemathesis examples on every machine and run: a fuzz
# failure reproduces, and a submission does not pass or fail by the draw. ONNXPLAIN_FUZZ=random explores
# new examples each run (how the surrogate route's unbounded `version` was found).
hypothesis_settings.register_profile("repeatable", derandomize=True)
hypothesis_settings.register_profile("explore", derandomize=False)
hypothesis_settings.load_profile("explore" if os.environ.get("ONNXPLAIN_FUZZ") == "random" else "repeatable")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis: ONNXPLAIN_REDIS_URL when set, else a private redis-server."""
    url = os.environ.get("ONNXPLAIN_REDIS_URL")
    if url:
        yield url
        return
    server = start_redis()
    yield server.url
    server.stop()


@pytest.fixture
def redis_conn(redis_url: str) -> Iterator[Redis]:
    """A connection to an emptied database, emptied again afterwards."""
    conn = Redis.from_url(redis_url)
    conn.flushdb()
    yield conn
    conn.flushdb()
    conn.close()


@pytest.fixture(autouse=True)
def _clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's ONNXPLAIN_* settings except the Redis URL."""
    for key in list(os.environ):
        if key.startswith("ONNXPLAIN_") and key != "ONNXPLAIN_REDIS_URL":
            monkeypatch.delenv(key)


KEYS_SECRET = "test-keys-secret"
WEBHOOK_SECRET = "test-webhook-secret"


def keyed(settings: Settings, directory: Path) -> Settings:
    """``settings`` with auth on over a keys file of its own in ``directory``.

    The rate limit is raised far above what a test sends (polling loops included); test_limits.py sets its own.
    """
    return settings.replace(
        auth="on", keys_file=directory / "keys.json", keys_secret=KEYS_SECRET, rate_limit="100000/minute"
    )


def issue_key(settings: Settings, tenant: str = "acme", scopes: tuple[str, ...] = SCOPES) -> str:
    """Add a key to the settings' keys file (as ``onnxplain keys add`` does) and return it."""
    key, _ = add_key(settings, tenant, list(scopes), name="test")
    return key


def server_keys(directory: Path) -> tuple[dict[str, str], dict[str, str]]:
    """For a server started as a process: the ``ONNXPLAIN_*`` variables of a keys file with one full key
    (rate limit raised as in :func:`keyed`), and the headers that authenticate with that key."""
    settings = keyed(Settings(), directory)
    key = issue_key(settings)
    env = {
        "ONNXPLAIN_AUTH": "on",
        "ONNXPLAIN_KEYS_FILE": str(settings.keys_file),
        "ONNXPLAIN_KEYS_SECRET": KEYS_SECRET,
        "ONNXPLAIN_RATE_LIMIT": settings.rate_limit,
    }
    return env, {"Authorization": f"Bearer {key}"}


def wait_until_live(base: str, proc: Any, *, timeout: float = 60.0) -> None:
    """Poll ``<base>/livez`` until it answers 200; fail when the server process ``proc`` exits or time runs out."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{base}/livez", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline and proc.poll() is None, "the server did not start"
        time.sleep(0.2)


def authorize(client: Any, key: str) -> Any:
    """Make every request of a Flask test client carry ``Authorization: Bearer <key>``."""
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return client


@pytest.fixture
def settings(tmp_path: Path, redis_url: str) -> Settings:
    """Settings over a fresh model store, the test Redis and a keys file (auth on)."""
    base = Settings(
        redis_url=redis_url, model_dir=tmp_path / "models", max_model_bytes=2 * 1024 * 1024, default_wait_s=20.0
    )
    return keyed(base, tmp_path)


@pytest.fixture
def api_key(settings: Settings) -> str:
    """A key of tenant ``acme`` with every scope."""
    return issue_key(settings)


@pytest.fixture
def app(settings: Settings, redis_conn: Redis) -> Any:
    from service.app import create_app

    application = create_app(settings)
    application.testing = True
    application.test_client_class = ValidatingClient
    return application


@pytest.fixture
def client(app: Any, api_key: str) -> ValidatingClient:
    """A Flask test client, authorized as tenant ``acme``, that validates every response against openapi.yaml."""
    found: ValidatingClient = authorize(app.test_client(), api_key)
    return found


@pytest.fixture(scope="session")
def binary_model() -> builders.BuiltModel:
    return builders.binary_classifier()


@pytest.fixture(scope="session")
def multiclass_model() -> builders.BuiltModel:
    return builders.multiclass_classifier()


@pytest.fixture(scope="session")
def regression_model() -> builders.BuiltModel:
    return builders.regressor()


def upload(
    client: ValidatingClient,
    built: builders.BuiltModel,
    *,
    background: bool = True,
    visibility: str | None = None,
    **card: Any,
) -> Any:
    """POST a built model (with background rows; ``visibility`` when given) to /v1/models."""
    import io

    data: dict[str, Any] = {"model": (io.BytesIO(built.onnx_bytes), "model.onnx"), "card": built.card_json(**card)}
    if background:
        data["background"] = (io.BytesIO(built.background_csv()), "background.csv")
    if visibility is not None:
        data["visibility"] = visibility
    return client.post("/v1/models", data=data, content_type="multipart/form-data")


def upload_http(base: str, built: builders.BuiltModel, headers: dict[str, str]) -> None:
    """Register a built model (with its background) on the live server at ``base``; fail unless 201."""
    import io

    import httpx

    files = {
        "model": ("m.onnx", io.BytesIO(built.onnx_bytes)),
        "background": ("b.csv", io.BytesIO(built.background_csv())),
    }
    response = httpx.post(
        f"{base}/v1/models", files=files, data={"card": built.card_json()}, timeout=60, headers=headers
    )
    assert response.status_code == 201, response.text


def with_db(url: str, db: int) -> str:
    """The same Redis server, another database number."""
    base, _, last = url.rpartition("/")
    return f"{base}/{db}" if last.isdigit() and base.startswith("redis") and "//" in base else f"{url.rstrip('/')}/{db}"


@pytest.fixture(scope="session")
def worker_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory of the :func:`worker_env` workers' logs (``worker-<i>.log``, their stdout and stderr)."""
    return tmp_path_factory.mktemp("worker-logs")


@pytest.fixture(scope="session")
def worker_env(redis_url: str, worker_logs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Two real worker processes (``python -m worker``) over a session store and Redis DB 1."""
    import subprocess
    import sys

    url = with_db(redis_url, 1)
    Redis.from_url(url).flushdb()
    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "ONNXPLAIN_REDIS_URL": url,
        "ONNXPLAIN_MODEL_DIR": str(tmp_path_factory.mktemp("store")),
        "ONNXPLAIN_AUDIT_DIR": str(tmp_path_factory.mktemp("audits")),
        "PYTHONPATH": str(root),
        # The workers deliver webhooks: signed with the test secret, to loopback receivers, retried quickly.
        "ONNXPLAIN_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "ONNXPLAIN_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
        "ONNXPLAIN_WEBHOOK_BACKOFF_S": "0.2",
    }
    logs = worker_logs
    # Logs go to files: an unread pipe would fill up and block the workers.
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "worker", "--name", f"test-worker-{i}"],
            env=env,
            cwd=root,
            stdout=(logs / f"worker-{i}.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    yield env
    stop_processes(procs)
    Redis.from_url(url).flushdb()


@pytest.fixture
def live_settings(worker_env: dict[str, str], tmp_path: Path) -> Settings:
    """Settings shared with the worker processes (the keys file is the API's alone)."""
    base = Settings(
        redis_url=worker_env["ONNXPLAIN_REDIS_URL"],
        model_dir=Path(worker_env["ONNXPLAIN_MODEL_DIR"]),
        audit_dir=Path(worker_env["ONNXPLAIN_AUDIT_DIR"]),
        default_wait_s=30.0,
        webhook_secret=WEBHOOK_SECRET,  # as the workers sign with; loopback receivers stay refused here
    )
    return keyed(base, tmp_path)


@pytest.fixture
def live_key(live_settings: Settings) -> str:
    """A key of tenant ``acme`` with every scope, for the live app."""
    return issue_key(live_settings)


@pytest.fixture
def live_client(live_settings: Settings, live_key: str) -> ValidatingClient:
    """A validating test client, authorized as ``acme``, of an app whose jobs real workers run."""
    from service.app import create_app

    application = create_app(live_settings)
    application.testing = True
    application.test_client_class = ValidatingClient
    found: ValidatingClient = authorize(application.test_client(), live_key)
    return found


@pytest.fixture
def live_url(live_client: ValidatingClient, live_key: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real HTTP server (werkzeug, threaded) over the app whose jobs real workers run.

    ``ONNXPLAIN_API_KEY`` holds ``live_key``, so the SDK and CLI under test authenticate as they would for a user.
    """
    monkeypatch.setenv("ONNXPLAIN_API_KEY", live_key)
    import threading

    from werkzeug.serving import make_server

    httpd = make_server("127.0.0.1", 0, live_client.application, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


FINAL = ("succeeded", "failed", "canceled")


def poll(client: Any, location: str, *, until: tuple[str, ...] = FINAL, timeout: float = 120.0) -> dict[str, Any]:
    """GET a job or audit until its status is in ``until``; fail after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = client.get(location).json
        if body["status"] in until:
            return body
        time.sleep(0.1)
    raise AssertionError(f"{location} did not reach {until}: {body}")

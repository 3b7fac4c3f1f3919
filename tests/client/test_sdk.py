"""The SDK (sdk/onnxplain_client): every route of openapi.yaml, sync and async, errors, retries, its wheel."""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import json
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from onnxplain_client import (
    OPERATIONS,
    ApiError,
    AsyncClient,
    Client,
    InvalidRequest,
    NotFound,
    RateLimited,
    RetryPolicy,
    Unauthorized,
    Unavailable,
    retry_after_seconds,
)
from tests import builders

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "demo"
METHODS = ("get", "post", "put", "patch", "delete")


def spec_operations() -> set[str]:
    spec = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    return {op["operationId"] for item in spec["paths"].values() for m, op in item.items() if m in METHODS}


def test_the_sdk_covers_every_operation_of_the_spec():
    """Each operationId has a builder, and both clients have its method (a new route without one fails here)."""
    assert set(OPERATIONS) == spec_operations()
    for name in set(OPERATIONS.values()):
        assert callable(getattr(Client, name)) and callable(getattr(AsyncClient, name)), name


# -- against the real service with real workers --------------------------------------------------------------------


class Recorder:
    """Wraps a client: calls its methods by name and remembers which were called."""

    def __init__(self, api: Any) -> None:
        self.api = api
        self.called: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        self.called.add(name)
        return getattr(self.api, name)


@pytest.fixture(scope="module")
def small_mlp() -> builders.BuiltModel:
    return builders.small_mlp()


def drive_every_operation(
    api: Recorder, model: builders.BuiltModel, mlp: builders.BuiltModel, name: str, run: Any
) -> None:
    """One scenario over every route; ``run`` turns a call's answer into its value (identity, or awaiting it)."""
    assert run(api.livez())["status"] == "ok"
    assert "status" in run(api.readyz())
    assert run(api.openapi()).startswith("openapi:")
    assert "<html" in run(api.docs()).lower()
    assert "onnxplain_" in run(api.metrics())
    assert run(api.docs_asset("swagger-ui.css"))
    registered = run(api.register(model.onnx_bytes, {**model.card, "name": name}, background=model.background_csv()))
    assert registered["version"] == 1
    page = run(api.list_models(limit=1))
    assert len(page["models"]) == 1
    assert any(m["name"] == name for m in run(api.models()))
    assert run(api.model(name))["name"] == name
    assert run(api.clear_quarantine(name)) == {"name": name, "cleared": []}
    row = model.X[0].tolist()
    assert run(api.predict(name, [row]))["predictions"][0]["label"] in model.card["class_names"]
    queued = run(api.submit_explain(name, [row], method="linear", wait=0))
    assert run(api.wait_job(queued["id"]))["status"] == "succeeded"
    assert run(api.job(queued["id"]))["result"]["explanations"]
    result = run(api.explain(name, [row], method="exact", wait=30))
    assert result["explanations"][0]["targets"][0]["attributions"]
    run(api.register(mlp.onnx_bytes, {**mlp.card, "name": f"{name}-mlp"}, background=mlp.background_csv()))
    state = run(api.build_variant(f"{name}-mlp", "fp16"))
    assert state["kind"] == "fp16" and state["state"] in ("ready", "rejected")
    again = run(api.submit_variant(f"{name}-mlp", "fp16", idempotency_key=f"{name}-key"))
    assert again["variant"]["kind"] == "fp16"
    slow = run(api.submit_explain(name, [row], method="kernel_shap", parameters={"nsamples": 4096}, wait=0))
    try:
        assert run(api.cancel(slow["id"]))["status"] == "canceled"
    except ApiError as ended:  # it finished before the cancel arrived
        assert ended.code == "job_not_cancelable"
    frame = [dict(zip(model.card["features"], r, strict=True)) for r in model.X[:20].tolist()]
    audit = run(api.audit(name, frame, method="linear", title="sdk"))
    assert audit["status"] == "succeeded" and audit["summary"]["rows"] == 20
    assert run(api.get_audit(audit["id"]))["id"] == audit["id"]
    assert run(api.audit_rows(audit["id"], format="jsonl")).count(b"\n") == 20
    assert b"<html" in run(api.audit_report(audit["id"]))
    with pytest.raises(NotFound) as no_map:  # a table audit keeps no heatmaps
        run(api.audit_map(audit["id"], 0))
    assert no_map.value.code == "map_not_found"
    found = run(api.counterfactual(name, [row], parameters={"k": 1}, wait=30))
    assert len(found["rows"]) == 1 and found["rows"][0]["status"]
    queued_cf = run(api.submit_counterfactual(name, [row], parameters={"k": 1, "seed": 1}, wait=0))
    assert "rows" in queued_cf or run(api.wait_job(queued_cf["id"]))["status"] == "succeeded"
    tree = run(api.surrogate(name, max_depth=2))
    assert 0.0 <= tree["fidelity"]["held_out"] <= 1.0 and tree["rules"]
    other = run(api.submit_audit(name, frame, method="kernel_shap", parameters={"nsamples": 4096}))
    try:
        assert run(api.cancel_audit(other["id"]))["status"] == "canceled"
    except ApiError as ended:
        assert ended.code == "audit_not_cancelable"
    assert run(api.v2_server())["name"] == "onnxplain"
    assert run(api.v2_live())["live"] is True
    assert run(api.v2_ready())["ready"] is True
    assert run(api.v2_model(name))["name"] == name
    assert run(api.v2_model(name, 1))["name"] == name
    assert run(api.v2_model_ready(name))["ready"] is True
    assert run(api.v2_model_ready(name, 1))["ready"] is True
    tensor = {"name": "X", "shape": [1, len(row)], "datatype": "FP32", "data": row}
    assert run(api.v2_infer(name, {"inputs": [tensor]}))["outputs"]
    assert run(api.v2_infer(name, {"inputs": [tensor]}, version=1))["outputs"]
    with pytest.raises(NotFound) as missing:
        run(api.model("no-such-model"))
    assert (missing.value.status, missing.value.code) == (404, "model_not_found")
    with pytest.raises(InvalidRequest) as refused:
        run(api.predict(name, [[1.0, 2.0]]))
    assert refused.value.code == "wrong_row_length" and refused.value.status == 422
    assert run(api.delete(name))["deleted_versions"] == [1]


def test_sync_client_drives_every_route(live_url, binary_model, small_mlp):
    """The sync Client calls every operation against the real service (auth on, real workers)."""
    with Client(live_url) as client:
        api = Recorder(client)
        drive_every_operation(api, binary_model, small_mlp, "sdk-every", lambda answer: answer)
    assert set(OPERATIONS.values()) <= api.called


def test_async_client_drives_every_route(live_url, binary_model, small_mlp):
    """The AsyncClient calls every operation, each awaited, on one event loop."""

    async def scenario() -> set[str]:
        loop_api = AsyncClient(live_url)
        api = Recorder(loop_api)
        runner = asyncio.get_running_loop()
        # The scenario is written once: each answer is an awaitable, awaited from a worker thread of the loop.
        await asyncio.to_thread(
            drive_every_operation,
            api,
            binary_model,
            small_mlp,
            "sdk-every-async",
            lambda answer: asyncio.run_coroutine_threadsafe(_awaited(answer), runner).result(),
        )
        await loop_api.aclose()
        return api.called

    called = asyncio.run(scenario())
    assert set(OPERATIONS.values()) <= called


async def _awaited(answer: Any) -> Any:
    assert inspect.isawaitable(answer)
    return await answer


def test_a_missing_key_raises_unauthorized(live_url, monkeypatch):
    """No key: Unauthorized with the problem's code and status."""
    monkeypatch.delenv("ONNXPLAIN_API_KEY")
    with pytest.raises(Unauthorized) as refused, Client(live_url) as api:
        api.models()
    assert refused.value.status == 401 and refused.value.code == "unauthenticated"


# -- retries -------------------------------------------------------------------------------------------------------


class Scripted(BaseHTTPRequestHandler):
    """Answers the scripted statuses in turn, then 200; counts the requests."""

    script: list[tuple[int, dict[str, str]]] = []
    seen: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer()

    def do_GET(self) -> None:  # noqa: N802
        self._answer()

    def _answer(self) -> None:
        Scripted.seen.append(self.path)
        status, headers = Scripted.script.pop(0) if Scripted.script else (200, {})
        body = json.dumps({"status": "ok"} if status == 200 else {"code": f"c{status}", "status": status}).encode()
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Scripted.seen = []
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_429_and_503_are_retried_then_succeed(scripted):
    """A 429 and a 503 (Retry-After 0) are sent again; the third answer is the result, sync and async."""
    Scripted.script = [(429, {"Retry-After": "0"}), (503, {"Retry-After": "0"})]
    assert Client(scripted).livez() == {"status": "ok"}
    assert len(Scripted.seen) == 3
    Scripted.script = [(503, {"Retry-After": "0"}), (429, {})]

    async def call() -> dict[str, Any]:
        async with AsyncClient(scripted, max_retry_wait=0.01) as api:
            return await api.livez()

    assert asyncio.run(call()) == {"status": "ok"}
    assert len(Scripted.seen) == 6


def test_retries_are_bounded_and_other_errors_are_not_retried(scripted):
    """Past ``retries`` the last 429/503 is raised with its Retry-After; a 404 or 500 is never sent twice."""
    Scripted.script = [(503, {"Retry-After": "0"})] * 3
    with pytest.raises(Unavailable) as full:
        Client(scripted, retries=2).livez()
    assert len(Scripted.seen) == 3 and full.value.code == "c503" and full.value.retry_after == 0
    Scripted.script = [(429, {"Retry-After": "0"})]
    with pytest.raises(RateLimited):
        Client(scripted, retries=0).livez()
    assert len(Scripted.seen) == 4
    for status in (404, 500):
        Scripted.script = [(status, {})]
        with pytest.raises(ApiError) as error:
            Client(scripted).livez()
        assert error.value.status == status
    assert len(Scripted.seen) == 6


def test_retry_policy_honours_retry_after_within_its_bound():
    """Retry-After as seconds or an HTTP date, capped by max_wait; without it, doubling backoff; final otherwise."""
    policy = RetryPolicy(retries=3, max_wait=10.0, backoff=0.5)

    def answer(status: int, **headers: str) -> httpx.Response:
        return httpx.Response(status, headers=headers)

    assert policy.delay(0, answer(429, **{"Retry-After": "7"})) == 7.0
    assert policy.delay(0, answer(503, **{"Retry-After": "120"})) == 10.0
    assert [policy.delay(n, answer(503)) for n in range(4)] == [0.5, 1.0, 2.0, None]
    assert policy.delay(0, answer(500, **{"Retry-After": "1"})) is None
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= (retry_after_seconds(date, now=now) or 0) <= 31
    assert retry_after_seconds("soon") is None


# -- the distribution ----------------------------------------------------------------------------------------------


def test_sdk_wheel_needs_only_httpx_and_holds_only_onnxplain_client(tmp_path):
    """pip builds the SDK's wheel offline; its only Requires-Dist is httpx, its only top-level package ours."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=ROOT / "sdk",
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("onnxplain_client-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
    assert metadata["Name"] == "onnxplain-client"
    assert [r.split(";")[0].replace(" ", "") for r in metadata.get_all("Requires-Dist")] == ["httpx>=0.27"]
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"onnxplain_client"}
    assert "onnxplain_client/py.typed" in names


def test_server_distribution_ships_the_sdk_and_its_editable_install_imports_it(tmp_path):
    """The root wheel holds onnxplain_client; the editable wheel (make setup) puts sdk/ on sys.path."""
    code = (
        "import sys, zipfile; from hatchling.build import build_editable, build_wheel; "
        f"d = {str(tmp_path)!r}; "
        "w = zipfile.ZipFile(d + '/' + build_wheel(d)); "
        "print(sorted({n.split('/')[0] for n in w.namelist() if not n.endswith('.dist-info/RECORD')})); "
        "e = zipfile.ZipFile(d + '/' + build_editable(d)); "
        "print([e.read(n).decode() for n in e.namelist() if n.endswith('.pth')])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    tops, pth = out.stdout.strip().splitlines()[-2:]
    assert "'onnxplain_client'" in tops and "'client'" in tops
    assert str(ROOT / "sdk") in pth.replace("\\\\", "\\")


def test_the_sdk_imports_only_httpx_and_the_standard_library():
    """Nothing of the server (or numpy, pandas...) is imported by the SDK's modules."""
    import ast

    allowed = set(sys.stdlib_module_names) | {"httpx", "onnxplain_client"}
    found: dict[str, set[str]] = {}
    for path in (ROOT / "sdk" / "onnxplain_client").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            bad = {n.split(".")[0] for n in names} - allowed
            if bad:
                found[path.name] = bad
    assert found == {}

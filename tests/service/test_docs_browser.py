"""The /docs page in headless Chromium: rendered, authorised, "Try it out" on GET /v1/models answers 200.

Runs ``tools/docs_check.mjs`` (playwright-core driving the system's Chromium) when node, Chromium and
``tools/node_modules`` are present (``cd tools && npm ci``, ``apt-get install -y chromium``); skipped otherwise,
so a machine without a browser neither fails nor slows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from tests.conftest import upload

TOOLS = Path(__file__).resolve().parents[2] / "tools"
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or CHROMIUM is None or not (TOOLS / "node_modules" / "playwright-core").is_dir(),
    reason="needs node, Chromium and tools/node_modules (cd tools && npm ci)",
)


def test_docs_try_it_out_lists_models_in_chromium(client, api_key, binary_model):
    """The browser authorises with a key, executes GET /v1/models from the page, sees 200, fetches nothing foreign."""
    from werkzeug.serving import make_server

    assert upload(client, binary_model, name="docs-page").status_code == 201
    httpd = make_server("127.0.0.1", 0, client.application, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        env = {
            **os.environ,
            "ONNXPLAIN_URL": f"http://127.0.0.1:{httpd.server_port}",
            "ONNXPLAIN_API_KEY": api_key,
            "CHROMIUM": str(CHROMIUM),
        }
        done, report = _check(env)
        assert done.returncode == 0 and report["ok"], (report, done.stderr[-2000:])
        assert report["status"].startswith("200") and report["foreign_requests"] == []
        # The same steps with a key the server does not know: the page's call is refused, so the key was sent.
        refused, report = _check({**env, "ONNXPLAIN_API_KEY": "onx_unknown_key"})
        assert refused.returncode == 1 and report["status"].startswith("401"), report
    finally:
        httpd.shutdown()


def _check(env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    done = subprocess.run(
        ["node", str(TOOLS / "docs_check.mjs")], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    return done, json.loads(done.stdout.strip().splitlines()[-1])

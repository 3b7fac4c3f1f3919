"""`onnxplain up` (what `make run` starts): embedded Redis, worker, API, demo model, and curl lines that work."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from client.launcher import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_up_starts_everything_and_the_printed_curl_lines_work(tmp_path):
    """The printed predict and explain commands answer 200 with a prediction and an explanation."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONNXPLAIN_")}
    env |= {"ONNXPLAIN_MODEL_DIR": str(tmp_path / "models"), "ONNXPLAIN_AUDIT_DIR": str(tmp_path / "audits")}
    env["ONNXPLAIN_KEYS_FILE"] = str(tmp_path / "keys.json")
    log = (tmp_path / "up.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "client.cli", "up", "--port", str(port), "--api-workers", "1"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        text = ""
        while "Press Ctrl-C" not in text and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            text = (tmp_path / "up.log").read_text()
        assert "Press Ctrl-C" in text, text[-2000:]
        pattern = r"curl -s (\S+) -H 'Authorization: Bearer (\S+)' -H 'Content-Type: application/json' \\\n\s+-d '(.+)'"
        commands = re.findall(pattern, text)
        assert [url.rsplit(":", 1)[-1] for url, _, _ in commands] == ["predict", "explain"]
        for url, key, body in commands:
            assert httpx.post(url, json=json.loads(body), timeout=60).status_code == 401  # auth is on
            response = httpx.post(url, json=json.loads(body), headers={"Authorization": f"Bearer {key}"}, timeout=60)
            assert response.status_code == 200, response.text
        assert response.json()["explanations"][0]["targets"][0]["attributions"]
        assert key not in (tmp_path / "keys.json").read_text()  # only its hash is stored
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        log.close()
    assert json.loads((tmp_path / "keys.json").read_text())["keys"] == []  # the session's key is revoked

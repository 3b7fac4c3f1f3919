"""`onnxplain up` (what `make run` starts): embedded Redis, worker, API, demo model, and curl lines that work."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
import redis

from client.launcher import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_up_starts_everything_and_the_printed_commands_work(tmp_path):
    """As a new user runs it: default (relative) stores, then the printed predict, explain and audit commands.

    The printed audit (the README's example on the shipped demo/applicants.csv, whose
    outcome column is 0/1) writes the report and the rows file in the working directory.
    """
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONNXPLAIN_")}
    # Run from another directory, as `make run` users do from theirs (the SDK from sdk/, as installed).
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "sdk")])
    home = tmp_path / "user"
    home.mkdir()
    log = (tmp_path / "up.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "client.cli", "up", "--port", str(port), "--api-workers", "1"],
        cwd=home,
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
        # The embedded Redis: loopback, a password it was given in a file, shown to nobody.
        (redis_port,) = re.findall(r"started an embedded Redis on 127\.0\.0\.1:(\d+) \(password-protected\)", text)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=int(redis_port), socket_timeout=5).ping()
        assert "redis://" not in text and "requirepass" not in text
        pattern = r"curl -s (\S+) -H 'Authorization: Bearer (\S+)' -H 'Content-Type: application/json' \\\n\s+-d '(.+)'"
        commands = re.findall(pattern, text)
        assert [url.rsplit(":", 1)[-1] for url, _, _ in commands] == ["predict", "explain"]
        for url, key, body in commands:
            assert httpx.post(url, json=json.loads(body), timeout=60).status_code == 401  # auth is on
            response = httpx.post(url, json=json.loads(body), headers={"Authorization": f"Bearer {key}"}, timeout=60)
            assert response.status_code == 200, response.text
        assert response.json()["explanations"][0]["targets"][0]["attributions"]
        assert key not in (home / "var" / "keys.json").read_text()  # only its hash is stored

        (audit_line,) = re.findall(r"^  (\S.* audit .*) \\\n\s+(--label .*)$", text, flags=re.M)
        audit = subprocess.run(
            shlex.split(" ".join(audit_line)), cwd=home, env=env, capture_output=True, text=True, timeout=300
        )
        assert audit.returncode == 0, audit.stdout[-2000:] + audit.stderr[-2000:]
        html = (home / "report.html").read_text()
        assert "<html" in html.lower() and 'id="fairness"' in html
        rows = pd.read_parquet(home / "rows.parquet")
        assert len(rows) == 2000 and (rows["status"] == "ok").all()
        assert set(rows["label"]) == {"denied", "approved"}  # the 0/1 outcome read as class indices
        assert (home / "var" / "models").is_dir() and (home / "var" / "audits").is_dir()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        log.close()
    assert json.loads((home / "var" / "keys.json").read_text())["keys"] == []  # the session's key is revoked
